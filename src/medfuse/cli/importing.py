"""What the `medfuse import ...` commands share: their common options, and writing the
imported cases into the cohort folder (`medfuse.io.cohort.write_cohort`) followed by
the summary."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated

import typer

from medfuse.errors import InputError
from medfuse.io.base import ImportReport
from medfuse.io.cohort import ALREADY_IN_COHORT
from medfuse.record.case import PatientCase

OutOption = Annotated[Path, typer.Option("--out", "-o", help="Cohort folder to write the cases into.")]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace cases already in the cohort.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object.")]
SkipBadOption = Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable files and implausible values "
                                                                "(listed in the summary) instead of stopping.")]


def write_and_summarise(cases: Iterable[PatientCase], out: Path, report: ImportReport, total: int | None,
                        overwrite: bool, as_json: bool, sources: Sequence[Path] = ()) -> None:
    """Write `cases` into the cohort `out`, then print the import summary (one JSON
    object with `as_json`, else tables on the console).

    `out` must lie apart from the `sources` (a cohort written among its inputs would be
    read back as input by the next import). An import that writes no case at all (every
    file skipped, nothing usable in the input) is an error naming the first source, unless
    its cases were already in the cohort: a run that imports nothing must not look like a
    success.
    """
    from medfuse.cli.output_paths import check_output_apart
    from medfuse.io.cohort import import_summary, write_cohort

    check_output_apart(out, sources)
    source = sources[0] if sources else None
    write_cohort(cases, out, report, total=total, overwrite=overwrite)
    if report.cases_written == 0 and not report.skipped.get(ALREADY_IN_COHORT):
        raise InputError(source, f"no case imported ({_skip_digest(report)})")
    if as_json:
        print(json.dumps(report.as_dict(), ensure_ascii=False))
        return
    from rich.console import Console

    Console().print(import_summary(report))


def _skip_digest(report: ImportReport) -> str:
    """The largest skip reasons in a few words, for the one-line error."""
    if report.skipped_files:
        path, problem = report.skipped_files[0]
        more = f" and {len(report.skipped_files) - 1} more" if len(report.skipped_files) > 1 else ""
        return f"skipped {path}: {problem}{more}"
    if not report.skipped:
        return "the input holds no usable data"
    top = sorted(report.skipped.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
    return "skipped: " + "; ".join(f"{reason} x{count}" for reason, count in top)
