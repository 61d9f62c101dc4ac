"""ECG lead names, channel kinds and voltage units shared by the ECG importers.

Every ECG source names its channels differently: WFDB headers say 'i', 'avr', 'MLII'
or 'PLETH'; DICOM waveforms say 'Lead I (Einthoven)'; PTB-XL says 'AVR'. The importers
map them to one vocabulary here, so a lead is always found by name (never by position),
and decide which channels are ECG at all (a pulse oximeter or respiration channel in an
ICU record is not).
"""

from __future__ import annotations

import re

import numpy as np

# The standard 12 leads in their conventional display order.
STANDARD_12 = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

# Upper-cased spelling -> standard spelling, for names that are unambiguous. Only the
# letter case (and a few common variants) changes: 'MLII', 'V' or Frank 'vx' are kept
# exactly as the source wrote them because they are different leads, not spellings.
_CANONICAL: dict[str, str] = {name.upper(): name for name in STANDARD_12}
_CANONICAL.update({f"V{i}": f"V{i}" for i in range(7, 10)})  # posterior chest leads
_CANONICAL.update({f"V{i}R": f"V{i}R" for i in range(1, 7)})  # right-sided chest leads
_CANONICAL.update({"-AVR": "-aVR"})  # Cabrera display

# How many of each voltage unit make one millivolt. Values are
# converted with a division (uV / 1000), so integer microvolts become the same doubles
# that a WFDB reader computes, and a case round-trips bit for bit.
_UNITS_PER_MV: dict[str, float] = {
    "mV": 1.0,
    "uV": 1000.0,
    "µV": 1000.0,  # micro sign
    "μV": 1000.0,  # Greek mu, as some devices write it
    "nV": 1e6,
    "V": 1e-3,
}
# Spelled-out or upper-cased forms ('MV' is never megavolt on an ECG channel).
_UNITS_PER_MV_LOWER: dict[str, float] = {
    "mv": 1.0, "millivolt": 1.0, "millivolts": 1.0,
    "uv": 1000.0, "microvolt": 1000.0, "microvolts": 1000.0,
    "nv": 1e6, "nanovolt": 1e6,
    "v": 1e-3, "volt": 1e-3, "volts": 1e-3,
}

# Channels recorded in volts that are still not ECG (polysomnography, EEG montages).
# A bare 'C1'..'C6' is left alone: IEC names the chest leads that way, and an EEG
# electrode in a WFDB record almost always carries its reference ('C3-A2', 'C4-M1').
_NON_ECG_VOLTAGE = re.compile(
    r"^(.*\b(EEG|EOG|EMG|ECOG)\b.*|LOC|ROC|E1|E2|CHIN\d?|LEG.*"
    r"|(FP|AF|F|FC|FT|C|CP|TP|T|P|PO|O)(\d{1,2}|Z)\s*[-:/]\s*(A|M)\d|FP\d|FPZ|FZ|CZ|PZ|OZ|O\d)$",
    re.IGNORECASE,
)

# Physiological channels that are never ECG whatever unit a file declares for them.
_NON_ECG_SIGNAL = re.compile(
    r"^(ABP|ART|AOBP|PAP|CVP|ICP|LAP|RAP|UAP|NBP\w*|BP|PLETH|PPG|RESP|SPO2|SAO2|CO2|ETCO2|AWP|AWF|AWV"
    r"|FLOW|PRESS\w*|TEMP\w*|PULSE|HR|STATUS|EVENT|MARKER|TRIGGER)$",
    re.IGNORECASE,
)

# Text before/around a lead name in descriptive labels: 'Lead I (Einthoven)', 'ECG Lead V1'.
_LABEL_NOISE = re.compile(r"\(.*?\)|\b(ECG|EKG)\b|\blead\b", re.IGNORECASE)


def standard_lead_name(name: str) -> str:
    """The standard spelling of a lead name where it is unambiguous, else the name unchanged.

    >>> [standard_lead_name(n) for n in ("i", "avr", "v1", "AVF", "MLII", "vx", "V")]
    ['I', 'aVR', 'V1', 'aVF', 'MLII', 'vx', 'V']
    """
    stripped = name.strip()
    return _CANONICAL.get(stripped.upper(), stripped)


def lead_from_label(label: str) -> str:
    """A lead name from a descriptive channel label (DICOM Code Meaning and the like).

    >>> [lead_from_label(x) for x in ("Lead I (Einthoven)", "Lead aVR", "Lead V1", "II")]
    ['I', 'aVR', 'V1', 'II']
    """
    core = " ".join(_LABEL_NOISE.sub(" ", label).split())
    return standard_lead_name(core) if core else label.strip()


def units_per_mv(unit: str | None) -> float | None:
    """How many `unit` make one millivolt (1000 for uV), or None when `unit` is not a voltage.

    >>> units_per_mv("uV"), units_per_mv("mV"), units_per_mv("NU")
    (1000.0, 1.0, None)
    """
    if unit is None:
        return None
    u = unit.strip()
    if u in _UNITS_PER_MV:
        return _UNITS_PER_MV[u]
    return _UNITS_PER_MV_LOWER.get(u.lower())


def non_ecg_reason(name: str, unit: str | None) -> str | None:
    """Why a channel is not an ECG lead (short, no record content), or None if it is one.

    A channel is ECG when its unit is a voltage and its name is neither a known non-ECG
    signal (ABP, PLETH, RESP, SpO2, ...) nor an EEG/EOG/EMG electrode. Frank leads
    ('vx', 'vy', 'vz') and monitoring leads ('MLII', 'V') are ECG.
    """
    if _NON_ECG_SIGNAL.match(name.strip()):
        return f"non-ECG channel skipped ({name.strip()})"
    if units_per_mv(unit) is None:
        return f"non-ECG channel skipped ({name.strip() or 'unnamed'}, unit {unit or 'none'})"
    if _NON_ECG_VOLTAGE.match(name.strip()):
        return f"non-ECG channel skipped ({name.strip()}, EEG/EOG/EMG electrode)"
    return None


def standard_order(leads: list[str]) -> list[int]:
    """Indices that put `leads` in conventional order: the 12 standard leads first
    (I, II, III, aVR, aVL, aVF, V1-V6), then every other lead in its source order."""
    rank = {name: i for i, name in enumerate(STANDARD_12)}
    return sorted(range(len(leads)), key=lambda i: (rank.get(leads[i], len(rank)), i))


# Gains (digital units per mV) tried when a source gives plain numbers and no ADC grid:
# common ECG ADC resolutions from 5 uV down to 0.1 uV, finest last.
_CANDIDATE_GAINS = (200.0, 400.0, 500.0, 800.0, 1000.0, 2000.0, 2500.0, 4000.0, 5000.0, 10000.0)


def grid_gain(signal_mv: np.ndarray) -> float | None:
    """The coarsest common ADC gain (units per mV) on whose grid every sample lies exactly,
    or None when the samples are on none of them (they will be rounded when stored).

    `signal_mv` is (samples, leads); NaN samples are ignored.
    """
    finite = signal_mv[np.isfinite(signal_mv)]
    if finite.size == 0:
        return 1000.0
    for gain in _CANDIDATE_GAINS:
        # Stored values are round(mV * gain) and read back as that / gain (record.store).
        if np.array_equal(np.round(finite * gain) / gain, finite) and np.abs(finite).max() * gain < 2**31 - 1:
            return gain
    return None
