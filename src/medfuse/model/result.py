"""The diagnosis result schema: what `medfuse diagnose --json` prints, and the `Diagnosed` wrapper.

`DiagnoseResult` is the user-facing JSON (pydantic, strict); `Diagnosed` adds what that
JSON leaves out: the flagged sentences, the raw generation, the consistency check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from medfuse.model.faithfulness import ConsistencyCheck, ReasoningCheck
from medfuse.record.evidence import Evidence

__all__ = ["DiagnoseResult", "Diagnosed", "DiagnosisEntry", "EvidenceEntry", "FindingEntry", "ModalityWeights",
           "ModelInfo"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiagnosisEntry(_Strict):
    name: str = Field(..., description="Panel disease name (Chinese name with lang=zh).")
    icd10: str | None = Field(None, description="The panel's first ICD-10 code prefix for the disease.")
    probability: float = Field(..., ge=0.0, le=1.0, description="Calibrated probability from the disease head.")
    present: bool = Field(..., description="probability >= the disease's stored decision threshold.")


class EvidenceEntry(_Strict):
    modality: str
    item: str
    value: float | str | list[int] | bool | None = Field(None, description="The value as found in the case.")
    interpretation: str
    source: str = Field(..., description="Where in the case the value is: 'labs[3]', 'ecg:lead II', 'cxr[0]:finding 1'.")


class FindingEntry(_Strict):
    label: str
    box: list[int] = Field(..., min_length=4, max_length=4, description="[x1, y1, x2, y2] on the 0-999 grid.")


class ModalityWeights(_Strict):
    ecg: float = Field(..., ge=0.0, le=1.0)
    cxr: float = Field(..., ge=0.0, le=1.0)
    labs: float = Field(..., ge=0.0, le=1.0)
    vitals: float = Field(..., ge=0.0, le=1.0)
    notes: float = Field(..., ge=0.0, le=1.0)
    genomics: float = Field(..., ge=0.0, le=1.0)


class ModelInfo(_Strict):
    name: str
    version: str


class DiagnoseResult(_Strict):
    """The JSON `medfuse diagnose --json` prints, one object per case."""

    case_id: str
    diagnoses: list[DiagnosisEntry] = Field(..., description="Every panel disease with enough data, in panel order.")
    evidence: list[EvidenceEntry] = Field(..., description="Interpreted facts of the case, each checked against it.")
    findings: list[FindingEntry] = Field(..., description="Image findings the model located (0-999 boxes).")
    modality_weights: ModalityWeights = Field(..., description="Perception-layer gates; 0 for missing modalities.")
    reasoning: str = Field(..., description="The model's reasoning with unsupported statements removed: one line per "
                                            "reported disease ('Disease: rationale [E2].') and one for the considered "
                                            "but absent ones.")
    reasoning_language: Literal["en", "zh"] | None = Field(
        None, description="The language the reasoning is written in, by its script (None: no reasoning). When it is "
                          "not the requested language the model drifted, and the reasoning ends with a warning.")
    report: str = Field(..., description="Summary assembled from the checked parts above.")
    insufficient_data: list[str] = Field(..., description="Panel diseases none of whose evidence modalities is present.")
    model: ModelInfo


@dataclass
class Diagnosed:
    """A result with what the user-facing JSON leaves out: the flagged claims and the raw text."""

    result: DiagnoseResult
    check: ReasoningCheck
    raw_text: str
    dropped_findings: list[str] = field(default_factory=list)
    dropped_evidence: int = 0
    evidence: list[Evidence] = field(default_factory=list)  # the checked items behind `result.evidence` (units, flags)
    consistency: ConsistencyCheck | None = None  # reasoning vs the head's decision (None: no decision given)
    generated_tokens: int = 0  # tokens the decoder wrote for this case (scaffold included)
    prompt: tuple[str, str] | None = None  # the (system, user) prompt the language model continued
