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

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import typer

from medfuse.errors import MedfuseError

if TYPE_CHECKING:
    from medfuse.io.sources import SourceInput
    from medfuse.record.case import PatientCase
    from medfuse.record.evidence import Evidence

interpret_app = typer.Typer(help="Read cases and recordings into physiological evidence (ECG, labs, vitals).",
                            no_args_is_help=True)


# ---------------------------------------------------------------- one input -> one JSON record

def _ecg_record(item: SourceInput) -> dict:
    """Interpret the ECG of one input: the JSON record (path, reading, evidence)."""
    from medfuse.interpret.ecg import ecg_evidence, interpret_ecg
    from medfuse.io.sources import read_input_ecg

    record: dict = {"path": str(item.path)}
    ecg, sex, case_id = read_input_ecg(item)
    if case_id is not None:
        record["case_id"] = case_id
    if ecg is None:
        record.update(reading=None, evidence=[], note="case has no ECG")
        return record
    reading = interpret_ecg(ecg, sex=sex)
    record["reading"] = reading.model_dump(mode="json")
    record["evidence"] = [e.model_dump(mode="json") for e in ecg_evidence(reading)]
    return record


def _case_record(reader: Callable[[PatientCase], list[Evidence]]) -> Callable[[SourceInput], dict]:
    """The record maker for a case interpreter: (path, case id, evidence) of a case folder."""
    def make_record(item: SourceInput) -> dict:
        from medfuse.record.store import read_case

        case = read_case(item.path)
        return {"path": str(item.path), "case_id": case.case_id,
                "evidence": [e.model_dump(mode="json") for e in reader(case)]}

    return make_record


def _labs_reader(case: PatientCase) -> list[Evidence]:
    from medfuse.interpret.labs import interpret_labs

    return interpret_labs(case)


def _vitals_reader(case: PatientCase) -> list[Evidence]:
    from medfuse.interpret.vitals import interpret_vitals

    return interpret_vitals(case)


def _all_reader(case: PatientCase) -> list[Evidence]:
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


def _run(paths: list[str], as_json: bool, ecg_recordings: bool, make_record: Callable[[SourceInput], dict]) -> None:
    from medfuse.io.sources import discover_inputs

    inputs = discover_inputs(paths, ecg_recordings=ecg_recordings)
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


def _add_command(name: str, summary: str, paths_help: str, ecg_recordings: bool,
                 make_record: Callable[[SourceInput], dict]) -> None:
    """Register `medfuse interpret NAME PATH... [--json]`: one record per input."""
    def command(
        paths: list[str] = typer.Argument(..., help=paths_help),
        as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
    ) -> None:
        _run(paths, as_json, ecg_recordings, make_record)

    command.__doc__ = summary
    interpret_app.command(name)(command)


_add_command("ecg", "Rhythm, heart rate, intervals, ST/T per lead, Q waves, LVH voltage and signal quality.",
             _PATHS_HELP + " Also WFDB records (.hea or record name), DICOM waveform ECGs (.dcm) and folders of them.",
             True, _ecg_record)
_add_command("labs", "Lab flags (L/H/critical) against the case's own reference range, else the catalogue's.",
             _PATHS_HELP, False, _case_record(_labs_reader))
_add_command("vitals", "Vital-sign readings, SIRS/qSOFA-style screens and hypertension stage.",
             _PATHS_HELP, False, _case_record(_vitals_reader))
_add_command("case", "All evidence of each case: demographics, ECG, labs, vitals, CXR findings, genomics.",
             _PATHS_HELP, False, _case_record(_all_reader))
