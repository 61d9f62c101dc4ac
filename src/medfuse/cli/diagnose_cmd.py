"""`medfuse diagnose` (one case or a cohort) and `medfuse model init` (an untrained checkpoint)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import typer

from medfuse.cli.app import app
from medfuse.errors import InputError
from medfuse.model.locate import MODEL_ENV, quiet_transformers, resolve_checkpoint

model_app = typer.Typer(help="Build and inspect medfuse model checkpoints.", no_args_is_help=True)
app.add_typer(model_app, name="model")

_FHIR_SUFFIXES = (".json", ".ndjson", ".jsonl")
_WFDB_SUFFIXES = (".hea", ".dat", ".mat")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


# ---------------------------------------------------------------------------- inputs

def _kind(path: Path) -> str:
    """'fhir', 'dicom', 'wfdb' or 'image' for one input file (by suffix, then DICOM magic)."""
    suffix = path.suffix.lower()
    if suffix in _FHIR_SUFFIXES:
        return "fhir"
    if suffix in _WFDB_SUFFIXES:
        return "wfdb"
    if suffix in (".dcm", ".dicom"):
        return "dicom"
    if suffix in _IMAGE_SUFFIXES:
        return "image"
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        raise InputError(path, f"cannot read ({e.__class__.__name__})") from None
    if head[128:132] == b"DICM":
        return "dicom"
    raise InputError(path, "not a case folder, cohort folder, FHIR bundle, DICOM, WFDB or image file")


def _import_files(files: list[Path], skipped: Counter) -> list:
    """Cases from input files: FHIR gives one case per encounter; DICOM, WFDB and image
    files of one patient are merged into ONE case (a file set is one encounter)."""
    from medfuse.io.base import ImportReport

    kinds: dict[str, list[Path]] = {}
    for f in files:
        kinds.setdefault(_kind(f), []).append(f)
    report = ImportReport(source="diagnose")
    cases = []
    if "fhir" in kinds:
        from medfuse.io.fhir import import_fhir

        cases += list(import_fhir(kinds["fhir"], report))
    parts = []
    if "dicom" in kinds:
        from medfuse.io.dicom import import_dicom

        parts += list(import_dicom(kinds["dicom"], report))
    if "wfdb" in kinds:
        from medfuse.io.wfdb import import_wfdb

        parts += list(import_wfdb(kinds["wfdb"], report))
    if "image" in kinds:
        from medfuse.io.image import import_images

        parts += list(import_images(kinds["image"], report))
    skipped.update(report.skipped)
    if parts:
        merged = _merge(parts, skipped)
        if len(cases) == 1:  # one FHIR encounter plus its files
            merged = _merge([cases[0], merged], skipped)
            cases = []
        cases.append(merged)
    if not cases:
        raise InputError(files[0], "no case could be read from the input files")
    return cases


def _merge(parts: list, skipped: Counter):
    """One case from the parts of a file set: all images, the first ECG, the first known
    demographics; everything else from the first part."""
    first = parts[0].model_copy(deep=False)
    ecgs = [p.ecg for p in parts if p.ecg is not None]
    if len(ecgs) > 1:
        skipped["extra ECG recording in the file set (the first is used)"] += len(ecgs) - 1
    demographics = next((p.demographics for p in parts if p.demographics.age is not None or p.demographics.sex), first.demographics)
    return first.model_copy(update={
        "cxr": [img for p in parts for img in p.cxr],
        "ecg": ecgs[0] if ecgs else None,
        "demographics": demographics,
        "labs": [r for p in parts for r in p.labs],
        "vitals": [v for p in parts for v in p.vitals],
        "notes": [n for p in parts for n in p.notes],
        "genomics": [g for p in parts for g in p.genomics],
    })


def collect_cases(inputs: list[Path], skipped: Counter) -> tuple[Iterator, int, bool]:
    """(cases, count, batch?) for the CLI inputs. A cohort folder is read lazily; an
    unreadable case folder inside it is skipped and counted, not fatal."""
    from medfuse.record.store import CASE_FILE, iter_case_folders, read_case

    for p in inputs:
        if not p.exists():
            raise InputError(p, "no such file or folder")
    if len(inputs) == 1 and inputs[0].is_dir():
        folder = inputs[0]
        if (folder / CASE_FILE).is_file():
            return iter([read_case(folder)]), 1, False
        folders = list(iter_case_folders(folder))
        if not folders:
            raise InputError(folder, "no case folders (case.json) here; give a case folder, a cohort folder or input files")

        def read_all() -> Iterator:
            for f in folders:
                try:
                    yield read_case(f)
                except InputError as e:
                    skipped[f"unreadable case folder ({e.problem})"] += 1

        return read_all(), len(folders), True
    if any(p.is_dir() for p in inputs):
        bad = next(p for p in inputs if p.is_dir())
        raise InputError(bad, "give one case or cohort folder, or several input files, not both")
    cases = _import_files(inputs, skipped)
    return iter(cases), len(cases), len(cases) > 1


# ---------------------------------------------------------------------------- commands

@app.command("diagnose")
def diagnose_cmd(
    inputs: list[Path] = typer.Argument(..., help="A case folder, a cohort folder, a FHIR bundle/NDJSON, or the "
                                                  "DICOM/WFDB/image files of one encounter."),
    model: Path | None = typer.Option(None, "--model", "-m", help=f"Checkpoint folder (default: ${MODEL_ENV})."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (one object per case) instead of a summary."),
    lang: str = typer.Option("en", "--lang", help="Language of names, reasoning and report: en or zh."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write results as JSON Lines to this file (batch mode)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="Generated tokens per case (reasoning + boxes)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Cases per fusion pass and generation batch."),
) -> None:
    """Diagnose a case (or every case of a cohort): diseases, evidence, findings, modality weights, reasoning."""
    if lang not in ("en", "zh"):
        raise InputError(None, f"--lang '{lang}': use en or zh")
    if max_new_tokens < 1 or batch_size < 1:
        raise InputError(None, "--max-new-tokens and --batch-size must be at least 1")
    if out is not None and out.exists() and out.is_dir():
        raise InputError(out, "is a folder; --out takes a .jsonl file name")
    skipped: Counter = Counter()
    cases, total, batch = collect_cases(inputs, skipped)
    checkpoint = resolve_checkpoint(model)

    from medfuse.model.diagnose import diagnose_many, diagnose_to_jsonl, format_result
    from medfuse.model import MedFuse

    quiet_transformers()
    loaded = MedFuse.load(checkpoint)
    if out is not None or (batch and as_json):
        n = diagnose_to_jsonl(loaded, cases, out, lang=lang, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              total=total)
        if out is not None:
            print(f"diagnosed {n} case(s) -> {out}", file=sys.stderr)
    else:
        from medfuse.model.diagnose import iter_batches

        for chunk in iter_batches(cases, batch_size):
            for d in diagnose_many(loaded, chunk, lang=lang, max_new_tokens=max_new_tokens):
                if as_json:
                    print(json.dumps(d.result.model_dump(mode="json"), ensure_ascii=False))
                else:
                    print(format_result(d, lang))
                    print()
    for reason, count in sorted(skipped.items()):
        print(f"skipped {count}: {reason}", file=sys.stderr)


@model_app.command("init")
def model_init_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint folder to create."),
    config: Path | None = typer.Option(None, "--config", help="Model config YAML (keys of ModelConfig)."),
    tiny: bool = typer.Option(False, "--tiny", help="Use a tiny random 2-layer LLM (tests, quick pipeline checks)."),
    stats_from: Path | None = typer.Option(None, "--stats-from", help="Fit lab/vital statistics on this cohort's "
                                                                      "training split (default: unfitted)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing checkpoint folder."),
) -> None:
    """Build an UNTRAINED checkpoint (random weights) so the diagnose pipeline can be exercised."""
    from medfuse.model.config import ModelConfig
    from medfuse.model import MedFuse

    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise InputError(out, "already exists (use --overwrite to replace it)")
    cfg = ModelConfig.from_yaml(config) if config is not None else ModelConfig()
    stats = None
    if stats_from is not None:
        from medfuse.model.inputs import FeatureStats
        from medfuse.record.store import iter_cohort

        if not stats_from.is_dir():
            raise InputError(stats_from, "not a cohort folder")
        stats = FeatureStats.fit(iter_cohort(stats_from, load_bulk=False, split="train"))
        if stats.n_cases == 0:
            raise InputError(stats_from, "no training-split cases to fit statistics on")
    quiet_transformers()
    model = MedFuse.build(cfg, stats=stats, tiny_llm=tiny)
    model.save(out, overwrite=overwrite)
    print(f"wrote an untrained checkpoint to {out} (llm: {'tiny random' if tiny else cfg.llm}, fusion: {cfg.fusion})")


@model_app.command("info")
def model_info_cmd(checkpoint: Path = typer.Argument(..., help="Checkpoint folder.")) -> None:
    """Print a checkpoint's model card (metadata.json) without loading the weights."""
    card_path = checkpoint / "metadata.json"
    if not card_path.is_file():
        raise InputError(checkpoint, "not a medfuse checkpoint (no metadata.json)")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(card_path, f"invalid JSON ({e.__class__.__name__})") from None
    print(json.dumps(card, indent=2, ensure_ascii=False))
