"""`medfuse import cinc|nih-cxr|ieee8023|kermany`: public ECG and chest X-ray sets into
labelled cohorts (labels mapped by `medfuse.knowledge.label_maps`)."""

from __future__ import annotations

from pathlib import Path

import typer

from medfuse.cli.importing import (
    JsonOption,
    OutOption,
    OverwriteOption,
    SkipBadOption,
    write_and_summarise,
)
from medfuse.errors import InputError
from medfuse.io.base import ImportReport

SplitOption = typer.Option(None, "--split", help="Split name stored on every case (provenance 'split'), e.g. dev or "
                                                 "heldout; default: the labels CSV's 'split' column, if any.")


def _side_file(given: Path | None, sources: list[Path], names: tuple[str, ...], report: ImportReport,
               what: str, required_option: str | None = None) -> Path | None:
    """The side file the user named, else the first of `names` in the one input folder.

    With `required_option` (e.g. '--labels metadata.csv') finding none is an error
    telling the user what to give.
    """
    from medfuse.io.dataset_files import side_file

    if given is not None:
        return given
    found = side_file(sources, names)
    if found is not None:
        report.note(f"{what} found in the input folder: {found.name}")
    elif required_option:
        raise InputError(sources[0], f"no {what}: give {required_option}")
    return found


def import_cinc_cmd(
    sources: list[Path] = typer.Argument(..., help="Challenge records: headers (.hea), .mat files, record names or "
                                                   "folders (searched recursively)."),
    out: OutOption = ...,
    labels: Path | None = typer.Option(None, "--labels", help="Labels CSV: CinC 2017 REFERENCE.csv (record,class) or a "
                                                              "CSV with 'record' and optional 'label', 'split' columns. "
                                                              "Default: labels.csv or REFERENCE.csv in the one input "
                                                              "folder."),
    split: str | None = SplitOption,
    overwrite: OverwriteOption = False,
    skip_bad: SkipBadOption = False,
    as_json: JsonOption = False,
) -> None:
    """Import PhysioNet/CinC Challenge ECGs (2017 single-lead; 2020/2021 12-lead with SNOMED '#Dx:' codes; CPSC 2018).

    Labels map onto the panel where the statement is the disease (AF and flutter -> atrial
    fibrillation; MI/ischaemia -> coronary artery disease), onto ECG findings otherwise (ST
    elevation, bundle branch blocks ...), and set the rhythm class (provenance 'rhythm').
    Unknown codes are kept as non-panel diagnoses and counted.
    """
    from medfuse.io.cinc import (
        LABEL_FILES,
        find_cinc_records,
        import_cinc,
        load_cinc_labels,
    )

    records = find_cinc_records(sources)
    if not records:
        raise InputError(sources[0], "no WFDB records (.hea files) found")
    report = ImportReport(source="cinc")
    labels_csv = _side_file(labels, sources, LABEL_FILES, report, "labels CSV")
    table = load_cinc_labels(labels_csv, report) if labels_csv is not None else None
    cases = import_cinc(sources, report, labels_csv=table, split=split, skip_bad=skip_bad, records=records)
    write_and_summarise(cases, out, report, len(records), overwrite, as_json, sources=sources)


def import_nih_cxr_cmd(
    sources: list[Path] = typer.Argument(..., help="Folders (searched recursively) or image files of NIH ChestX-ray14."),
    out: OutOption = ...,
    labels: Path | None = typer.Option(None, "--labels", help="Data_Entry_2017.csv, or a CSV with 'image' and "
                                                              "'finding_labels' columns. Default: labels.csv or "
                                                              "Data_Entry_2017*.csv in the one input folder."),
    boxes: Path | None = typer.Option(None, "--boxes", help="BBox_List_2017.csv, or a CSV with image, label and "
                                                            "x_orig..h_orig (1024-px) or x..h (stored-image) columns. "
                                                            "Default: bboxes.csv or BBox_List_2017.csv in the folder."),
    split: str | None = SplitOption,
    overwrite: OverwriteOption = False,
    skip_bad: SkipBadOption = False,
    as_json: JsonOption = False,
) -> None:
    """Import NIH ChestX-ray14 images with their 14 labels (as findings; Pneumonia also the panel's pneumonia) and expert boxes on the 0-999 grid."""
    from medfuse.io.dataset_files import index_images
    from medfuse.io.nih_cxr import (
        BOX_FILES,
        LABEL_FILES,
        import_nih_cxr,
        load_nih_tables,
    )

    report = ImportReport(source="nih-cxr")
    labels_csv = _side_file(labels, sources, LABEL_FILES, report, "labels CSV", "--labels Data_Entry_2017.csv")
    boxes_csv = _side_file(boxes, sources, BOX_FILES, report, "boxes CSV")
    tables = load_nih_tables(labels_csv, boxes_csv, report)
    images = index_images(sources, report)
    cases = import_nih_cxr(sources, tables, report, split=split, skip_bad=skip_bad, images=images)
    write_and_summarise(cases, out, report, len(tables.rows), overwrite, as_json, sources=sources)


