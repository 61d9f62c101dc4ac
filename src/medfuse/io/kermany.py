"""Kermany et al. (2018) pediatric chest X-rays, NORMAL vs PNEUMONIA -> labelled cases.

Two layouts:
- the published folder layout (`chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg`):
  the class is the parent folder, the pneumonia type ('bacteria' / 'virus') and the
  patient come from the file name, the split from a `train`/`test`/`val` folder above;
- a labels CSV (`image`, `label`, optional `pneumonia_type`, `patient_id`, `split`) beside
  a folder of images, as in re-packed copies.

Patients: 'person1_bacteria_1.jpeg' is patient 'person1'; normal images are named
'IM-0115-0001.jpeg' or 'NORMAL2-IM-0115-0001.jpeg', patient 'N-IM-0115' (the normal and
pneumonia series number their patients separately). Labels go through `cxr_labels.yaml`
(`kermany`): pneumonia is the panel's pneumonia, its type a non-panel diagnosis.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from medfuse.errors import InputError
from medfuse.io.base import ImportReport, read_index_csv, read_or_skip, safe_case_id
from medfuse.io.dataset_files import (
    count_unlisted,
    first_column,
    index_images,
    unique_rows,
)
from medfuse.io.image import read_image
from medfuse.knowledge.label_maps import LabelMap, load_label_map, map_labels
from medfuse.knowledge.panel import load_panel
from medfuse.record.case import PatientCase

LABEL_FILES = ("labels.csv",)
CLASSES = ("NORMAL", "PNEUMONIA")
_SPLIT_FOLDERS = {"train", "test", "val", "dev", "heldout"}
_PNEUMONIA_NAME = re.compile(r"^(person\d+)_(bacteria|virus)_", re.IGNORECASE)
_NORMAL_NAME = re.compile(r"^(?:NORMAL2-)?(IM-\d+)-\d+", re.IGNORECASE)


@dataclass(frozen=True)
class KermanyItem:
    """One image and what its folder, name or CSV row say about it."""

    path: Path | None  # None: listed in the CSV but not found
    image: str
    label: str  # 'NORMAL', 'PNEUMONIA', 'PNEUMONIA-bacteria', 'PNEUMONIA-virus'
    patient_id: str | None
    split: str | None


def _from_name(name: str) -> tuple[str | None, str | None]:
    """(pneumonia type, patient id) from a Kermany file name, each None when absent."""
    m = _PNEUMONIA_NAME.match(name)
    if m:
        return m.group(2).lower(), m.group(1).lower()
    m = _NORMAL_NAME.match(name)
    return None, (f"N-{m.group(1).upper()}" if m else None)


def _class_label(cls: str, kind: str | None) -> str:
    return f"PNEUMONIA-{kind}" if cls == "PNEUMONIA" and kind in ("bacteria", "virus") else cls


def items_from_folders(sources: Iterable[str | Path], report: ImportReport) -> list[KermanyItem]:
    """Images under NORMAL/ or PNEUMONIA/ folders; other images are counted, not read."""
    items = []
    for name, path in index_images(sources, report).items():
        cls = path.parent.name.upper()
        if cls not in CLASSES:
            report.skip("image outside a NORMAL or PNEUMONIA folder")
            continue
        kind, patient = _from_name(name)
        split = next((p.name.lower() for p in path.parents if p.name.lower() in _SPLIT_FOLDERS), None)
        items.append(KermanyItem(path, name, _class_label(cls, kind), patient, split))
    return items


def items_from_csv(labels_csv: str | Path, sources: Iterable[str | Path], report: ImportReport) -> list[KermanyItem]:
    """One item per labels-CSV row (its image looked up by name among `sources`).

    Raises `InputError` naming the CSV when it is unreadable or lacks the image or label
    column, or a row's label is neither NORMAL nor PNEUMONIA.
    """
    df = read_index_csv(labels_csv, ("label",))
    image_col = first_column(df, "image", "filename")
    if image_col is None:
        raise InputError(labels_csv, "labels CSV has no 'image' column")
    images = index_images(sources, report)
    items = []
    for rec in unique_rows(df, image_col, report):
        name = rec[image_col]
        cls = rec["label"].strip().upper()
        if cls not in CLASSES:
            raise InputError(labels_csv, f"image {name}: label {rec['label'][:20]!r} is neither NORMAL nor PNEUMONIA")
        name_kind, name_patient = _from_name(name)
        kind = rec.get("pneumonia_type", "").strip().lower() or name_kind
        items.append(KermanyItem(images.get(name), name, _class_label(cls, kind),
                                 rec.get("patient_id", "").strip() or name_patient, rec.get("split", "").strip() or None))
    count_unlisted(images, {item.image for item in items}, report)
    return items


def read_kermany_case(item: KermanyItem, label_map: LabelMap, report: ImportReport, source: str | None,
                      split: str | None = None) -> PatientCase:
    """One labelled case (raises `InputError` for an unreadable image)."""
    image = read_image(item.path, report)
    image.view = "AP"  # the set is anterior-posterior by design (young children)
    mapped = map_labels([item.label], label_map)
    for line in mapped.summary:
        report.note(line)
    case_split = split or item.split
    return PatientCase(
        case_id=safe_case_id(item.path.stem),
        patient_id=f"kermany-{safe_case_id(item.patient_id)}" if item.patient_id else None,
        cxr=[image],
        labels=mapped.labels,
        provenance={
            "importer": "kermany",
            "dataset": "kermany-pediatric-cxr",
            "source": item.path.name,
            **({"labels_csv": source} if source else {}),
            "source_labels": [item.label],
            **({"split": case_split} if case_split else {}),
        },
    )


def import_kermany(items: list[KermanyItem], report: ImportReport, labels_source: str | None = None,
                   split: str | None = None, skip_bad: bool = False) -> Iterator[PatientCase]:
    """One labelled case per item (`items_from_folders` or `items_from_csv`).

    A listed image that is missing or unreadable raises `InputError` naming it; with
    `skip_bad` it is skipped and listed.
    """
    label_map = load_label_map("kermany", panel=load_panel())
    for item in items:
        if item.path is None:
            error = InputError(item.image, f"image listed in {labels_source} not found among the inputs")
            if not skip_bad:
                raise error
            report.skip_file(error, "image listed in the labels CSV is missing")
            continue
        case = read_or_skip(report, skip_bad, "unreadable image file", read_kermany_case, item, label_map, report,
                            labels_source, split)
        if case is not None:
            yield case
