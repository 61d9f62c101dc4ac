"""WFDB records (PhysioNet: MIT-BIH, PTB, PTB-XL, CinC challenges) -> ECG / PatientCase.

Reading goes through the `wfdb` package. Before the samples are read, every data file the
header names is checked against the header (present, and exactly as long as the declared
signal count x length x format needs), because `wfdb` itself fails on a truncated or
mismatched file with an unrelated numpy message or returns a silently padded signal.

The signal keeps the record's digital grid: samples are (digital - baseline) / gain in
millivolts, and `ECG.adc_gain` is that gain when all ECG leads share it, so writing the
case as WFDB and reading it back gives the same numbers bit for bit.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.errors import InputError
from medfuse.io.base import ImportReport, expand_paths, safe_case_id
from medfuse.io.ecg_leads import non_ecg_reason, standard_lead_name, units_per_mv
from medfuse.record.case import ECG, Demographics, Diagnosis, Labels, PatientCase
from medfuse.record.store import check_wfdb_header

# Signal file extensions a user may point at instead of the header.
SIGNAL_SUFFIXES = (".dat", ".mat", ".xyz", ".sig", ".edf")

# Bytes one sample takes in each fixed-size WFDB format (212 packs 2 samples in 3 bytes,
# 310/311 pack 3 in 4). Compressed (FLAC 508/516/524) formats have no fixed size.
_BYTES_PER_SAMPLE: dict[str, float] = {
    "8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2,
    "212": 1.5, "310": 4 / 3, "311": 4 / 3,
}

# Every storage format wfdb can read (FLAC-compressed ones included).
_FORMATS = frozenset(_BYTES_PER_SAMPLE) | {"508", "516", "524"}

# Beat annotation codes (WFDB `ecgcodes`): the symbols that mark a QRS complex.
_BEAT_SYMBOLS = frozenset("NLRBAaJSVrFejnE/fQ?")

# Header comment keys that carry a diagnosis term (PTB, many PhysioNet databases).
_DIAGNOSIS_KEYS = ("reason for admission", "additional diagnoses", "diagnosis", "diagnoses", "diagnose")
_NOT_A_TERM = {"", "n/a", "na", "no", "none", "unknown", "-", "?", "nan"}
# 'age: 81' / 'Sex: Female' (PTB, CinC 2020+); MIT-BIH writes '69 M 1085 1629 x1'.
_KEY_VALUE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9 ()/_.-]*?)\s*:\s*(.*?)\s*$")
_MITBIH_AGE_SEX = re.compile(r"^\s*(\d{1,3}|\?+)\s+([MF?])\b")


class NoECGChannelError(InputError):
    """A readable WFDB record that holds no ECG channel (only pressure, pleth, ...)."""


# ---------------------------------------------------------------- one record

def read_wfdb(record_path: str | Path, load_annotations: bool = True) -> tuple[ECG, dict[str, Any]]:
    """Read one WFDB record as an ECG in mV with lead names from the header.

    `record_path` is the header (`100.hea`), the record name without extension (`100`),
    or one of its signal files (`a103l.mat`). Non-ECG channels (PLETH, ABP, RESP, EEG)
    are left out and listed in the returned details; Frank leads (vx, vy, vz) are ECG.

    Returns `(ecg, details)` where `details` holds:
    - `record`: the record name; `header`: the header file name;
    - `demographics`: a `Demographics` from the header comments (age, sex) or empty;
    - `labels`: a `Labels` with diagnoses named in the comments (mapped to the disease
      panel where possible) or None;
    - `time`: the record's base date and time, or None;
    - `skipped`: short reasons, one per skipped item (a non-ECG channel, an unreadable
      annotation file); `notes`: reason -> count of items kept but changed (NaN samples).
      Both feed an `ImportReport`.

    Raises `InputError` (naming the file) when the header is missing or malformed, a data
    file is missing, or a data file's size does not match what the header declares.
    """
    import wfdb

    record = _record_base(Path(record_path))
    hea = record.with_name(record.name + ".hea")
    header = _read_header(record, hea)
    is_multisegment = getattr(header, "seg_name", None) is not None
    if not header.n_sig:
        raise InputError(hea, "header declares no signals")
    listed = len(header.file_name or []) if not is_multisegment else header.n_sig
    if listed != header.n_sig:
        raise InputError(hea, f"header declares {header.n_sig} signal(s) but describes {listed}")
    check_wfdb_header(header, hea)  # data files inside the folder, a plausible sampling rate
    if not is_multisegment:
        unknown = sorted({str(f) for f in header.fmt if str(f) not in _FORMATS})
        if unknown:
            raise InputError(hea, f"unsupported WFDB signal format {', '.join(unknown)}")
        _check_data_files(header, hea)
    try:
        rec = wfdb.rdrecord(str(record), physical=False, m2s=True)
    except FileNotFoundError as e:
        missing = Path(e.filename).name if getattr(e, "filename", None) else "a data file"
        raise InputError(hea, f"names data file '{missing}', which does not exist") from None
    except (ValueError, IndexError, KeyError, TypeError, OSError) as e:
        raise InputError(hea, f"cannot read WFDB record ({e.__class__.__name__})") from None
    if rec.d_signal is None or rec.d_signal.ndim != 2 or rec.d_signal.shape[0] == 0:
        raise InputError(hea, "record holds no samples")

    skipped: list[str] = []
    notes: dict[str, int] = {}
    keep: list[int] = []
    names: list[str] = []
    for i, raw_name in enumerate(rec.sig_name):
        if not raw_name or not str(raw_name).strip():
            skipped.append("unnamed channel skipped (no lead name in the header)")
            continue
        reason = non_ecg_reason(raw_name, _unit(rec, i))
        if reason:
            skipped.append(reason)
            continue
        name = standard_lead_name(raw_name)
        if name in names:
            skipped.append(f"duplicate lead name skipped ({name})")
            continue
        keep.append(i)
        names.append(name)
    if not keep:
        raise NoECGChannelError(hea, f"no ECG channel among {rec.n_sig} signal(s)")

    # Gain in digital units per mV for each kept channel: a header in uV with gain g
    # counts g units per uV, i.e. g * 1000 per mV.
    all_gains_mv = [float(rec.adc_gain[i]) * (units_per_mv(_unit(rec, i)) or 1.0) for i in range(rec.n_sig)]
    # A negative gain (inverted polarity) is still a grid; the stored gain must be positive.
    gains_mv = [abs(all_gains_mv[i]) for i in keep]
    for i, g in zip(keep, gains_mv):
        if g == 0:  # WFDB: gain 0 means "uncalibrated", the file does not say what a unit is.
            raise InputError(hea, f"signal {rec.sig_name[i]} has ADC gain 0 (uncalibrated); cannot convert to mV")
    # wfdb's own digital-to-analogue conversion (it maps its invalid-sample codes to NaN),
    # with the gains expressed per mV so the result is in mV.
    rec.adc_gain = [g or 1.0 for g in all_gains_mv]
    try:
        signal = np.ascontiguousarray(rec.dac()[:, keep], dtype=np.float64)  # (samples, leads) mV
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(hea, f"cannot convert samples to physical units ({e.__class__.__name__})") from None
    n_missing = int(np.isnan(signal).sum())
    if n_missing:
        notes["missing samples kept as NaN"] = n_missing

    adc_gain = _common_gain(gains_mv, signal)
    if adc_gain is None:
        # The finest grid keeps every lead within half of its own ADC step.
        adc_gain = max(gains_mv)
        notes["leads with different ADC gains, rounded to the finest one"] = 1

    comments = [c.strip() for c in (rec.comments or []) if c and c.strip()]
    annotations: dict[str, Any] = {}
    # Diagnosis lines become labels (below); kept in the ECG they would carry the label
    # along with the input.
    kept_comments = [c for c in comments if not _is_diagnosis_comment(c)]
    if kept_comments:
        annotations["header_comments"] = kept_comments
    if load_annotations:
        annotations.update(_read_reference_beats(record, skipped))

    ecg = ECG(
        signal=signal,
        fs=float(rec.fs),
        leads=names,
        adc_gain=adc_gain,
        source=hea.name,
        annotations=annotations,
    )
    details: dict[str, Any] = {
        "record": record.name,
        "header": hea.name,
        "comments": comments,  # all header comments, diagnosis lines included
        "demographics": _demographics_from_comments(comments),
        "labels": _labels_from_comments(comments),
        "time": _base_datetime(rec),
        "skipped": skipped,
        "notes": notes,
    }
    return ecg, details


def _common_gain(gains_mv: list[float], signal: np.ndarray) -> float | None:
    """One gain (units per mV) on whose grid every lead's samples lie exactly, or None.

    A case stores one `adc_gain`. With equal gains that is the gain; with different
    integer gains (CinC 2015: 7247 and 10520 per mV) it is their least common multiple,
    since d / g == (d * (L / g)) / L exactly, as long as the stored integers fit 32 bits.
    """
    if len(set(gains_mv)) == 1:
        return gains_mv[0]
    if not all(float(g).is_integer() for g in gains_mv):
        return None
    lcm = float(math.lcm(*(int(g) for g in gains_mv)))
    finite = np.abs(signal[np.isfinite(signal)])
    peak = float(finite.max()) if finite.size else 0.0
    return lcm if peak * lcm < 2**31 - 1 else None


def _unit(rec, channel: int) -> str:
    # WFDB: a signal line without a unit means millivolts.
    return (rec.units[channel] if rec.units else None) or "mV"


def _record_base(path: Path) -> Path:
    """The record path without extension, from a header, a signal file or a bare name."""
    if path.suffix.lower() == ".hea":
        return path.with_suffix("")
    if Path(str(path) + ".hea").is_file():  # bare record name (may itself contain dots)
        return path
    if path.suffix.lower() in SIGNAL_SUFFIXES and path.with_suffix(".hea").is_file():
        return path.with_suffix("")
    if path.is_file():
        raise InputError(path, "not a WFDB record: no header (.hea) beside it")
    raise InputError(path, "no such WFDB record (give a .hea file, a record name or a folder)")


def _read_header(record: Path, hea: Path):
    import wfdb

    if not hea.is_file():
        raise InputError(hea, "no such WFDB header")
    try:
        return wfdb.rdheader(str(record))
    except (ValueError, IndexError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise InputError(hea, f"not a valid WFDB header ({e.__class__.__name__})") from None


def _check_data_files(header, hea: Path) -> None:
    """Each data file exists and has exactly the size the header's signals need."""
    by_file: dict[str, list[int]] = {}
    for i, name in enumerate(header.file_name):
        by_file.setdefault(name, []).append(i)
    for name, channels in by_file.items():
        if name == "~":  # WFDB: signal with no data file (not stored)
            continue
        path = hea.parent / name
        if not path.is_file():
            raise InputError(hea, f"names data file '{name}', which does not exist")
        fmts = [str(header.fmt[i]) for i in channels]
        if not header.sig_len or any(f not in _BYTES_PER_SAMPLE for f in fmts):
            continue  # length inferred from the file, or a compressed format
        spf = [(header.samps_per_frame[i] if header.samps_per_frame else 1) or 1 for i in channels]
        frame_bytes = sum(s * _BYTES_PER_SAMPLE[f] for s, f in zip(spf, fmts))
        offset = (header.byte_offset[channels[0]] if header.byte_offset else 0) or 0
        expected = offset + math.ceil(header.sig_len * frame_bytes)
        size = path.stat().st_size
        declared = (f"header {hea.name} declares {len(channels)} signal(s) x {header.sig_len} samples "
                    f"in format {fmts[0]} ({expected} bytes)")
        if size < expected:
            raise InputError(path, f"data file is shorter than its header says: {size} bytes, {declared}; "
                                   "the file is truncated or the header is wrong")
        if size >= expected + max(1, math.ceil(frame_bytes)):
            raise InputError(path, f"data file does not match its header: {size} bytes, {declared}")


