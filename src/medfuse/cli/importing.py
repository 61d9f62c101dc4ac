"""What the `medfuse import ...` commands share: their common options, and writing the
imported cases into the cohort folder (`medfuse.io.cohort.write_cohort`) followed by
the summary."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

import typer

from medfuse.io.base import ImportReport
from medfuse.record.case import PatientCase

OutOption = Annotated[Path, typer.Option("--out", "-o", help="Cohort folder to write the cases into.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace cases already in the cohort.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")]


def write_and_summarise(cases: Iterable[PatientCase], out: Path, report: ImportReport, total: int | None,
                        overwrite: bool, as_json: bool) -> None:
    """Write `cases` into the cohort `out`, then print the import summary (one JSON
    object with `as_json`, else tables on the console)."""
    from medfuse.io.cohort import import_summary, write_cohort

    write_cohort(cases, out, report, total=total, overwrite=overwrite)
    if as_json:
        print(json.dumps(report.as_dict(), ensure_ascii=False))
        return
    from rich.console import Console

    Console().print(import_summary(report))
