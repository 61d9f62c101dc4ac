"""`medfuse import mimic-iv`: one case per MIMIC-IV admission into a cohort folder."""

from __future__ import annotations

from pathlib import Path

import typer

from medfuse.cli.importing import JsonOption, OutOption, OverwriteOption, SkipBadOption, write_and_summarise
from medfuse.io.base import ImportReport


def import_mimic_cmd(
    root: Path = typer.Argument(..., help="MIMIC-IV release folder (holding hosp/) or its hosp/ folder; "
                                          "tables as .csv.gz or .csv."),
    out: OutOption = ...,
    window_hours: float = typer.Option(24.0, "--window-hours",
                                       help="Keep labs charted up to this many hours after admission."),
    include_ed_labs: bool = typer.Option(False, "--include-ed-labs",
                                         help="Open the lab window at the ED registration time (edregtime) "
                                              "when the admission has one, keeping the labs drawn in the ED."),
    limit: int | None = typer.Option(None, "--limit", help="Import only the first N admissions."),
    panel_file: Path | None = typer.Option(None, "--panel", help="Disease panel YAML (default: the built-in "
                                                                 "nine-disease panel)."),
    overwrite: OverwriteOption = False,
    skip_bad: SkipBadOption = False,
    as_json: JsonOption = False,
) -> None:
    """Import MIMIC-IV hosp tables: one case per admission with demographics, labs and diagnoses.

    Labs: every labevents row charted in the window (by hadm_id, or by subject_id and
    time when hadm_id is empty), with MIMIC's reference range and 'abnormal' flag kept.
    Diagnoses: all ICD-9/ICD-10 codes kept as source codes; those in the panel become
    labels. The summary counts skipped rows by reason and cases per disease.
    """
    from medfuse.io.mimic_iv import count_admissions, import_mimic_iv
    from medfuse.knowledge.panel import load_panel

    panel = load_panel(panel_file)
    report = ImportReport(source="mimic-iv")
    total = count_admissions(root)  # also checks every table's header before any write
    if limit is not None:
        total = min(total, limit)
    cases = import_mimic_iv(root, report, window_hours=window_hours, panel=panel, limit=limit,
                            include_ed_labs=include_ed_labs, skip_bad=skip_bad)
    write_and_summarise(cases, out, report, total, overwrite, as_json, sources=[root])