def _read_reference_beats(record: Path, skipped: list[str]) -> dict[str, Any]:
    """Reference beat annotations from `<record>.atr` when present (MIT-BIH style)."""
    import wfdb

    atr = record.with_name(record.name + ".atr")
    if not atr.is_file():
        return {}
    try:
        ann = wfdb.rdann(str(record), "atr")
    except Exception as e:  # noqa: BLE001 - any parse failure of an optional side file
        skipped.append(f"unreadable annotation file (.atr, {e.__class__.__name__})")
        return {}
    symbols = list(ann.symbol or [])
    samples = [int(s) for s in ann.sample]
    aux = [(a or "").strip("\x00 ") for a in (ann.aux_note or [""] * len(samples))]
    beats = [(s, sym) for s, sym in zip(samples, symbols) if sym in _BEAT_SYMBOLS]
    rhythm = [{"sample": s, "rhythm": a} for s, sym, a in zip(samples, symbols, aux) if sym == "+" and a]
    out: dict[str, Any] = {
        "reference_beats": {
            "source": atr.name,
            "sample": [s for s, _ in beats],  # sample index at the record's fs
            "symbol": [sym for _, sym in beats],
        }
    }
    if rhythm:
        out["rhythm_changes"] = rhythm
    return out


def _base_datetime(rec) -> dt.datetime | None:
    date, time = getattr(rec, "base_date", None), getattr(rec, "base_time", None)
    if date is None:
        return None
    return dt.datetime.combine(date, time or dt.time())


