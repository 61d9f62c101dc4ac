"""`medfuse import dicom` and `medfuse import image`: chest images into a cohort."""

from __future__ import annotations

from pathlib import Path

import typer

from medfuse.cli.app import import_app
from medfuse.cli.importing import print_summary, run_import
from medfuse.errors import InputError
from medfuse.io.base import ImportReport


@import_app.command("dicom")
def import_dicom_cmd(
    sources: list[Path] = typer.Argument(..., help="DICOM files, folders (searched recursively) or quoted globs."),
    out: Path = typer.Option(..., "--out", "-o", help="Cohort folder to write the cases into."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace cases already in the cohort."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count unreadable files instead of stopping."),
    all_modalities: bool = typer.Option(False, "--all-modalities",
                                        help="Also keep 2-D images that are not radiographs (CT, MR, ... slices)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Import DICOM chest radiographs (and DICOM ECGs of the same study) as one case per study.

    Pixels are made display-ready (modality LUT, VOI LUT/window, MONOCHROME1 inverted);
    compressed transfer syntaxes are decoded with the pylibjpeg plugins. Case and patient
    ids are hashes of the Study Instance UID and Patient ID.
    """
    from medfuse.io.dicom import find_dicom_studies, import_dicom

    report = ImportReport(source="dicom")
    # The header pass checks every named file before anything is written.
    studies = find_dicom_studies(sources, report, skip_bad=skip_bad)
    if not studies:
        raise InputError(sources[0], "no readable DICOM files found")
    cases = import_dicom(sources, report, skip_bad=skip_bad, all_modalities=all_modalities, studies=studies)
    run_import(cases, out, report, total=len(studies), overwrite=overwrite)
    print_summary(report, as_json=as_json)


@import_app.command("image")
def import_image_cmd(
    sources: list[Path] = typer.Argument(..., help="PNG/JPEG/TIFF/BMP files, folders (searched recursively) "
                                                   "or quoted globs."),
    out: Path = typer.Option(..., "--out", "-o", help="Cohort folder to write the cases into."),
    coco: Path | None = typer.Option(None, "--coco", help="COCO annotation JSON (e.g. TBX11K): boxes become "
                                                          "findings on the 0-999 grid."),
    labels_csv: Path | None = typer.Option(None, "--labels-csv", help="NIH ChestX-ray14 style CSV ('Image Index', "
                                                                      "'Finding Labels' with '|' separators)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace cases already in the cohort."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip and count unreadable images instead of stopping."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Import chest X-ray image files as one case per image, with optional COCO boxes or NIH labels."""
    from medfuse.io.image import find_image_files, import_images, load_coco, load_labels_csv

    report = ImportReport(source="image")
    files = find_image_files(sources, report)
    if not files:
        raise InputError(sources[0], "no image files found")
    # Read the label files before writing anything: a bad one stops the run at once.
    coco_index = load_coco(coco, report) if coco is not None else None
    labels_table = load_labels_csv(labels_csv, report) if labels_csv is not None else None
    cases = import_images(sources, report, coco=coco_index, labels_csv=labels_table, skip_bad=skip_bad, files=files)
    run_import(cases, out, report, total=len(files), overwrite=overwrite)
    print_summary(report, as_json=as_json)
