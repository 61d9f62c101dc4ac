"""The patient case: one encounter of one patient, every modality optional.

A `PatientCase` is the one typed object that flows between importers, the synthetic
generator, the interpreters, the task builders, the model and the evaluation kit.
Bulk signals (image pixels, ECG samples) live on the objects as numpy arrays but are
never serialised into JSON: `medfuse.record.store` writes them as standard files
(PNG, WFDB) beside `case.json`.

Conventions
- ECG signals are float64 arrays shaped (samples, leads) in millivolts; lead names
  come from the source file, never from position.
- Image pixels are 2-D uint8 or uint16 arrays ready for display: 0 is black, the
  photometric interpretation and VOI LUT have already been applied.
- Boxes are integers 0-999, normalised separately by image width and height
  (MedRegA convention, see DESIGN.md), ordered [x1, y1, x2, y2].
- Lab units are UCUM strings; flags use the HL7 interpretation codes
  (L, H, LL, HH, A, N).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1

Sex = Literal["F", "M", "O", "U"]
# HL7 v2 / FHIR v3-ObservationInterpretation codes. LL/HH/AA are critical.
LabFlag = Literal["L", "H", "LL", "HH", "A", "AA", "N"]
Censor = Literal["<", "<=", ">", ">="]
NoteType = Literal["history", "indication", "report", "discharge", "other"]
Lang = Literal["en", "zh"]
Modality = Literal["cxr", "ecg", "labs", "vitals", "notes", "genomics"]
MODALITIES: tuple[str, ...] = ("cxr", "ecg", "labs", "vitals", "notes", "genomics")
VITAL_FIELDS: tuple[str, ...] = ("heart_rate", "sbp", "dbp", "temperature", "spo2", "resp_rate")
# Sampling rates an ECG can plausibly have, in Hz. Below 50 Hz the QRS complex (10-40 Hz
# content) is not resolved at all; the slowest clinical recorders (Holter, PTB-XL 'lr')
# use 100-128 Hz. Above 20 kHz only research pacing/His-bundle systems go (PTB 1 kHz,
# high-resolution ECG 2-15 kHz). A rate outside is a damaged or mistyped header (a
# negative rate, 1e12), and a wrong rate silently rescales every interval and heart rate.
ECG_SAMPLING_RATE_HZ: tuple[float, float] = (50.0, 20000.0)


def sampling_rate_problem(fs: object) -> str | None:
    """Why `fs` is not a plausible ECG sampling rate (see `ECG_SAMPLING_RATE_HZ`), or None.

    >>> sampling_rate_problem(500.0) is None, sampling_rate_problem(-500)
    (True, 'implausible ECG sampling rate -500 Hz (expected 50-20000 Hz)')
    """
    low, high = ECG_SAMPLING_RATE_HZ
    try:
        value = float(fs)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"ECG sampling rate is not a number ({str(fs)[:20]!r})"
    if not np.isfinite(value) or not low <= value <= high:
        return f"implausible ECG sampling rate {value:g} Hz (expected {low:g}-{high:g} Hz)"
    return None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class Demographics(_Model):
    age: float | None = Field(None, ge=0, le=130, description="Age in years at the encounter.")
    sex: Sex | None = None


class Finding(_Model):
    """An image finding, optionally localised by one or more boxes (0-999 grid)."""

    label: str
    boxes: list[list[int]] = Field(default_factory=list, description="[[x1, y1, x2, y2], ...] on the 0-999 grid.")
    image_index: int = Field(0, ge=0, description="Which of the case's images the boxes refer to.")

    @field_validator("boxes")
    @classmethod
    def _check_boxes(cls, boxes: list[list[int]]) -> list[list[int]]:
        for b in boxes:
            if len(b) != 4:
                raise ValueError(f"a box has 4 coordinates, got {len(b)}")
            x1, y1, x2, y2 = b
            if not all(0 <= v <= 999 for v in b):
                raise ValueError(f"box coordinates must lie in 0-999, got {b}")
            if x2 < x1 or y2 < y1:
                raise ValueError(f"box must have x1<=x2 and y1<=y2, got {b}")
        return boxes


class CXRImage(_Model):
    """One radiograph. `pixels` is held in memory only; `file` names it in the case folder."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    pixels: np.ndarray | None = Field(None, exclude=True, repr=False)
    file: str | None = Field(None, description="File name inside the case folder (PNG).")
    view: str | None = Field(None, description="PA, AP, LATERAL, ... when the source says.")
    width: int | None = None
    height: int | None = None
    bits: int | None = Field(None, description="8 or 16: bit depth of the stored pixels.")
    source: str | None = Field(None, description="Where the image came from (file name, not a full path with identifiers).")
    pixel_spacing_mm: tuple[float, float] | None = None
    findings: list[Finding] = Field(
        default_factory=list,
        description="Reads supplied with the input (e.g. a radiologist's marks given to the model). "
        "Ground-truth findings for training and evaluation belong in `PatientCase.labels.findings`.",
    )

    @model_validator(mode="after")
    def _sync_shape(self) -> CXRImage:
        if self.pixels is not None:
            if self.pixels.ndim != 2:
                raise ValueError(f"an image must be 2-D, got shape {self.pixels.shape}")
            if self.pixels.dtype not in (np.uint8, np.uint16):
                raise ValueError(f"image pixels must be uint8 or uint16, got {self.pixels.dtype}")
            self.height, self.width = (int(s) for s in self.pixels.shape)
            self.bits = 8 if self.pixels.dtype == np.uint8 else 16
        return self


