"""`medfuse import wfdb` and `medfuse import ecg-array`: ECG recordings into a cohort."""

from __future__ import annotations

from pathlib import Path

import typer

from medfuse.cli.importing import JsonOption, OutOption, OverwriteOption, SkipBadOption, write_and_summarise
from medfuse.errors import InputError
from medfuse.io.base import ImportReport


def import_wfdb_cmd(
    sources: list[Path] = typer.Argument(..., help="WFDB headers (.hea), record names without extension, "
                                                   "signal files (.dat/.mat) or folders (searched recursively)."),
    out: OutOption = ...,
    overwrite: OverwriteOption = False,
    skip_bad: SkipBadOption = False,
    as_json: JsonOption = False,
) -> None:
    """Import PhysioNet WFDB records (MIT-BIH, PTB, PTB-XL, CinC) as one case per record."""
    from medfuse.io.wfdb import find_wfdb_records, import_wfdb

    records = find_wfdb_records(sources)
    if not records:
        raise InputError(sources[0], "no WFDB records (.hea files) found")
    report = ImportReport(source="wfdb")
    cases = import_wfdb(sources, report, skip_bad=skip_bad, records=records)
    write_and_summarise(cases, out, report, len(records), overwrite, as_json, sources=sources)


def import_ecg_array_cmd(
    sources: list[Path] = typer.Argument(..., help="CSV files (one column per lead) or .npy arrays "
                                                   "(samples x leads), or folders of them."),
    out: OutOption = ...,
    fs: float | None = typer.Option(None, "--fs", help="Sampling rate in Hz (required: it is never guessed)."),
    leads: str | None = typer.Option(None, "--leads", help="Comma-separated lead names, e.g. I,II,V1. Required "
                                                           "for .npy and header-less CSV; selects columns otherwise."),
    unit: str = typer.Option("mV", "--unit", help="Unit of the values: mV or uV."),
    overwrite: OverwriteOption = False,
    skip_bad: SkipBadOption = False,
    as_json: JsonOption = False,
) -> None:
    """Import plain ECG arrays (CSV or NumPy) with a declared sampling rate, one case per file."""
    from medfuse.io.ecg_array import find_array_files, import_ecg_array
    from medfuse.io.ecg_leads import units_per_mv
    from medfuse.record.case import sampling_rate_problem

    # Checked before anything is written: these are mistakes in the command, not in a file.
    if fs is None:
        raise InputError(sources[0], "no sampling rate: give --fs in Hz (it is never guessed)")
    if sampling_rate_problem(fs):
        raise InputError(None, f"--fs: {sampling_rate_problem(fs)}")
    if units_per_mv(unit) is None:
        raise InputError(None, f"--unit '{unit}' is not a voltage (use mV or uV)")
    lead_names = [x.strip() for x in leads.split(",") if x.strip()] if leads else None
    if leads is not None and not lead_names:
        raise InputError(None, "--leads is empty (give names like I,II,V1)")
    files = find_array_files(sources)
    if not files:
        raise InputError(sources[0], "no CSV or .npy files found")
    report = ImportReport(source="ecg-array")
    cases = import_ecg_array(sources, report, fs=fs, leads=lead_names, unit=unit, skip_bad=skip_bad, files=files)
    write_and_summarise(cases, out, report, len(files), overwrite, as_json, sources=sources)