def import_ieee8023_cmd(
    sources: list[Path] = typer.Argument(..., help="The dataset folder (images searched recursively) or image files."),
    out: OutOption = ...,
    labels: Path | None = typer.Option(None, "--labels", help="metadata.csv (or a CSV with filename, patientid, "
                                                              "finding). Default: labels.csv or metadata.csv in the "
                                                              "one input folder."),
    boxes: Path | None = typer.Option(None, "--lung-boxes", help="Lung-field boxes CSV (filename, label, x, y, w, h in "
                                                                 "the stored image's pixels). Default: lung_boxes.csv "
                                                                 "in the folder."),
    exclude_noncommercial: bool = typer.Option(False, "--exclude-noncommercial",
                                               help="Leave out images licensed for non-commercial use only (CC BY-NC*)."),
    split: str | None = SplitOption,
    overwrite: OverwriteOption = False,
    skip_bad: SkipBadOption = False,
    as_json: JsonOption = False,
) -> None:
    """Import the ieee8023 COVID-19 chest X-ray collection: pneumonia labels with their organism, sex, age, view, labs/vitals, lung-field boxes kept as anatomy."""
    from medfuse.io.dataset_files import index_images
    from medfuse.io.ieee8023 import (
        BOX_FILES,
        LABEL_FILES,
        import_ieee8023,
        load_ieee8023_tables,
    )

    report = ImportReport(source="ieee8023")
    labels_csv = _side_file(labels, sources, LABEL_FILES, report, "metadata CSV", "--labels metadata.csv")
    boxes_csv = _side_file(boxes, sources, BOX_FILES, report, "lung boxes CSV")
    tables = load_ieee8023_tables(labels_csv, boxes_csv, report)
    images = index_images(sources, report)
    cases = import_ieee8023(sources, tables, report, split=split, exclude_noncommercial=exclude_noncommercial,
                            skip_bad=skip_bad, images=images)
    write_and_summarise(cases, out, report, len(tables.rows), overwrite, as_json, sources=sources)


def import_kermany_cmd(
    sources: list[Path] = typer.Argument(..., help="Folders holding NORMAL/ and PNEUMONIA/ (any depth), or a folder "
                                                   "of images with a labels CSV."),
    out: OutOption = ...,
    labels: Path | None = typer.Option(None, "--labels", help="CSV with 'image' and 'label' (NORMAL/PNEUMONIA), optional "
                                                              "'pneumonia_type', 'patient_id', 'split'. Default: "
                                                              "labels.csv in the one input folder; without one, the "
                                                              "class is the image's folder."),
    split: str | None = SplitOption,
    overwrite: OverwriteOption = False,
    skip_bad: SkipBadOption = False,
    as_json: JsonOption = False,
) -> None:
    """Import the Kermany pediatric pneumonia X-rays (NORMAL / PNEUMONIA, bacterial or viral) with patient ids from the file names."""
    from medfuse.io.kermany import (
        LABEL_FILES,
        import_kermany,
        items_from_csv,
        items_from_folders,
    )

    report = ImportReport(source="kermany")
    labels_csv = _side_file(labels, sources, LABEL_FILES, report, "labels CSV")
    if labels_csv is not None:
        items = items_from_csv(labels_csv, sources, report)
    else:
        items = items_from_folders(sources, report)
    if not items:
        raise InputError(sources[0], "no images in NORMAL/ or PNEUMONIA/ folders and no labels CSV")
    cases = import_kermany(items, report, labels_source=labels_csv.name if labels_csv else None, split=split,
                           skip_bad=skip_bad)
    write_and_summarise(cases, out, report, len(items), overwrite, as_json, sources=sources)
