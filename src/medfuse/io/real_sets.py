"""One entry point per public research set: a dataset folder (or files) in, labelled cases out.

`open_real_set(kind, sources, ...)` finds the set's side files (labels, boxes) beside the
data when not given, loads and checks them, and returns a `RealSetImport`: the lazily read
cases, the import report they count into, and how many items the set's index lists. The
`medfuse import cinc|nih-cxr|ieee8023|kermany` verbs are thin wrappers around it, and code
that reads a real set in-process (training, benchmarks) should call it too, so a folder is
read the same way everywhere.

Everything that can be checked before the first case is read (an input without records,
a missing labels CSV where the set needs one) raises `InputError` here, before anything is
written.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from medfuse.errors import InputError
from medfuse.io.base import ImportReport
from medfuse.io.dataset_files import index_images, side_file
from medfuse.record.case import PatientCase

REAL_SETS = ("cinc", "nih-cxr", "ieee8023", "kermany")


@dataclass
class RealSetImport:
    """An opened research set: `cases` (read lazily, in index order), the `report` they
    count into, and `total`, the number of records or index rows the set lists."""

    cases: Iterator[PatientCase]
    report: ImportReport
    total: int


def find_side_file(given: Path | None, sources: Sequence[Path], names: tuple[str, ...], report: ImportReport,
                   what: str, required_option: str | None = None) -> Path | None:
    """The side file the user named, else the first of `names` in the one input folder.

    With `required_option` (e.g. '--labels metadata.csv') finding none is an error
    telling the user what to give.
    """
    if given is not None:
        return given
    found = side_file(sources, names)
    if found is not None:
        report.note(f"{what} found in the input folder: {found.name}")
    elif required_option:
        raise InputError(sources[0], f"no {what}: give {required_option}")
    return found


def open_real_set(kind: str, sources: Sequence[str | Path], *, labels: Path | None = None,
                  boxes: Path | None = None, split: str | None = None, skip_bad: bool = False,
                  exclude_noncommercial: bool = False) -> RealSetImport:
    """Open the research set `kind` (one of `REAL_SETS`) at `sources`.

    `labels` / `boxes` name the side files; by default they are looked for at the top of
    the one input folder. `split` is stored on every case (default: the labels CSV's
    `split` column, if any). `exclude_noncommercial` applies to ieee8023 only (images
    licensed CC BY-NC* are left out); `boxes` to nih-cxr (expert boxes) and ieee8023
    (lung-field boxes).
    """
    paths = [Path(s) for s in sources]
    if not paths:
        raise InputError(None, "no input given")
    if kind == "cinc":
        return _open_cinc(paths, labels, split, skip_bad)
    if kind == "nih-cxr":
        return _open_nih_cxr(paths, labels, boxes, split, skip_bad)
    if kind == "ieee8023":
        return _open_ieee8023(paths, labels, boxes, split, skip_bad, exclude_noncommercial)
    if kind == "kermany":
        return _open_kermany(paths, labels, split, skip_bad)
    raise ValueError(f"unknown research set {kind!r} (one of {', '.join(REAL_SETS)})")


def _open_cinc(sources: list[Path], labels: Path | None, split: str | None, skip_bad: bool) -> RealSetImport:
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
    labels_csv = find_side_file(labels, sources, LABEL_FILES, report, "labels CSV")
    table = load_cinc_labels(labels_csv, report) if labels_csv is not None else None
    cases = import_cinc(sources, report, labels_csv=table, split=split, skip_bad=skip_bad, records=records)
    return RealSetImport(cases, report, len(records))


def _open_nih_cxr(sources: list[Path], labels: Path | None, boxes: Path | None, split: str | None,
                  skip_bad: bool) -> RealSetImport:
    from medfuse.io.nih_cxr import (
        BOX_FILES,
        LABEL_FILES,
        import_nih_cxr,
        load_nih_tables,
    )

    report = ImportReport(source="nih-cxr")
    labels_csv = find_side_file(labels, sources, LABEL_FILES, report, "labels CSV", "--labels Data_Entry_2017.csv")
    boxes_csv = find_side_file(boxes, sources, BOX_FILES, report, "boxes CSV")
    tables = load_nih_tables(labels_csv, boxes_csv, report)
    images = index_images(sources, report)
    cases = import_nih_cxr(sources, tables, report, split=split, skip_bad=skip_bad, images=images)
    return RealSetImport(cases, report, len(tables.rows))


def _open_ieee8023(sources: list[Path], labels: Path | None, boxes: Path | None, split: str | None,
                   skip_bad: bool, exclude_noncommercial: bool) -> RealSetImport:
    from medfuse.io.ieee8023 import (
        BOX_FILES,
        LABEL_FILES,
        import_ieee8023,
        load_ieee8023_tables,
    )

    report = ImportReport(source="ieee8023")
    labels_csv = find_side_file(labels, sources, LABEL_FILES, report, "metadata CSV", "--labels metadata.csv")
    boxes_csv = find_side_file(boxes, sources, BOX_FILES, report, "lung boxes CSV")
    tables = load_ieee8023_tables(labels_csv, boxes_csv, report)
    images = index_images(sources, report)
    cases = import_ieee8023(sources, tables, report, split=split, exclude_noncommercial=exclude_noncommercial,
                            skip_bad=skip_bad, images=images)
    return RealSetImport(cases, report, len(tables.rows))


def _open_kermany(sources: list[Path], labels: Path | None, split: str | None, skip_bad: bool) -> RealSetImport:
    from medfuse.io.kermany import (
        LABEL_FILES,
        import_kermany,
        items_from_csv,
        items_from_folders,
    )

    report = ImportReport(source="kermany")
    labels_csv = find_side_file(labels, sources, LABEL_FILES, report, "labels CSV")
    items = items_from_csv(labels_csv, sources, report) if labels_csv is not None else items_from_folders(sources, report)
    if not items:
        raise InputError(sources[0], "no images in NORMAL/ or PNEUMONIA/ folders and no labels CSV")
    cases = import_kermany(items, report, labels_source=labels_csv.name if labels_csv else None, split=split,
                           skip_bad=skip_bad)
    return RealSetImport(cases, report, len(items))
