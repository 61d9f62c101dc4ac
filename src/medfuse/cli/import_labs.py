"""`medfuse import labs-csv`: long-format lab CSV files into a cohort."""

from __future__ import annotations

from pathlib import Path

import typer

from medfuse.cli.importing import JsonOption, OutOption, OverwriteOption, SkipBadOption, write_and_summarise
from medfuse.io.base import ImportReport


def import_labs_csv_cmd(
    sources: list[Path] = typer.Argument(..., help="CSV/TSV files (optionally .gz), folders or quoted globs."),
    out: OutOption = ...,
    map_: list[str] = typer.Option([], "--map", help="FIELD=COLUMN, e.g. --map value=Result --map name=Test. "
                                                     "Fields: case_id, name, value, unit, ref_low, ref_high, flag, "
                                                     "time, loinc, fluid, patient_id, age, sex, ref_range."),
    mapping: Path | None = typer.Option(None, "--mapping", help="YAML file of FIELD: COLUMN pairs "
                                                                "(--map pairs override it)."),
    catalogue: Path | None = typer.Option(None, "--catalogue", help="Lab catalogue YAML to map tests and units "
                                                                    "(default: the bundled one)."),
    overwrite: OverwriteOption = False,
    skip_bad: SkipBadOption = False,
    as_json: JsonOption = False,
) -> None:
    """Import lab results (one row per result) as one case per case id.

    Values are parsed ('<0.5' kept as censored, '1,2' as 1.2, text results skipped),
    tests are mapped to the lab catalogue by LOINC or name and converted to its UCUM
    unit; every skipped or converted result is counted in the summary.
    """
    from medfuse.io.labs_csv import LabsCsvMapping, import_labs_csv, read_labs_csv
    from medfuse.knowledge.labs import load_lab_catalogue

    report = ImportReport(source="labs-csv")
    column_map = LabsCsvMapping.from_options(map_, mapping)
    cat = load_lab_catalogue(catalogue)
    # Every file is read and checked before the first case is written.
    cases = read_labs_csv(sources, report, column_map, cat, skip_bad=skip_bad)
    write_and_summarise(import_labs_csv(sources, report, cases=cases), out, report, len(cases), overwrite, as_json,
                        sources=sources)
