"""Plain ECG arrays -> ECG / PatientCase: CSV (one column per lead) or NumPy `.npy`.

Neither format says how fast it was sampled, so the sampling rate is a required
argument and is never guessed. Lead names come from the CSV header row or from the
`leads` argument (required for `.npy` and for a CSV without a header); the unit is
millivolts unless told otherwise (`uV`). A CSV exported by PhysioNet tools, with a
second row of units ('mV', 'NU'), has its per-column units read from that row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from medfuse.errors import InputError
from medfuse.io.base import ImportReport, expand_paths, read_or_skip, safe_case_id
from medfuse.io.ecg_leads import (
    grid_gain,
    non_ecg_reason,
    standard_lead_name,
    units_per_mv,
)
from medfuse.record.case import ECG, PatientCase, sampling_rate_problem

ARRAY_SUFFIXES = (".csv", ".tsv", ".txt", ".npy")

# Columns that count time or samples rather than hold a lead ('Elapsed time' is how
# PhysioNet's exporters name it).
_TIME_COLUMN = re.compile(r"^(time|t|sec|secs|seconds|ms|msec|sample|samples|sample ?#|index|idx|#|elapsed time)"
                          r"(\s*\(.*\))?$", re.IGNORECASE)


def read_ecg_array(path: str | Path, fs: float | None, leads: list[str] | None = None, unit: str = "mV",
                   report: ImportReport | None = None) -> ECG:
    """Read a CSV or `.npy` ECG (samples x leads) sampled at `fs` Hz, in `unit` (mV or uV).

    For a CSV with a header row, `leads` (optional) selects and orders columns by name;
    without a header, or for `.npy`, `leads` names the columns and must match their
    count. Empty cells and NaN become missing samples (NaN) and are counted in `report`.

    Raises `InputError` (naming the file) for a missing sampling rate, a non-numeric
    cell, an unknown unit, a shape that does not match the lead names, or an unreadable
    file.
    """
    path = Path(path)
    if fs is None:
        raise InputError(path, "no sampling rate: give --fs in Hz (it is never guessed)")
    if sampling_rate_problem(fs):
        raise InputError(path, sampling_rate_problem(fs))
    if units_per_mv(unit) is None:
        raise InputError(path, f"unit '{unit}' is not a voltage (use mV or uV)")
    if not path.is_file():
        raise InputError(path, "no such file")
    if path.suffix.lower() == ".npy":
        columns, names, units = _read_npy(path, leads), list(leads or []), [unit] * len(leads or [])
    else:
        columns, names, units = _read_csv(path, leads, unit, report)

    kept: list[np.ndarray] = []
    kept_names: list[str] = []
    for values, name, col_unit in zip(columns, names, units):
        reason = non_ecg_reason(name, col_unit)
        if reason:
            _count(report, "skip", reason)
            continue
        lead = standard_lead_name(name)
        if lead in kept_names:
            _count(report, "skip", f"duplicate lead name skipped ({lead})")
            continue
        per_mv = units_per_mv(col_unit)
        assert per_mv is not None  # non_ecg_reason accepted the unit
        # Division (not * 1e-3) so integer microvolts give the same doubles a WFDB reader would.
        kept.append(values / per_mv if per_mv != 1.0 else values)
        kept_names.append(lead)
    if not kept:
        raise InputError(path, "no ECG column left (all columns are time or non-ECG signals)")
    signal = np.stack(kept, axis=1).astype(np.float64)  # (samples, leads) mV
    if signal.shape[0] == 0:
        raise InputError(path, "no samples")

    infinite = np.isinf(signal)
    if infinite.any():
        _count(report, "note", "infinite samples kept as missing (NaN)", int(infinite.sum()))
        signal[infinite] = np.nan
    missing = int(np.isnan(signal).sum())
    if missing:
        _count(report, "note", "missing samples kept as NaN", missing)
    gain = grid_gain(signal)
    if gain is None:
        gain = 1000.0
        _count(report, "note", "samples off any common ADC grid, stored rounded to 1 uV")
    return ECG(signal=signal, fs=float(fs), leads=kept_names, adc_gain=gain, source=path.name)


def _count(report: ImportReport | None, kind: str, reason: str, n: int = 1) -> None:
    if report is None:
        return
    (report.skip if kind == "skip" else report.note)(reason, n)


def _read_npy(path: Path, leads: list[str] | None) -> list[np.ndarray]:
    if not leads:
        raise InputError(path, "a .npy array has no lead names: give them with --leads I,II,...")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as e:
        problem = "holds Python objects (pickled), not numbers" if "pickle" in str(e) else "is not a valid .npy array"
        raise InputError(path, f"file {problem}") from None
    except (OSError, EOFError) as e:
        raise InputError(path, f"cannot read .npy file, it may be cut short ({e.__class__.__name__})") from None
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(path, f"array holds {arr.dtype} values, not numbers")
    if arr.ndim == 1 and len(leads) == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise InputError(path, f"array must be 2-D (samples, leads), got shape {arr.shape}")
    if arr.shape[1] != len(leads):
        hint = "; it looks like (leads, samples): save its transpose" if arr.shape[0] == len(leads) else ""
        raise InputError(path, f"array has {arr.shape[1]} columns but {len(leads)} lead names were given{hint}")
    return [arr[:, j].astype(np.float64) for j in range(arr.shape[1])]


def _read_csv(path: Path, leads: list[str] | None, unit: str,
              report: ImportReport | None) -> tuple[list[np.ndarray], list[str], list[str]]:
    import pandas as pd

    try:
        with path.open(encoding="utf-8-sig", errors="strict") as fh:
            first = next((line for line in fh if line.strip()), "")
    except UnicodeDecodeError:
        raise InputError(path, "not a text (CSV) file") from None
    if not first:
        raise InputError(path, "file is empty")
    delimiter = max((",", ";", "\t"), key=first.count)
    if first.count(delimiter) == 0:
        delimiter = ","  # a single column
    try:
        table = pd.read_csv(path, sep=delimiter, header=None, dtype=str, keep_default_na=False,
                            skip_blank_lines=True, encoding="utf-8-sig", skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        # pandas' 'Expected 2 fields in line 3, saw 3' names structure only, never content.
        shape = re.search(r"Expected \d+ fields in line \d+, saw \d+", str(e))
        raise InputError(path, f"cannot parse as CSV ({shape.group(0) if shape else e.__class__.__name__})") from None
    cells = table.to_numpy(dtype=object)  # (rows, columns) of str
    cells = np.vectorize(lambda c: c.strip().strip("'\""))(cells) if cells.size else cells

    header_rows = 0
    names: list[str]
    if cells.shape[0] and any(_not_number(c) for c in cells[0] if c != ""):
        names = [str(c) for c in cells[0]]
        header_rows = 1
    else:
        names = []
    units = [unit] * cells.shape[1]
    if header_rows and cells.shape[0] > 1 and _is_units_row(cells[1], names):
        units = [str(c) if not _TIME_COLUMN.match(n) else "" for c, n in zip(cells[1], names)]
        header_rows = 2

    if header_rows:
        if any(not n for n in names):
            raise InputError(path, f"header row has an empty column name (column {names.index('') + 1})")
        columns = [j for j, n in enumerate(names) if not _TIME_COLUMN.match(n)]
        dropped = len(names) - len(columns)
        if dropped:
            _count(report, "note", "time/index column ignored", dropped)
        if leads:
            wanted = [standard_lead_name(x) for x in leads]
            by_name = {standard_lead_name(names[j]): j for j in columns}
            absent = [x for x in wanted if x not in by_name]
            if absent:
                raise InputError(path, f"no column named {', '.join(absent)} in the header row")
            columns = [by_name[x] for x in wanted]
    else:
        if not leads:
            raise InputError(path, "no header row with lead names: give them with --leads I,II,...")
        if len(leads) != cells.shape[1]:
            raise InputError(path, f"{cells.shape[1]} columns but {len(leads)} lead names were given")
        names = list(leads)
        columns = list(range(cells.shape[1]))

    body = cells[header_rows:]
    out = []
    for j in columns:
        raw = body[:, j]
        empty = raw == ""
        values = pd.to_numeric(pd.Series(np.where(empty, "nan", raw)), errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(values) & ~empty & ~np.isin(np.char.lower(raw.astype(str)), ("nan", "na", "-nan"))
        if bad.any():
            row = int(np.argmax(bad)) + header_rows + 1
            raise InputError(path, f"line {row}, column '{names[j]}': not a number")
        out.append(values)
    return out, [names[j] for j in columns], [units[j] for j in columns]


def _not_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return True
    return False


def _is_units_row(row, names: list[str]) -> bool:
    """A second header row of units (PhysioNet export): every lead column holds a unit
    word and none of them is a number."""
    lead_cells = [str(c) for c, n in zip(row, names) if not _TIME_COLUMN.match(n)]
    return bool(lead_cells) and all(c and _not_number(c) and re.fullmatch(r"[A-Za-zµμ%/.\[\]]{1,12}", c)
                                    for c in lead_cells)


def import_ecg_array(paths: Iterable[str | Path], report: ImportReport, fs: float | None,
                     leads: list[str] | None = None, unit: str = "mV", skip_bad: bool = False,
                     files: list[Path] | None = None) -> Iterator[PatientCase]:
    """One `PatientCase` per CSV/`.npy` file named by `paths` (files, globs or folders).

    All files share `fs`, `leads` and `unit`. A file that cannot be read raises
    `InputError`, or with `skip_bad` is skipped and counted.
    """
    for path in files if files is not None else find_array_files(paths):
        ecg = read_or_skip(report, skip_bad, "unreadable ECG array file", read_ecg_array, path, fs, leads, unit, report)
        if ecg is None:
            continue
        yield PatientCase(
            case_id=safe_case_id(path.stem),
            ecg=ecg,
            provenance={"importer": "ecg-array", "source": path.name, "fs": fs, "unit": unit},
        )


def find_array_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files named by `paths`; folders contribute their .csv/.tsv/.txt/.npy files."""
    return expand_paths(paths, patterns=tuple(f"*{s}" for s in ARRAY_SUFFIXES))
