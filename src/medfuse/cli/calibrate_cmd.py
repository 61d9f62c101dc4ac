"""`medfuse calibrate CKPT --cohort LABELLED --out CKPT2`: refit the disease head's
temperatures and thresholds for a new site (`medfuse.train.recalibrate`) and print
before / after figures (a table, or `--json`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from medfuse.cli.output_paths import check_output_apart
from medfuse.train.recalibrate import DEFAULT_MIN_POSITIVES


def calibrate_cmd(
    checkpoint: Path = typer.Argument(..., help="Checkpoint folder to recalibrate (read only)."),
    cohort: Path = typer.Option(..., "--cohort", help="Labelled cohort of the new site (case folders with labels, "
                                                      "e.g. from medfuse import mimic-iv or fhir)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder of the recalibrated checkpoint to write."),
    min_positives: int = typer.Option(DEFAULT_MIN_POSITIVES, "--min-positives", min=1,
                                      help="A disease with fewer positive (or negative) cases keeps its calibration."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out checkpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of a table."),
) -> None:
    """Refit per-disease temperatures and thresholds on a site's labelled cohort, without retraining."""
    from medfuse.model.locate import quiet_transformers
    from medfuse.train.recalibrate import recalibrate

    # --overwrite replaces the output folder: it must not be, hold or lie inside an input.
    check_output_apart(out, [checkpoint, cohort])
    quiet_transformers()
    report = recalibrate(checkpoint, cohort, out, min_positives=min_positives, overwrite=overwrite)
    if as_json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        print_report(report)


def _pair(values: list[Any]) -> str:
    def text(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    before, after = values
    return text(before) if before == after else f"{text(before)}→{text(after)}"


def print_report(report: dict[str, Any]) -> None:
    """The recalibration report as rich tables: per disease, then the summary figures."""
    from rich.console import Console
    from rich.table import Table

    # Piped output is not cut to rich's 80-column default: the table needs about 100.
    console = Console(width=None if sys.stdout.isatty() else 120)
    table = Table(title=f"cohort '{report['cohort']}': {report['n_cases']} cases, {report['n_patients']} patients",
                  caption="before→after; assessed: cases with one of the disease's evidence modalities")
    for column in ("disease", "positives", "assessed", "refit", "temperature", "threshold", "F1", "ECE"):
        table.add_column(column, justify="left" if column in ("disease", "refit") else "right", no_wrap=True)
    for key, d in report["per_disease"].items():
        table.add_row(key, str(d["support"]), str(d["assessable_cases"]), "yes" if d["refit"] else "kept",
                      _pair(d["temperature"]), _pair(d["threshold"]), _pair(d["f1"]), _pair(d["ece"]))
    console.print(table)
    for key, why in report["kept"].items():
        console.print(f"kept {key}: {why}")
    summary = Table(title="held-out figures")
    for column in ("", "macro-F1", "micro-F1", "Jaccard", "macro AUROC", "ECE"):
        summary.add_column(column, justify="left" if not column else "right")
    for side in ("before", "after"):
        s = report[side]
        summary.add_row(side, *("-" if s[k] is None else f"{s[k]:.3f}"
                                for k in ("macro_f1", "micro_f1", "jaccard", "macro_auroc", "ece")))
    console.print(summary)
    for side in ("before", "after"):
        console.print(f"{side}: {report[side]['scored_on']}")
    console.print(f"wrote {report['out']}")
