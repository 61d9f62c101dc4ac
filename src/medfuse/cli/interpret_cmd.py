"""`medfuse interpret {ecg,labs,vitals,case} PATH... [--json]`: physiological evidence.

PATH may be a case folder, a folder of case folders (a cohort), a glob, or for `ecg`
also a WFDB record (.hea, or the record name) or a DICOM waveform ECG (.dcm), or a
folder of those. With `--json` each input gives one JSON object on its own line (JSON
Lines) with its `path`, so a whole dataset is read in one call and piped on.

An input that cannot be read is reported as `medfuse: error: <path>: <problem>` on
stderr (and, with --json, as `{"path": ..., "error": ...}`); the others are still
read, and the command exits 2 at the end. A single bad input is a plain error.
"""

from __future__ import annotations

import glob
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import typer

from medfuse.cli.app import app
from medfuse.errors import InputError, MedfuseError

interpret_app = typer.Typer(help="Read cases and recordings into physiological evidence (ECG, labs, vitals).",
                            no_args_is_help=True)
app.add_typer(interpret_app, name="interpret")

_CASE_FILE = "case.json"
_WFDB_SUFFIXES = (".hea", ".dat", ".mat")


@dataclass(frozen=True)
class _Input:
    kind: str   # 'case' | 'wfdb' | 'dicom'
    path: Path


# ---------------------------------------------------------------- finding inputs

def resolve_inputs(args: list[str], allow_recordings: bool) -> list[_Input]:
    """The inputs named by the command-line arguments, in order, without duplicates.

    Raises `InputError` for an argument that names nothing readable (a missing path, a
    glob with no match, a folder with no case and, for ECGs, no recording).
    """
    out: list[_Input] = []
    for arg in args:
        if any(ch in arg for ch in "*?["):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                raise InputError(arg, "no file or folder matches this pattern")
            found: list[_Input] = []
            for m in matches:
                try:
                    found.extend(_resolve_path(Path(m), allow_recordings))
                except InputError:
                    continue  # a glob also matches files that are no input (a .dat beside its .hea)
            if not found:
                raise InputError(arg, "the pattern matches no case folder" + (", WFDB record or DICOM ECG" if allow_recordings else ""))
            out.extend(found)
        else:
            out.extend(_resolve_path(Path(arg), allow_recordings))
    seen: set[_Input] = set()
    unique = []
    for item in out:
        if item not in seen:
            seen.add(item)
            unique.append(item)
    return unique


def _resolve_path(path: Path, allow_recordings: bool) -> list[_Input]:
    if not path.exists():
        if allow_recordings and path.with_name(path.name + ".hea").is_file():
            return [_Input("wfdb", path.with_name(path.name + ".hea"))]
        raise InputError(path, "no such file or folder")
    if path.is_dir():
        if (path / _CASE_FILE).is_file():
            return [_Input("case", path)]
        cases = sorted(p.parent for p in path.rglob(_CASE_FILE)
                       if not any(part.startswith(".") for part in p.relative_to(path).parts))
        if cases:
            return [_Input("case", c) for c in cases]
        if allow_recordings:
            from medfuse.io.base import expand_paths
            from medfuse.io.wfdb import find_wfdb_records

            records = [_Input("wfdb", r.with_name(r.name + ".hea")) for r in find_wfdb_records([path])]
            dicoms = [_Input("dicom", p) for p in expand_paths([path], patterns=("*.dcm",))]
            if records or dicoms:
                return records + dicoms
            raise InputError(path, "folder holds no case folder, WFDB record or DICOM ECG")
        raise InputError(path, "folder holds no case folder (case.json)")
    if path.name == _CASE_FILE:
        return [_Input("case", path.parent)]
    if allow_recordings:
        if path.suffix.lower() in _WFDB_SUFFIXES:
            return [_Input("wfdb", path.with_suffix(".hea"))]
        if path.suffix.lower() == ".dcm" or _is_dicom(path):
            return [_Input("dicom", path)]
        raise InputError(path, "not a case folder, WFDB record (.hea) or DICOM ECG (.dcm)")
    raise InputError(path, "not a case folder (import the file first with 'medfuse import ...')")


def _is_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


# ---------------------------------------------------------------- reading one input

def _read_case(path: Path):
    from medfuse.record.store import read_case

    return read_case(path)


