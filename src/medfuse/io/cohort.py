"""Imported cases into a cohort folder: atomic case folders, the index, and a summary.

Every importer (`medfuse import ...`, the demo, a notebook) writes through
`write_cohort`, so a cohort built from any source has the same layout and the same
guarantees: no half-written case folder, an index that matches the folders, and a
report of everything skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from tqdm import tqdm

from medfuse.errors import InputError
from medfuse.io.base import ImportReport
from medfuse.record.case import PatientCase
from medfuse.record.store import CASE_FILE, write_case, write_index

ALREADY_IN_COHORT = "case already in the cohort (use --overwrite)"


def write_cohort(cases: Iterable[PatientCase], out: Path, report: ImportReport, total: int | None = None,
                 overwrite: bool = False, quiet: bool = False) -> ImportReport:
    """Write every case from `cases` into `out/<case_id>/`, then rebuild the cohort index.

    A case folder is written atomically; an `InputError` raised by the importer stops the
    run (cases written before it stay complete and indexed) and propagates. A case id seen
    twice in one import, or already in the cohort without `overwrite`, is skipped and
    counted. `total` sizes the progress bar (on stderr; none when `quiet`).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "output exists and is not a folder")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    bar = tqdm(total=total, unit="case", desc=f"import {report.source}", disable=quiet or None, file=sys.stderr)
    try:
        for case in cases:
            if case.case_id in seen:
                report.skip("duplicate case id in this import")
                continue
            seen.add(case.case_id)
            target = out / case.case_id
            if target.exists() and not overwrite and (target / CASE_FILE).exists():
                report.skip(ALREADY_IN_COHORT)
                continue
            write_case(case, target)
            report.cases_written += 1
            if case.labels:
                for name in case.labels.disease_names():
                    report.per_disease[name] += 1
            bar.update(1)
    finally:
        bar.close()
        if report.cases_written:
            write_index(out)
        elif created and not any(out.iterdir()):
            out.rmdir()  # a failed first import leaves nothing behind
    return report


def import_summary(report: ImportReport) -> RenderableType:
    """The import summary for a rich console: cases written, then the skipped, noted and
    per-disease counts, largest first."""
    parts: list[RenderableType] = [f"[bold]{escape(report.source)}[/bold]: {report.cases_written} case(s) written"]
    for title, counter in (("skipped", report.skipped), ("kept with a note", report.notes),
                           ("cases per disease", report.per_disease)):
        if counter:
            table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
            for reason, count in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
                # escape: reasons hold UCUM units such as '[degF]' or 'mm[Hg]', which rich reads as markup.
                table.add_row(f"  {escape(reason)}", str(count))
            parts.append(table)
    if report.skipped_files:
        table = Table(title="skipped files", title_justify="left", show_header=False, box=None, pad_edge=False)
        for path, problem in report.skipped_files:
            table.add_row(f"  {escape(path)}", escape(problem))
        parts.append(table)
    return Group(*parts)
