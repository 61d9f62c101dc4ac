"""`medfuse explain`: why the disease head gave one case its probabilities."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from medfuse.errors import InputError
from medfuse.model.locate import MODEL_ENV, quiet_transformers, resolve_checkpoint
from medfuse.record.store import check_output_apart


def explain_cmd(
    case: Path = typer.Argument(..., help="A case folder (as `medfuse diagnose` takes)."),
    model: Path | None = typer.Option(None, "--model", "-m", help=f"Checkpoint folder (default: ${MODEL_ENV})."),
    as_json: bool = typer.Option(False, "--json", help="Print the explanation as JSON instead of a summary."),
    html: Path | None = typer.Option(None, "--html", help="Also write a self-contained HTML page here (atomically)."),
    disease: list[str] | None = typer.Option(None, "--disease", "-d",
                                             help="Explain this disease too (name or key; repeatable)."),
) -> None:
    """Attribution, saliency, modality ablation and counterfactuals for the disease head (no text generation)."""
    from medfuse.io.base import ImportReport
    from medfuse.io.sources import collect_cases

    if not case.is_dir():
        raise InputError(case, "not a case folder" if case.exists() else "no such file or folder")
    if html is not None:
        if html.exists() and html.is_dir():
            raise InputError(html, "is a folder; --html takes a file name")
        check_output_apart(html, [case], flag="--html")
    cases, total, batch = collect_cases([case], ImportReport(source="explain"))
    if batch or total != 1:
        raise InputError(case, "is a cohort folder; explain takes one case folder")
    patient = next(iter(cases))
    checkpoint = resolve_checkpoint(model)

    from medfuse.explain import explain_case, write_explanation_html
    from medfuse.explain.summary import format_explanation
    from medfuse.model import MedFuse

    quiet_transformers()
    loaded = MedFuse.load(checkpoint)
    explanation = explain_case(loaded, patient, diseases=disease or ())
    if html is not None:
        write_explanation_html(html, explanation, patient)
        print(f"wrote {html}", file=sys.stderr)
    if as_json:
        print(explanation.model_dump_json(indent=1))
    else:
        from rich.console import Console

        Console(highlight=False, soft_wrap=True).print(format_explanation(explanation), markup=False)
