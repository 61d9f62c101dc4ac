"""The patient case, evidence items, and case/cohort storage."""

from medfuse.record.case import (
    ECG,
    MODALITIES,
    CXRImage,
    Demographics,
    Diagnosis,
    Finding,
    LabResult,
    Labels,
    Note,
    PatientCase,
    Variant,
    VitalSigns,
)
from medfuse.record.evidence import Evidence
from medfuse.record.store import iter_cohort, patient_split, read_case, read_index, write_case, write_index

__all__ = [
    "ECG", "MODALITIES", "CXRImage", "Demographics", "Diagnosis", "Evidence", "Finding", "LabResult", "Labels",
    "Note", "PatientCase", "Variant", "VitalSigns", "iter_cohort", "patient_split", "read_case", "read_index",
    "write_case", "write_index",
]
