"""DICOM waveform ECGs (12-lead, general, ambulatory) -> ECG / PatientCase.

A DICOM ECG holds one or more multiplex groups: usually the 10 s rhythm strip and a
derived median (representative) beat. `read_dicom_ecg` takes the rhythm group, names each
channel from its Channel Source Sequence (never from its position, since vendors order
channels differently), puts the leads in conventional order, converts the channel
sensitivity unit to mV, and keeps the device's measurements (RR, PR, QRS, QT, QTc, axes)
and interpretation statements from the Waveform Annotation Sequence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.multival import MultiValue

from medfuse.errors import InputError
from medfuse.io.base import ImportReport, expand_paths, pseudonym, read_or_skip
from medfuse.io.dicom_header import dicom_demographics, dicom_source_name
from medfuse.io.ecg_leads import (
    lead_from_label,
    non_ecg_reason,
    standard_order,
    units_per_mv,
)
from medfuse.record.case import ECG, PatientCase, sampling_rate_problem

# SCP-ECG lead codes (DICOM CID 3001 'ECG Leads', scheme SCPECG) for channels whose Code
# Meaning is missing. The code value is 'MDC/SCP' style '5.6.3-9-<n>'.
_SCPECG_LEADS: dict[str, str] = {
    "1": "I", "2": "II", "61": "III", "62": "aVR", "63": "aVL", "64": "aVF",
    "3": "V1", "4": "V2", "5": "V3", "6": "V4", "7": "V5", "8": "V6",
}
# Multiplex groups that are not the rhythm recording.
_DERIVED_GROUP = re.compile(r"median|average|represent|template|beat", re.IGNORECASE)
# Measurement names (Concept Name Code Meaning) -> interval key in `annotations`.
_INTERVALS = {
    "rr interval": "RR", "pp interval": "PP", "pr interval": "PR", "qrs duration": "QRS",
    "qt interval": "QT", "qtc interval": "QTc", "p duration": "P",
}
_AXES = {"p axis": "P", "qrs axis": "QRS", "t axis": "T"}


def read_dicom_ecg(source: str | Path | Any, report: ImportReport | None = None) -> ECG:
    """Read the rhythm waveform of a DICOM ECG as an ECG in mV, leads named by label.

    `source` is a file path or an already-read `pydicom.Dataset`. Channels whose label is
    missing or duplicated, or whose unit is not a voltage, are left out and counted in
    `report` when one is given. `ecg.annotations` holds, when the file has them:
    `intervals_ms` (RR, PR, QRS, QT, QTc, ...), `axes_deg` (P, QRS, T), `statements`
    (the device's interpretation text), `measurements` (every numeric annotation with
    its unit) and `fiducials` (per annotation group, 0-based sample positions of P/QRS/T
    onsets and offsets and the QRS fiducial point).

    Raises `InputError` when the file is not DICOM, has no Waveform Sequence, or its
    waveform data are cut short or unreadable.
    """
    ds, name = _dataset(source)
    if "WaveformSequence" not in ds or not ds.WaveformSequence:
        raise InputError(name, "DICOM file has no Waveform Sequence (not a waveform ECG)")
    group_index = _rhythm_group(ds, name)
    group = ds.WaveformSequence[group_index]
    _check_group(group, name)
    try:
        values = ds.waveform_array(group_index)  # (samples, channels) in each channel's sensitivity unit
    except (ValueError, AttributeError, KeyError, TypeError) as e:
        raise InputError(name, f"cannot decode waveform data ({e.__class__.__name__})") from None

    channels = list(group.get("ChannelDefinitionSequence", []) or [])
    if len(channels) != values.shape[1]:
        raise InputError(name, f"waveform has {values.shape[1]} channels but {len(channels)} channel definitions")
    keep: list[int] = []
    leads: list[str] = []
    mv_columns: list[np.ndarray] = []
    grids: list[float | None] = []
    for i, ch in enumerate(channels):
        label = _channel_label(ch)
        unit = _channel_unit(ch)
        if label is None:
            _skip(report, "waveform channel without a lead label")
            continue
        reason = non_ecg_reason(label, unit)
        if reason:
            _skip(report, reason)
            continue
        if label in leads:
            _skip(report, f"duplicate lead name skipped ({label})")
            continue
        per_mv = units_per_mv(unit)
        assert per_mv is not None  # non_ecg_reason returned None: the unit is a voltage
        if _scale(ch) == 0.0:
            _skip(report, f"channel with zero sensitivity skipped ({label})")
            continue
        keep.append(i)
        leads.append(label)
        mv_columns.append(values[:, i] / per_mv)
        grids.append(_channel_grid(ch, per_mv))
    if not keep:
        raise InputError(name, "waveform has no ECG channel with a lead label")

    order = standard_order(leads)
    leads = [leads[j] for j in order]
    signal = np.stack([mv_columns[j] for j in order], axis=1)  # (samples, leads) mV
    adc_gain = 1000.0
    if len(set(grids)) == 1 and grids[0] is not None:
        # Every channel shares one raw step with no baseline: snap to that grid, which is
        # where the samples are up to float rounding, so the case round-trips exactly.
        adc_gain = grids[0]
        signal = np.round(signal * adc_gain) / adc_gain
    elif report is not None:
        report.note("waveform channels not on one shared ADC grid, stored at 1 uV")

    raw_fs = group.get("SamplingFrequency")
    if raw_fs in (None, ""):
        raise InputError(name, "waveform has no sampling frequency")
    problem = sampling_rate_problem(raw_fs)
    if problem:
        raise InputError(name, problem)
    fs = float(raw_fs)
    return ECG(
        signal=signal,
        fs=fs,
        leads=leads,
        adc_gain=adc_gain,
        source=dicom_source_name(name, ds) if name else None,
        annotations=_annotations(ds, group_index),
    )


def _dataset(source: str | Path | Any) -> tuple[Any, str]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    if isinstance(source, pydicom.Dataset):
        return source, str(getattr(source, "filename", None) or "<dataset>")
    path = Path(source)
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        # Waveform Data (5400,1010) precedes Pixel Data (7FE0,0010): image pixels are never needed.
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        raise InputError(path, "not a DICOM file") from None
    except (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as e:
        raise InputError(path, f"cannot read DICOM file, it may be cut short ({e.__class__.__name__})") from None
    return ds, str(path)


def _rhythm_group(ds, name: str) -> int:
    """Index of the rhythm multiplex group: not a median/representative beat, original
    rather than derived, and the longest of those."""
    candidates = []
    for i, g in enumerate(ds.WaveformSequence):
        label = str(g.get("MultiplexGroupLabel", "") or "")
        derived = str(g.get("WaveformOriginality", "") or "").upper() == "DERIVED"
        fs = float(g.get("SamplingFrequency") or 0) or 1.0
        n = int(g.get("NumberOfWaveformSamples") or 0)
        is_rhythm = "RHYTHM" in label.upper()
        is_beat = bool(_DERIVED_GROUP.search(label))
        candidates.append((is_rhythm, not is_beat, not derived, n / fs, -i, i))
    best = max(candidates)
    if not best[0] and not best[1] and not best[2]:
        raise InputError(name, "DICOM waveform holds only median/derived beats, no rhythm recording")
    return best[-1]


def _check_group(group, name: str) -> None:
    """The multiplex group declares its shape and its data are as long as declared."""
    need = ("NumberOfWaveformChannels", "NumberOfWaveformSamples", "WaveformBitsAllocated",
            "WaveformSampleInterpretation", "WaveformData")
    missing = [k for k in need if k not in group]
    if missing:
        raise InputError(name, f"waveform group lacks {', '.join(missing)}")
    expected = (int(group.NumberOfWaveformChannels) * int(group.NumberOfWaveformSamples)
                * int(group.WaveformBitsAllocated) // 8)
    have = len(group.WaveformData or b"")
    if have < expected:
        raise InputError(name, f"waveform data cut short: {have} bytes, the group declares {expected}")


def _channel_label(ch) -> str | None:
    seq = ch.get("ChannelSourceSequence") or []
    if not seq:
        label = ch.get("ChannelLabel")
        return lead_from_label(str(label)) if label else None
    item = seq[0]
    meaning = str(item.get("CodeMeaning", "") or "").strip()
    if meaning:
        return lead_from_label(meaning)
    code = str(item.get("CodeValue", "") or "")
    if code.startswith("5.6.3-9-"):
        return _SCPECG_LEADS.get(code.rsplit("-", 1)[-1])
    label = ch.get("ChannelLabel")
    return lead_from_label(str(label)) if label else None


def _channel_unit(ch) -> str | None:
    seq = ch.get("ChannelSensitivityUnitsSequence") or []
    if not seq:
        return None
    return str(seq[0].get("CodeValue", "") or seq[0].get("CodeMeaning", "") or "") or None


def _channel_grid(ch, per_mv: float) -> float | None:
    """Raw units per mV of a channel (its ADC gain), or None when a baseline offsets it."""
    baseline = float(ch.get("ChannelBaseline", 0.0) or 0.0)
    if baseline != 0.0:
        return None
    # value = raw * sensitivity * correction [unit]; per_mv units make 1 mV.
    return per_mv / _scale(ch)


def _scale(ch) -> float:
    """Unit value of one raw step, as pydicom applies it (absent elements count as 1)."""
    sensitivity = ch.get("ChannelSensitivity", 1.0)
    correction = ch.get("ChannelSensitivityCorrectionFactor", 1.0)
    return float(1.0 if sensitivity is None else sensitivity) * float(1.0 if correction is None else correction)


def _annotations(ds, group_index: int) -> dict[str, Any]:
    """Device measurements and statements that refer to the chosen group (or to all)."""
    intervals: dict[str, float] = {}
    axes: dict[str, float] = {}
    measurements: list[dict[str, Any]] = []
    statements: list[str] = []
    fiducials: dict[int, dict[str, int]] = {}  # annotation group -> point name -> sample
    for item in ds.get("WaveformAnnotationSequence", []) or []:
        ref = list(item.get("ReferencedWaveformChannels", []) or [])
        # Pairs of (multiplex group number, channel number), 1-based groups; channel 0 = all.
        if ref and ref[0] not in (0, group_index + 1):
            continue
        concept = item.get("ConceptNameCodeSequence") or []
        name = str(concept[0].get("CodeMeaning", "")).strip() if concept else ""
        if "UnformattedTextValue" in item:
            text = str(item.UnformattedTextValue).strip()
            if text:
                statements.append(text)
            continue
        if "NumericValue" in item:
            try:
                value = float(item.NumericValue)
            except (TypeError, ValueError):
                continue
            units = item.get("MeasurementUnitsCodeSequence") or []
            unit = str(units[0].get("CodeValue", "")) if units else ""
            measurements.append({"name": name, "value": value, "unit": unit})
            key = name.lower()
            # A zero interval is how devices write "not measured" (no P waves -> PP 0).
            if key in _INTERVALS and unit == "ms" and value > 0:
                intervals[_INTERVALS[key]] = value
            elif key in _AXES and unit == "deg":
                axes[_AXES[key]] = value
            continue
        positions = item.get("ReferencedSamplePositions")
        if name and positions is not None:
            first = positions[0] if isinstance(positions, MultiValue | list | tuple) else positions
            group_number = int(item.get("AnnotationGroupNumber", 0) or 0)
            # DICOM numbers samples from 1; `fiducials` are 0-based like the signal.
            fiducials.setdefault(group_number, {})[name] = int(first) - 1
    out: dict[str, Any] = {}
    if intervals:
        out["intervals_ms"] = intervals
    if axes:
        out["axes_deg"] = axes
    if statements:
        out["statements"] = statements
    if measurements:
        out["measurements"] = measurements
    if fiducials:
        # One entry per annotation group (usually one beat). Devices reference all groups
        # to the rhythm strip even when a group delineates the median beat, so the
        # group number is kept to let a reader tell them apart.
        out["fiducials"] = [{"group": g, **points} for g, points in sorted(fiducials.items())]
    return out


def _skip(report: ImportReport | None, reason: str) -> None:
    if report is not None:
        report.skip(reason)


def import_dicom_ecg(paths: Iterable[str | Path], report: ImportReport, skip_bad: bool = False,
                     files: list[Path] | None = None) -> Iterator[PatientCase]:
    """One `PatientCase` per DICOM ECG file named by `paths` (files or folders).

    Files in a folder that are not DICOM, or DICOM without a waveform, are skipped and
    counted; a file that cannot be read as DICOM raises `InputError` (or, with
    `skip_bad`, is skipped and counted).
    """
    import pydicom
    from pydicom.misc import is_dicom

    paths = list(paths)
    named = {Path(p) for p in paths if not Path(p).is_dir()}
    for path in files if files is not None else expand_paths(paths):
        if path not in named and not is_dicom(path):
            report.skip("not a DICOM file (in a folder)")  # README, licence, thumbnails beside the data
            continue
        opened = read_or_skip(report, skip_bad, "unreadable DICOM file", _dataset, path)
        if opened is None:
            continue
        ds = opened[0]
        if "WaveformSequence" not in ds:
            report.skip("DICOM file without a waveform")
            continue
        ecg = read_or_skip(report, skip_bad, "unreadable DICOM waveform", read_dicom_ecg, ds, report)
        if ecg is None:
            continue
        ecg.source = dicom_source_name(path, ds)
        patient = str(ds.get("PatientID", "") or "").strip()
        # Same ids as `medfuse import dicom` (hashes of the study UID and patient ID, never
        # the raw identifiers), so one study imported either way is one case.
        study = str(ds.get("StudyInstanceUID", "") or ds.get("SOPInstanceUID", "") or path.stem)
        yield PatientCase(
            case_id=pseudonym(study, "dcm"),
            patient_id=pseudonym(patient, "pt") if patient else None,
            time=_acquisition_time(ds),
            demographics=dicom_demographics(ds, report),
            ecg=ecg,
            provenance={"importer": "dicom-ecg", "source": ecg.source, "sop_class": str(ds.get("SOPClassUID", "")),
                        "pydicom": pydicom.__version__},
        )


def _acquisition_time(ds):
    from pydicom.valuerep import DT

    raw = ds.get("AcquisitionDateTime")
    if not raw:
        return None
    try:
        value = DT(str(raw))
    except ValueError:
        return None
    return value.replace(tzinfo=None) if value.tzinfo is None else value
