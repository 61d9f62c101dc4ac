"""Evidence: one checkable physiological fact read from a case.

Every interpreter (ECG, labs, vitals, CXR) returns a list of `Evidence`; the chain of
evidence, the model's reasoning and the faithfulness checks all cite these items, so
each carries the exact value and where in the input it came from.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EvidenceModality = Literal["cxr", "ecg", "labs", "vitals", "notes", "genomics", "demographics"]


class Evidence(BaseModel):
    model_config = ConfigDict(extra="forbid")

    modality: EvidenceModality
    item: str = Field(..., description="What was measured: 'heart_rate', 'creatinine', 'ST deviation V2', 'consolidation'.")
    value: float | str | list[int] | None = Field(None, description="The measured value (number, label, or a 0-999 box).")
    unit: str | None = Field(None, description="UCUM unit of `value`, if numeric.")
    interpretation: str = Field(..., description="Short reading: 'high', 'atrial_fibrillation', 'present', 'normal'.")
    abnormal: bool = False
    source: str = Field(..., description="Reference into the case: 'labs[3]', 'ecg:lead II', 'cxr[0]:box'.")
    detail: dict[str, Any] = Field(default_factory=dict, description="Extra numbers (reference range, per-lead values).")

    def cite(self) -> str:
        """Human-readable citation, e.g. 'creatinine 2.1 mg/dL (high) [labs[3]]'."""
        if isinstance(self.value, float):
            v = f"{self.value:g}"
        elif self.value is None:
            v = ""
        else:
            v = str(self.value)
        unit = f" {self.unit}" if self.unit else ""
        return f"{self.item} {v}{unit} ({self.interpretation}) [{self.source}]".replace("  ", " ")
