"""`medfuse import fhir`: FHIR R4 Bundles or NDJSON bulk exports into a cohort."""

from __future__ import annotations

from pathlib import Path

import typer

from medfuse.cli.importing import JsonOption, OutOption, OverwriteOption, SkipBadOption, write_and_summarise
from medfuse.io.base import ImportReport


def import_fhir_cmd(
    sources: list[Path] = typer.Argument(..., help="FHIR JSON (Bundle or one resource) / NDJSON files (optionally .gz), "
                                                   "folders (searched recursively) or quoted globs. All files are read "
                                                   "together, so a bulk export split by resource type links up."),
    out: OutOption = ...,
    panel: Path | None = typer.Option(None, "--panel", help="Disease panel YAML for mapping Conditions "
                                                            "(default: the bundled one)."),
    catalogue: Path | None = typer.Option(None, "--catalogue", help="Lab catalogue YAML (default: the bundled one)."),
    overwrite: OverwriteOption = False,
    skip_bad: SkipBadOption = False,
    as_json: JsonOption = False,
) -> None:
    """Import FHIR R4 resources as one case per Encounter (or per Patient without encounters).

    Patient, Observation (labs and vital signs), Condition, DiagnosticReport,
    DocumentReference, Media and ImagingStudy are read; attachments that point at local
    image or ECG files inside the FHIR file's folder are loaded (a reference leading out of
    it is refused). Case and patient ids are hashes of the FHIR ids. Other resource types
    and unusable items are counted.
    """
    from medfuse.io.fhir import import_fhir, read_fhir
    from medfuse.knowledge.labs import load_lab_catalogue
    from medfuse.knowledge.panel import load_panel

    report = ImportReport(source="fhir")
    # Every file is parsed and validated before the first case is written.
    data = read_fhir(sources, report, panel=load_panel(panel), catalogue=load_lab_catalogue(catalogue),
                     skip_bad=skip_bad)
    write_and_summarise(import_fhir(sources, report, data=data), out, report, len(data.cases), overwrite, as_json,
                        sources=sources)
