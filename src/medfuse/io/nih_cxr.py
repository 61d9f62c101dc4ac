"""NIH ChestX-ray14 images with their labels and expert boxes -> labelled `PatientCase`s.

Reads the official files (`Data_Entry_2017*.csv`: `Image Index`, `Finding Labels`,
`Patient ID`, `Patient Age`, `Patient Gender`, `View Position`; `BBox_List_2017.csv`:
`Image Index`, `Finding Label`, `Bbox [x`, `y`, `w`, `h]`) and the same data re-packed
with lower-case columns (`image`, `finding_labels`, `patient_id`, `split`, `orig_width`,
`orig_height`; boxes `image`, `label`, `x_orig`..`h_orig` and/or `x`..`h`).

Boxes: NIH drew them on the released 1024 x 1024 PNGs. A box in those coordinates is
normalised by that size (`orig_width`/`orig_height` when the index gives them), never by
the size of the file on disk, so a copy downscaled to 512 px gets the same 0-999 box. A
box given only in the stored image's pixels (`x`..`h` without `x_orig`) is normalised by
the stored image's size.

Labels go through `cxr_labels.yaml` (`nih_chestxray14`): every NIH label is an image
finding ('Effusion' -> 'pleural effusion'), 'Pneumonia' is also the panel's pneumonia,
'No Finding' is an explicit negative. Ground truth goes to `case.labels`, never onto the
image (a model fed the case must not see its targets).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from medfuse.errors import InputError
from medfuse.io.base import ImportReport, read_index_csv, read_or_skip, safe_case_id
from medfuse.io.dataset_files import (
    count_unlisted,
    first_column,
    index_images,
    number,
    sex_code,
    unique_rows,
)
from medfuse.io.image import read_image
from medfuse.knowledge.label_maps import LabelMap, load_label_map, map_labels
from medfuse.knowledge.panel import load_panel
from medfuse.record.boxes import coco_to_xyxy, pixel_to_grid
from medfuse.record.case import Demographics, Finding, PatientCase

# NIH released every image as a 1024 x 1024 PNG and drew the boxes on those.
NIH_PNG_SIZE = 1024.0
LABEL_FILES = ("labels.csv", "Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
BOX_FILES = ("bboxes.csv", "BBox_List_2017.csv")
_NO_FINDING = "no finding"


@dataclass
class NihRow:
    image: str
    labels: list[str]
    patient_id: str | None = None
    age: float | None = None
    sex: str | None = None
    view: str | None = None
    split: str | None = None
    box_frame: tuple[float, float] = (NIH_PNG_SIZE, NIH_PNG_SIZE)  # the size the boxes were drawn on


@dataclass
class NihBox:
    label: str
    xyxy: list[float]  # pixels
    frame: str  # 'released' (1024-px PNG) or 'stored' (the file on disk)


@dataclass
class NihTables:
    labels_source: str
    rows: list[NihRow]
    boxes_source: str | None = None
    boxes: dict[str, list[NihBox]] = field(default_factory=dict)  # image name -> boxes


def load_nih_labels(path: str | Path, report: ImportReport) -> tuple[str, list[NihRow]]:
    """The rows of an NIH labels CSV (official or re-packed columns, see the module).

    Raises `InputError` naming the file when it is missing, unreadable or has no image or
    labels column; a repeated image row is skipped and counted.
    """
    from medfuse.io.dicom_header import parse_dicom_age

    df = read_index_csv(path, ())
    image_col = first_column(df, "Image Index", "image")
    labels_col = first_column(df, "Finding Labels", "finding_labels")
    if image_col is None or labels_col is None:
        missing = "'Image Index' (or 'image')" if image_col is None else "'Finding Labels' (or 'finding_labels')"
        raise InputError(path, f"labels CSV has no {missing} column")
    pid_col = first_column(df, "Patient ID", "patient_id")
    age_col = first_column(df, "Patient Age", "age")
    sex_col = first_column(df, "Patient Gender", "sex")
    view_col = first_column(df, "View Position", "view")
    rows: list[NihRow] = []
    for rec in unique_rows(df, image_col, report):
        name = rec[image_col]
        width, height = number(rec.get("orig_width", "")), number(rec.get("orig_height", ""))
        rows.append(NihRow(
            image=name,
            labels=[t.strip() for t in str(rec[labels_col]).split("|") if t.strip()],
            # NIH names images '<patient>_<follow-up>.png'; the prefix is the patient.
            patient_id=(str(rec[pid_col]).strip() if pid_col else "") or name.split("_")[0],
            age=parse_dicom_age(str(rec[age_col])) if age_col else None,
            sex=sex_code(rec[sex_col]) if sex_col else None,
            view=(str(rec[view_col]).strip().upper() or None) if view_col else None,
            split=str(rec.get("split", "")).strip() or None,
            box_frame=(width, height) if width and height else (NIH_PNG_SIZE, NIH_PNG_SIZE),
        ))
    return Path(path).name, rows


def load_nih_boxes(path: str | Path, report: ImportReport) -> dict[str, list[NihBox]]:
    """Boxes by image name from `BBox_List_2017.csv` or a re-packed `bboxes.csv`.

    Raises `InputError` naming the file when it lacks the image, label or coordinate
    columns; a row whose numbers do not make a box is skipped and counted.
    """
    df = read_index_csv(path, (), what="boxes CSV")
    image_col = first_column(df, "Image Index", "image")
    label_col = first_column(df, "Finding Label", "label")
    if "Bbox [x" in df.columns:
        columns, frame = ("Bbox [x", "y", "w", "h]"), "released"
    elif "x_orig" in df.columns:
        columns, frame = ("x_orig", "y_orig", "w_orig", "h_orig"), "released"
    else:
        columns, frame = ("x", "y", "w", "h"), "stored"
    for needed in (image_col, label_col, *columns):
        if needed is None or needed not in df.columns:
            what = needed or ("'Image Index' (or 'image')" if image_col is None else "'Finding Label' (or 'label')")
            raise InputError(path, f"boxes CSV has no {what if needed is None else repr(needed)} column")
    boxes: dict[str, list[NihBox]] = {}
    for rec in df.to_dict("records"):
        values = [number(rec[c]) for c in columns]
        if any(v is None for v in values):
            report.skip("box row without four numbers")
            continue
        try:
            xyxy = coco_to_xyxy(values)
        except ValueError:
            report.skip("box with a negative width or height")
            continue
        boxes.setdefault(str(rec[image_col]).strip(), []).append(NihBox(str(rec[label_col]).strip(), xyxy, frame))
    return boxes


def load_nih_tables(labels_csv: str | Path, boxes_csv: str | Path | None, report: ImportReport) -> NihTables:
    """The labels CSV and, when given, the boxes CSV (both checked before any image is read)."""
    source, rows = load_nih_labels(labels_csv, report)
    tables = NihTables(labels_source=source, rows=rows)
    if boxes_csv is not None:
        tables.boxes = load_nih_boxes(boxes_csv, report)
        tables.boxes_source = Path(boxes_csv).name
    return tables


def _grid_box(box: NihBox, row: NihRow, width: int, height: int) -> list[int] | None:
    """The box on the 0-999 grid: normalised by the frame it was drawn in."""
    frame_w, frame_h = row.box_frame if box.frame == "released" else (float(width), float(height))
    x1, y1, x2, y2 = box.xyxy
    if x2 <= 0 or y2 <= 0 or x1 >= frame_w or y1 >= frame_h:
        return None
    return pixel_to_grid(box.xyxy, frame_w, frame_h)


def read_nih_case(row: NihRow, image_path: Path, tables: NihTables, label_map: LabelMap,
                  report: ImportReport, split: str | None = None) -> PatientCase:
    """One labelled case for one NIH image (raises `InputError` for an unreadable image)."""
    image = read_image(image_path, report)
    if row.view:
        image.view = row.view
    mapped = map_labels([t for t in row.labels if t.lower() != _NO_FINDING] or ["No Finding"], label_map)
    for line in mapped.summary:
        report.note(line)
    findings = {f.label: f for f in mapped.labels.findings}
    for box in tables.boxes.get(row.image, []):
        target = label_map.lookup(box.label)
        finding = target.finding if target is not None and target.finding else box.label
        grid = _grid_box(box, row, int(image.width or 0), int(image.height or 0))
        if grid is None:
            report.skip("box outside the image")
            continue
        if finding not in findings:
            # An expert box for a label the NLP-mined labels missed: the box is the better evidence.
            report.note("box for a label the image's labels lack (finding added)")
            findings[finding] = Finding(label=finding)
        findings[finding].boxes.append(grid)
        report.note(f"box: {finding}")
    mapped.labels.findings = list(findings.values())
    case_split = split or row.split
    return PatientCase(
        case_id=safe_case_id(image_path.stem),
        patient_id=f"nih-{safe_case_id(row.patient_id)}" if row.patient_id else None,
        demographics=Demographics(age=row.age, sex=row.sex),
        cxr=[image],
        labels=mapped.labels,
        provenance={
            "importer": "nih-cxr",
            "dataset": "nih-chestxray14",
            "source": image_path.name,
            "labels_csv": tables.labels_source,
            **({"boxes_csv": tables.boxes_source} if tables.boxes_source else {}),
            "source_labels": row.labels,
            **({"unmapped_labels": mapped.unmapped} if mapped.unmapped else {}),
            **({"split": case_split} if case_split else {}),
        },
    )


def import_nih_cxr(sources: Iterable[str | Path], tables: NihTables, report: ImportReport, split: str | None = None,
                   skip_bad: bool = False, images: dict[str, Path] | None = None) -> Iterator[PatientCase]:
    """One labelled case per labels-CSV row whose image is among `sources`.

    A row whose image is missing, or an unreadable image, raises `InputError` naming the
    file; with `skip_bad` it is skipped and listed. Images no row names are counted.
    """
    label_map = load_label_map("nih_chestxray14", panel=load_panel())
    images = images if images is not None else index_images(sources, report)
    count_unlisted(images, {row.image for row in tables.rows}, report)
    for row in tables.rows:
        path = images.get(row.image)
        if path is None:
            error = InputError(row.image, f"image listed in {tables.labels_source} not found among the inputs")
            if not skip_bad:
                raise error
            report.skip_file(error, "image listed in the labels CSV is missing")
            continue
        case = read_or_skip(report, skip_bad, "unreadable image file", read_nih_case, row, path, tables, label_map,
                            report, split)
        if case is not None:
            yield case