def _ecg_record(item: _Input) -> dict:
    """Interpret the ECG of one input: the JSON record (path, reading, evidence)."""
    from medfuse.interpret.ecg import ecg_evidence, interpret_ecg

    record: dict = {"path": str(item.path)}
    sex = None
    if item.kind == "case":
        case = _read_case(item.path)
        record["case_id"] = case.case_id
        if case.ecg is None or case.ecg.signal is None:
            record.update(reading=None, evidence=[], note="case has no ECG")
            return record
        ecg, sex = case.ecg, case.demographics.sex
    elif item.kind == "wfdb":
        from medfuse.io.wfdb import read_wfdb

        ecg, details = read_wfdb(item.path)
        demographics = details.get("demographics")
        sex = getattr(demographics, "sex", None)
    else:
        from medfuse.io.ecg_dicom import read_dicom_ecg

        ecg = read_dicom_ecg(item.path)
    reading = interpret_ecg(ecg, sex=sex)
    record["reading"] = reading.model_dump(mode="json")
    record["evidence"] = [e.model_dump(mode="json") for e in ecg_evidence(reading)]
    return record


def _case_record(item: _Input, reader: Callable) -> dict:
    case = _read_case(item.path)
    return {"path": str(item.path), "case_id": case.case_id,
            "evidence": [e.model_dump(mode="json") for e in reader(case)]}


def _labs_reader(case):
    from medfuse.interpret.labs import interpret_labs

    return interpret_labs(case)


def _vitals_reader(case):
    from medfuse.interpret.vitals import interpret_vitals

    return interpret_vitals(case)


def _all_reader(case):
    from medfuse.interpret.case import interpret_case

    return interpret_case(case)


# ---------------------------------------------------------------- output

def _print_human(record: dict) -> None:
    from medfuse.record.evidence import Evidence

    title = record["path"] + (f" (case {record['case_id']})" if record.get("case_id") else "")
    print(f"== {title}")
    reading = record.get("reading")
    if reading:
        parts = [reading["rhythm"]]
        if reading.get("heart_rate") is not None:
            parts.append(f"HR {reading['heart_rate']:g}/min")
        for key, label in (("pr_ms", "PR"), ("qrs_ms", "QRS"), ("qt_ms", "QT"), ("qtc_bazett_ms", "QTc(B)")):
            if reading.get(key) is not None:
                parts.append(f"{label} {reading[key]:g} ms")
        if reading.get("reason"):
            parts.append(f"reason: {reading['reason']}")
        print("  " + ", ".join(parts))
    if record.get("note"):
        print(f"  {record['note']}")
    evidence = record.get("evidence") or []
    if not evidence and not record.get("note"):
        print("  no evidence")
    for e in evidence:
        item = Evidence.model_validate(e)
        mark = "!" if item.abnormal else " "
        print(f"  {mark} {item.cite()}")


def _run(paths: list[str], as_json: bool, allow_recordings: bool, make_record: Callable[[_Input], dict]) -> None:
    inputs = resolve_inputs(paths, allow_recordings)
    failures = 0
    for item in inputs:
        try:
            record = make_record(item)
        except MedfuseError as e:
            if len(inputs) == 1:
                raise
            failures += 1
            print(f"medfuse: error: {e}", file=sys.stderr)
            if as_json:
                print(json.dumps({"path": str(item.path), "error": str(getattr(e, "problem", e))}, ensure_ascii=False))
            continue
        if as_json:
            print(json.dumps(record, ensure_ascii=False))
        else:
            _print_human(record)
        sys.stdout.flush()
    if failures:
        raise typer.Exit(2)


_PATHS_HELP = "Case folders, folders of cases (cohorts) or glob patterns."
_JSON_HELP = "One JSON object per input, one per line (JSON Lines), each with its 'path'."


@interpret_app.command("ecg")
def interpret_ecg_cmd(
    paths: list[str] = typer.Argument(..., help=_PATHS_HELP + " Also WFDB records (.hea or record name), "
                                                 "DICOM waveform ECGs (.dcm) and folders of them."),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Rhythm, heart rate, intervals, ST/T per lead, Q waves, LVH voltage and signal quality."""
    _run(paths, as_json, True, _ecg_record)


@interpret_app.command("labs")
def interpret_labs_cmd(
    paths: list[str] = typer.Argument(..., help=_PATHS_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Lab flags (L/H/critical) against the case's own reference range, else the catalogue's."""
    _run(paths, as_json, False, lambda item: _case_record(item, _labs_reader))


@interpret_app.command("vitals")
def interpret_vitals_cmd(
    paths: list[str] = typer.Argument(..., help=_PATHS_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Vital-sign readings, SIRS/qSOFA-style screens and hypertension stage."""
    _run(paths, as_json, False, lambda item: _case_record(item, _vitals_reader))


@interpret_app.command("case")
def interpret_case_cmd(
    paths: list[str] = typer.Argument(..., help=_PATHS_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """All evidence of each case: demographics, ECG, labs, vitals, CXR findings, genomics."""
    _run(paths, as_json, False, lambda item: _case_record(item, _all_reader))
