"""`Explanation`: what `explain_case` returns (pydantic, JSON-ready).

It carries the case id and nothing else that identifies the patient: no patient id, no
times, no note text; item values (a lab result, a vital sign) appear because an
explanation is about them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiseaseScore(_Model):
    disease: str = Field(..., description="Panel key.")
    name: str
    probability: float = Field(..., description="Calibrated probability of the disease head.")
    threshold: float = Field(..., description="The checkpoint's decision threshold.")
    present: bool = Field(..., description="probability >= threshold (what `medfuse diagnose` reports).")


class ItemAttribution(_Model):
    modality: str
    item: str = Field(..., description="Lab key, vital field, variant index, ECG lead, 'notes' or 'cxr'.")
    label: str
    value: float | None = Field(None, description="The value the model read (labs: canonical unit).")
    unit: str | None = None
    attribution: float = Field(..., description="ECG leads, labs, vitals: integrated-gradients share of P(disease) - "
                                                "P(its modality at baseline); radiograph, notes, variants: "
                                                "P(disease) - P(without the item).")


class ImageSaliency(_Model):
    image_index: int = Field(..., description="Which of the case's radiographs the model read.")
    grid: list[list[float]] = Field(
        ..., description="Occlusion map, rows top to bottom, columns left to right; row r spans image heights "
                         "r/n..(r+1)/n (the model reads the image stretched to a square), likewise columns.")
    window_fraction: float = Field(..., description="Occluded window side as a fraction of the image side.")


class ECGSaliency(_Model):
    fs: float = Field(..., description="Sampling rate (Hz) of the window the model read (from the recording's start).")
    leads: list[str] = Field(..., description="Recorded leads (standard names).")
    segment_seconds: float = Field(..., description="Length of one segment; segment j starts at j * segment_seconds.")
    scores: list[list[float]] = Field(..., description="Per lead, the attribution of each time segment.")


class DiseaseAttribution(_Model):
    disease: str
    name: str
    probability: float
    modality_baselines: dict[str, float] = Field(
        ..., description="Per integrated modality, P(disease) with that modality at its IG baseline (the others as they are).")
    convergence_delta: dict[str, float] = Field(
        ..., description="Per integrated modality, IG's completeness error: sum(its attributions) - (P - its baseline P).")
    modalities: dict[str, float] = Field(..., description="Per present modality, the sum of its items' attributions.")
    items: list[ItemAttribution] = Field(..., description="Largest |attribution| first.")
    image_saliency: ImageSaliency | None = None
    ecg_saliency: ECGSaliency | None = None


class ModalityAblation(_Model):
    modality: str = Field(..., description="The modality dropped (the case re-fused without it).")
    probabilities: dict[str, float] = Field(..., description="Disease -> probability without the modality.")
    change: dict[str, float] = Field(..., description="Disease -> probability without it minus with it.")
    flips: list[str] = Field(default_factory=list, description="Diseases whose decision changes without it.")


class ItemChange(_Model):
    modality: str = Field(..., description="labs or vitals.")
    item: str
    label: str
    unit: str
    original: float
    proposed: float
    plausible_range: tuple[float, float] = Field(..., description="Where a value of this item is plausible.")


class Counterfactual(_Model):
    disease: str
    name: str
    goal: str = Field(..., description="'absent' (the disease is reported; make it not) or 'present'.")
    changes: list[ItemChange]
    probability_before: float
    probability_after: float = Field(..., description="P(disease) of the modified case re-run through MedFuse.fuse.")
    threshold: float
    valid: bool = Field(..., description="The decision flips when the modified case is re-run through the full fusion path.")
    plausible: bool = Field(..., description="Every proposed value lies in its item's plausible range.")
    distance: float = Field(..., description="Sum of |change| in the model's normalised units (z-scores).")
    text: str


class Explanation(_Model):
    case_id: str
    model: str = Field(..., description="Checkpoint name and version.")
    diseases: list[DiseaseScore]
    explained: list[str] = Field(..., description="Diseases explained: reported, near-threshold, and asked for.")
    modalities_present: list[str]
    attributions: list[DiseaseAttribution]
    ablation: list[ModalityAblation]
    counterfactuals: list[Counterfactual]
    no_counterfactual: list[str] = Field(
        default_factory=list, description="Explained diseases for which no change of one or two labs/vitals flips the decision.")
    method: dict[str, object] = Field(default_factory=dict, description="Settings (IG steps, occlusion window, ...).")
    seconds: float = Field(..., description="Wall time of the explanation.")