class ECG(_Model):
    """A multi-lead ECG. `signal` is (samples, leads) in mV, held in memory only."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    signal: np.ndarray | None = Field(None, exclude=True, repr=False)
    fs: float = Field(..., ge=ECG_SAMPLING_RATE_HZ[0], le=ECG_SAMPLING_RATE_HZ[1], description="Sampling rate in Hz.")
    leads: list[str] = Field(..., min_length=1, description="Lead names as given by the source.")
    n_samples: int | None = None
    adc_gain: float = Field(
        1000.0,
        gt=0,
        description="Digital units per mV used when writing WFDB. Signals are stored as "
        "round(mV * adc_gain), so a signal already on that grid round-trips exactly.",
    )
    file: str | None = Field(None, description="WFDB record name inside the case folder.")
    source: str | None = None
    annotations: dict[str, Any] = Field(default_factory=dict, description="Source measurements or statements, if any.")

    @model_validator(mode="after")
    def _sync_shape(self) -> ECG:
        if self.signal is not None:
            if self.signal.ndim != 2:
                raise ValueError(f"an ECG signal must be (samples, leads), got shape {self.signal.shape}")
            if self.signal.shape[1] != len(self.leads):
                raise ValueError(f"ECG has {self.signal.shape[1]} channels but {len(self.leads)} lead names")
            self.n_samples = int(self.signal.shape[0])
        return self

    @property
    def duration_s(self) -> float | None:
        return None if self.n_samples is None else self.n_samples / self.fs

    def lead(self, name: str) -> np.ndarray:
        """The samples of one lead, looked up by name (case-insensitive)."""
        if self.signal is None:
            raise ValueError("ECG signal is not loaded")
        names = [n.upper() for n in self.leads]
        return self.signal[:, names.index(name.upper())]


class LabResult(_Model):
    # A result of inf or NaN is no measurement; JSON readers accept 'Infinity' in case.json.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(..., description="Local (source) name of the test.")
    loinc: str | None = None
    code: str | None = Field(None, description="Catalogue key when the test was mapped (e.g. 'creatinine').")
    value: float | None = Field(None, description="Numeric value in `unit`; for censored results the bound.")
    censored: Censor | None = Field(None, description="Set for results like '<0.5': value is the bound.")
    value_text: str | None = Field(None, description="The raw text when it was not a plain number.")
    unit: str | None = Field(None, description="UCUM unit.")
    ref_low: float | None = None
    ref_high: float | None = None
    time: dt.datetime | None = None
    flag: LabFlag | None = None
    source_value: float | None = Field(None, description="Value before unit normalisation, if converted.")
    source_unit: str | None = Field(None, description="Unit before normalisation, if converted.")


class VitalSigns(_Model):
    """One set of vital signs (any field may be missing)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    time: dt.datetime | None = None
    heart_rate: float | None = Field(None, ge=0, description="/min")
    sbp: float | None = Field(None, ge=0, description="Systolic blood pressure, mm[Hg]")
    dbp: float | None = Field(None, ge=0, description="Diastolic blood pressure, mm[Hg]")
    temperature: float | None = Field(None, description="Cel")
    spo2: float | None = Field(None, ge=0, le=100, description="%")
    resp_rate: float | None = Field(None, ge=0, description="/min")


