"""The patient and study fields of a DICOM header, shared by the image and ECG importers.

Pseudonymous ids (hashes of UIDs and Patient IDs, never the raw identifiers), the Age
String, dates, the study time and demographics. Both `medfuse.io.dicom` and
`medfuse.io.ecg_dicom` build their cases from these, so one study imported either way
gives the same case id, patient id and demographics.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

from medfuse.io.base import ImportReport, pseudonym, scrubbed_name  # noqa: F401 - pseudonym re-exported
from medfuse.record.case import Demographics


# A DICOM UID (PS3.5 9.1): dotted digits. Any in a file name is one of the study's UIDs.
_UID_IN_NAME = re.compile(r"\d+(\.\d+){3,}")
_IDENTIFYING_KEYWORDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "AccessionNumber")


def dicom_source_name(path: str | Path, ds) -> str:
    """The file name to store as a DICOM object's source: the name itself, or a pseudonym
    when it holds a UID or one of the header's identifiers (PACS exports name files
    '<SOP Instance UID>.dcm'; some use the Patient ID or the patient's name)."""
    name = Path(str(path)).name
    identifiers = [str(ds.get(k, "") or "") for k in _IDENTIFYING_KEYWORDS]
    patient_name = ds.get("PatientName")
    if patient_name:
        identifiers.extend(part for part in re.split(r"[\^=\s]+", str(patient_name)) if len(part) > 1)
    identifiers.extend(m.group(0) for m in _UID_IN_NAME.finditer(name))
    return scrubbed_name(name, identifiers)


def parse_dicom_age(text: str | None) -> float | None:
    """DICOM Age String ('042Y', '018M', '003W', '010D'; plain '62' read as years) -> years.

    >>> parse_dicom_age("042Y"), parse_dicom_age("018M"), parse_dicom_age("62")
    (42.0, 1.5, 62.0)
    >>> parse_dicom_age("") is None, parse_dicom_age("999Y") is None
    (True, True)
    """
    s = (text or "").strip().upper()
    m = re.fullmatch(r"(\d{1,3})\s*([DWMY]?)", s)
    if not m:
        return None
    per_year = {"D": 365.25, "W": 52.1775, "M": 12.0, "Y": 1.0, "": 1.0}[m.group(2)]
    years = int(m.group(1)) / per_year
    return round(years, 2) if years <= 130 else None


def dicom_date(value: Any) -> dt.date | None:
    from pydicom.valuerep import DA

    s = str(value or "").strip()
    if not s:
        return None
    try:
        d = DA(s)
    except ValueError:
        return None
    return None if d is None else dt.date(d.year, d.month, d.day)


def study_time(ds) -> dt.datetime | None:
    """Study Date + Study Time (time optional) as a naive datetime."""
    from pydicom.valuerep import TM

    day = dicom_date(ds.get("StudyDate"))
    if day is None:
        return None
    t = dt.time()
    raw = str(ds.get("StudyTime", "") or "").strip()
    if raw:
        try:
            tm = TM(raw)
            t = dt.time(tm.hour, tm.minute, tm.second)
        except ValueError:
            pass
    return dt.datetime.combine(day, t)


def dicom_demographics(ds, report: ImportReport | None = None) -> Demographics:
    """Age and sex from the patient module. Age comes from Patient's Age, or else from the
    birth date and the study date; sex 'F', 'M' or 'O'."""
    age = parse_dicom_age(ds.get("PatientAge"))
    if age is None:
        birth, study = dicom_date(ds.get("PatientBirthDate")), dicom_date(ds.get("StudyDate"))
        if birth and study and study >= birth:
            years = (study - birth).days / 365.25
            if years <= 130:
                age = float(int(years))
                if report is not None:
                    report.note("age computed from birth date and study date")
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    return Demographics(age=age, sex=sex if sex in ("F", "M", "O") else None)
