"""`medfuse diagnose`: one case, a cohort, or the raw files of one encounter."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from medfuse.cli.output_paths import check_output_apart
from medfuse.errors import InputError
from medfuse.model.locate import MODEL_ENV, quiet_transformers, resolve_checkpoint


def diagnose_cmd(
    inputs: list[Path] = typer.Argument(..., help="A case folder, a cohort folder, a FHIR bundle/NDJSON, or the "
                                                  "DICOM/WFDB/image files of one encounter."),
    model: Path | None = typer.Option(None, "--model", "-m", help=f"Checkpoint folder (default: ${MODEL_ENV})."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (one object per case) instead of a summary."),
    lang: str = typer.Option("en", "--lang", help="Language of names, reasoning and report: en or zh."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write results as JSON Lines to this file (batch mode)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="Generated tokens per case (reasoning + boxes)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Cases per fusion pass and generation batch."),
    backend: str | None = typer.Option(None, "--backend",
                                       help="Decoder: torch, llamacpp or auto (default: $MEDFUSE_DECODER, else torch)."),
) -> None:
    """Diagnose a case (or every case of a cohort): diseases, evidence, findings, modality weights, reasoning."""
    from medfuse.io.base import ImportReport
    from medfuse.io.sources import collect_cases

    if lang not in ("en", "zh"):
        raise InputError(None, f"--lang '{lang}': use en or zh")
    if max_new_tokens < 1 or batch_size < 1:
        raise InputError(None, "--max-new-tokens and --batch-size must be at least 1")
    if backend is not None:
        from medfuse.model.llamacpp import BACKENDS, DECODER_ENV

        if backend not in BACKENDS:
            raise InputError(None, f"--backend '{backend}': use {', '.join(BACKENDS)}")
        os.environ[DECODER_ENV] = backend  # read where the model decodes (`MedFuse.generate`)
    if out is not None and out.exists() and out.is_dir():
        raise InputError(out, "is a folder; --out takes a .jsonl file name")
    if out is not None:
        check_output_apart(out, inputs)
    report = ImportReport(source="diagnose")
    cases, total, batch = collect_cases(inputs, report)
    checkpoint = resolve_checkpoint(model)

    from medfuse.model import MedFuse
    from medfuse.model.diagnosis import diagnose_many, diagnose_to_jsonl, format_result, iter_batches

    quiet_transformers()
    loaded = MedFuse.load(checkpoint)
    if out is not None or (batch and as_json):
        n = diagnose_to_jsonl(loaded, cases, out, lang=lang, max_new_tokens=max_new_tokens, batch_size=batch_size,
                              total=total)
        if out is not None:
            print(f"diagnosed {n} case(s) -> {out}", file=sys.stderr)
    else:
        for chunk in iter_batches(cases, batch_size):
            for d in diagnose_many(loaded, chunk, lang=lang, max_new_tokens=max_new_tokens):
                if as_json:
                    print(json.dumps(d.result.model_dump(mode="json"), ensure_ascii=False))
                else:
                    print(format_result(d, lang))
                    print()
    for reason, count in sorted(report.skipped.items()):
        print(f"skipped {count}: {reason}", file=sys.stderr)
