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

SplitOption = typer.Option(None, "--split", help="Split name stored on every case (provenance 'split'), e.g. dev or "
                                                 "heldout; default: the labels CSV's 'split' column, if any.")


def _import(kind: str, sources: list[Path], out: Path, overwrite: bool, as_json: bool, **options) -> None:
    """Open the research set with the library's one entry point, then write and summarise."""
    from medfuse.io.real_sets import open_real_set

    opened = open_real_set(kind, sources, **options)
    write_and_summarise(opened.cases, out, opened.report, opened.total, overwrite, as_json, sources=sources)


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
    _import("cinc", sources, out, overwrite, as_json, labels=labels, split=split, skip_bad=skip_bad)


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
    _import("nih-cxr", sources, out, overwrite, as_json, labels=labels, boxes=boxes, split=split, skip_bad=skip_bad)


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
    _import("ieee8023", sources, out, overwrite, as_json, labels=labels, boxes=boxes, split=split, skip_bad=skip_bad,
            exclude_noncommercial=exclude_noncommercial)


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
    _import("kermany", sources, out, overwrite, as_json, labels=labels, split=split, skip_bad=skip_bad)