class Note(_Model):
    text: str
    type: NoteType = "other"
    lang: Lang = "en"
    time: dt.datetime | None = None


class Variant(_Model):
    gene: str
    hgvs: str | None = Field(None, description="HGVS expression, e.g. 'p.L858R' or 'NM_005228.5:c.2573T>G'.")
    vaf: float | None = Field(None, ge=0, le=1, description="Variant allele fraction.")
    consequence: str | None = None


class Diagnosis(_Model):
    name: str = Field(..., description="Panel disease name when mapped, else the source description.")
    icd10: str | None = None
    icd9: str | None = None
    in_panel: bool = True


class Labels(_Model):
    diagnoses: list[Diagnosis] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    report: str | None = None
    source_codes: list[str] = Field(
        default_factory=list, description="All source diagnosis codes, e.g. 'ICD10:I4891', 'ICD9:4280'."
    )

    def disease_names(self) -> list[str]:
        return sorted({d.name for d in self.diagnoses if d.in_panel})


class PatientCase(_Model):
    """One encounter of one patient. Only `case_id` is required."""

    schema_version: int = SCHEMA_VERSION
    case_id: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    patient_id: str | None = Field(None, description="Used for patient-level splits; defaults to case_id.")
    time: dt.datetime | None = Field(None, description="Encounter (admission) time.")
    demographics: Demographics = Field(default_factory=Demographics)
    cxr: list[CXRImage] = Field(default_factory=list)
    ecg: ECG | None = None
    labs: list[LabResult] = Field(default_factory=list)
    vitals: list[VitalSigns] = Field(default_factory=list)
    notes: list[Note] = Field(default_factory=list)
    genomics: list[Variant] = Field(default_factory=list)
    labels: Labels | None = None
    provenance: dict[str, Any] = Field(default_factory=dict, description="Importer name, source files, options.")

    @property
    def group_id(self) -> str:
        """The id that keeps a patient's encounters in one split."""
        return self.patient_id or self.case_id

    def modalities(self) -> list[str]:
        """The modalities present in this case, in the canonical order."""
        present = {
            "cxr": bool(self.cxr),
            "ecg": self.ecg is not None,
            "labs": bool(self.labs),
            "vitals": bool(self.vitals),
            "notes": bool(self.notes),
            "genomics": bool(self.genomics),
        }
        return [m for m in MODALITIES if present[m]]

    def first_vitals(self) -> VitalSigns | None:
        """Earliest value of each vital sign across the recorded sets (the presentation snapshot)."""
        if not self.vitals:
            return None
        ordered = sorted(self.vitals, key=lambda v: (v.time is None, v.time or dt.datetime.min))
        merged: dict[str, Any] = {}
        for v in ordered:
            for f in VITAL_FIELDS:
                if merged.get(f) is None and getattr(v, f) is not None:
                    merged[f] = getattr(v, f)
        merged["time"] = ordered[0].time
        return VitalSigns(**merged)
