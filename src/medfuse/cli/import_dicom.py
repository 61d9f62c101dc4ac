"""`medfuse import dicom` and `medfuse import image`: chest images into a cohort."""

from __future__ import annotations

from pathlib import Path

import typer

from medfuse.cli.importing import JsonOption, OutOption, OverwriteOption, SkipBadOption, write_and_summarise
from medfuse.errors import InputError
from medfuse.io.base import ImportReport


def import_dicom_cmd(
    sources: list[Path] = typer.Argument(..., help="DICOM files, folders (searched recursively) or quoted globs."),
    out: OutOption = ...,
    overwrite: OverwriteOption = False,
    skip_bad: SkipBadOption = False,
    all_modalities: bool = typer.Option(False, "--all-modalities",
                                        help="Also keep 2-D images that are not radiographs (CT, MR, ... slices)."),
    as_json: JsonOption = False,
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
    write_and_summarise(cases, out, report, len(studies), overwrite, as_json, sources=sources)


def import_image_cmd(
    sources: list[Path] = typer.Argument(..., help="PNG/JPEG/TIFF/BMP files, folders (searched recursively) "
                                                   "or quoted globs."),
    out: OutOption = ...,
    coco: Path | None = typer.Option(None, "--coco", help="COCO annotation JSON (e.g. TBX11K): boxes become "
                                                          "findings on the 0-999 grid."),
    labels_csv: Path | None = typer.Option(None, "--labels-csv", help="NIH ChestX-ray14 style CSV ('Image Index', "
                                                                      "'Finding Labels' with '|' separators)."),
    overwrite: OverwriteOption = False,
    skip_bad: SkipBadOption = False,
    as_json: JsonOption = False,
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
    write_and_summarise(cases, out, report, len(files), overwrite, as_json, sources=sources)