def _comment_fields(comments: list[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for c in comments:
        m = _KEY_VALUE.match(c)
        if m:
            fields.setdefault(m.group(1).strip().lower(), m.group(2))
    return fields


def _demographics_from_comments(comments: list[str]) -> Demographics:
    """Age and sex from header comments ('age: 81' / 'sex: female', or MIT-BIH '69 M ...')."""
    fields = _comment_fields(comments)
    age_text = fields.get("age")
    sex_text = fields.get("sex") or fields.get("gender")
    if age_text is None and sex_text is None:
        for c in comments:
            m = _MITBIH_AGE_SEX.match(c)
            if m:
                age_text, sex_text = m.group(1), m.group(2)
                break
    age: float | None = None
    if age_text:
        try:
            value = float(age_text.split()[0])
        except ValueError:
            value = math.nan
        age = value if 0 <= value <= 130 else None
    sex = None
    if sex_text:
        s = sex_text.strip().lower()
        sex = "F" if s in ("f", "female", "woman") else "M" if s in ("m", "male", "man") else None
    return Demographics(age=age, sex=sex)


def _is_diagnosis_comment(comment: str) -> bool:
    m = _KEY_VALUE.match(comment)
    return bool(m) and m.group(1).strip().lower() in (*_DIAGNOSIS_KEYS, "dx")


def _dx_codes(dx: str) -> list[str]:
    """'Dx:' entries as source codes: SNOMED CT codes as they are, CPSC 2018 abbreviations
    ('AF', 'RBBB': the early Challenge-2020 files) as the SNOMED code they stand for, and
    anything else tagged as a plain label, never passed off as a SNOMED code."""
    from medfuse.knowledge.label_maps import load_label_map

    codes: list[str] = []
    cpsc = None
    for entry in (c.strip() for c in dx.split(",")):
        if not entry:
            continue
        if entry.isdigit():
            codes.append(f"SNOMED:{entry}")
            continue
        cpsc = cpsc or load_label_map("cpsc2018")
        target = cpsc.lookup(entry)
        codes.append(target.code if target is not None and target.code else f"label:{entry}")
    return codes


def _labels_from_comments(comments: list[str]) -> Labels | None:
    """Diagnoses named in header comments, mapped to the disease panel where possible.

    PTB writes 'Reason for admission: Myocardial infarction' and 'Additional diagnoses:
    Diabetes mellitus'; the PhysioNet/CinC 2020-2021 challenges write 'Dx: 164889003,...'
    (SNOMED CT codes, kept as source codes).
    """
    from medfuse.knowledge.panel import load_panel

    fields = _comment_fields(comments)
    terms: list[str] = []
    for key in _DIAGNOSIS_KEYS:
        for term in re.split(r"[,;]", fields.get(key, "")):
            term = term.strip()
            if term.lower() not in _NOT_A_TERM and term not in terms:
                terms.append(term)
    codes = _dx_codes(fields.get("dx", ""))
    if not terms and not codes:
        return None
    panel = load_panel()
    diagnoses: list[Diagnosis] = []
    for term in terms:
        disease = panel.lookup(term) or panel.lookup(re.sub(r"\(.*?\)", "", term))
        if disease is not None:
            if all(d.name != disease.name for d in diagnoses):
                diagnoses.append(Diagnosis(name=disease.name, in_panel=True))
        else:
            diagnoses.append(Diagnosis(name=term, in_panel=False))
    return Labels(diagnoses=diagnoses, source_codes=codes)


# ---------------------------------------------------------------- many records

def find_wfdb_records(sources: Iterable[str | Path]) -> list[Path]:
    """Record paths (without extension) named by `sources`: headers, record names, signal
    files, glob patterns or folders (searched recursively for `.hea` files).

    In a folder, the segment records of a multi-segment record are left out: they are
    read as part of the multi-segment record.
    """
    records: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir() or any(ch in str(source) for ch in "*?["):
            headers = [p for p in expand_paths([source], patterns=("*.hea",)) if p.suffix == ".hea"]
            records.extend(_drop_segments([h.with_suffix("") for h in headers]))
        else:
            records.append(_record_base(path))
    return list(dict.fromkeys(records))


def _drop_segments(records: list[Path]) -> list[Path]:
    segments: set[Path] = set()
    for r in records:
        first = _first_record_line(r.with_name(r.name + ".hea"))
        if first and "/" in first.split()[0]:  # 'name/nseg ...' marks a multi-segment header
            import wfdb

            try:
                header = wfdb.rdheader(str(r))
            except (ValueError, IndexError, KeyError, TypeError, OSError, UnicodeDecodeError):
                continue  # read_wfdb reports it when the record itself is imported
            segments.update(r.with_name(s) for s in header.seg_name if s and s != "~")
    return [r for r in records if r not in segments]


def _first_record_line(hea: Path) -> str | None:
    try:
        with hea.open(encoding="latin-1") as fh:
            for line in fh:
                if line.strip() and not line.lstrip().startswith("#"):
                    return line
    except OSError:
        return None
    return None


def import_wfdb(paths: Iterable[str | Path], report: ImportReport, skip_bad: bool = False,
                records: list[Path] | None = None) -> Iterator[PatientCase]:
    """One `PatientCase` per WFDB record named by `paths` (files, record names, folders).

    Non-ECG channels and unreadable side files are counted in `report`. A record with no
    ECG channel at all is skipped and counted. A malformed record raises `InputError`,
    or with `skip_bad` is skipped and counted. `records` may pass the already-resolved
    list from `find_wfdb_records` (the CLI does, to size its progress bar).
    """
    for record in records if records is not None else find_wfdb_records(paths):
        try:
            ecg, details = read_wfdb(record)
        except NoECGChannelError:
            report.skip("record without ECG channels")
            continue
        except InputError as e:
            if not skip_bad:
                raise
            report.skip_file(e, "unreadable WFDB record")
            continue
        for reason in details["skipped"]:
            report.skip(reason)
        for reason, count in details["notes"].items():
            report.note(reason, count)
        yield PatientCase(
            case_id=safe_case_id(details["record"]),
            time=details["time"],
            demographics=details["demographics"],
            ecg=ecg,
            labels=details["labels"],
            provenance={"importer": "wfdb", "source": details["header"]},
        )
