"""PNG/JPEG (and TIFF/BMP) chest images -> CXRImage / PatientCase, with optional labels.

`read_image` reads one still image with Pillow: 8-bit grayscale stays uint8, 16-bit
grayscale PNG/TIFF stays uint16, colour and palette images become 8-bit grayscale
(ITU-R 601 luma, as Pillow's "L" mode), and a JPEG's EXIF orientation is applied.

`import_images` makes one case per image file and can attach labels from two common
public formats:
- a COCO annotation JSON (as TBX11K ships): each box becomes a `Finding` on the
  0-999 grid, several boxes of one category on one image share a finding; an image
  listed in the file without annotations is a known negative (empty findings);
- an NIH ChestX-ray14 style CSV (`Image Index`, `Finding Labels` with `|` separators,
  `No Finding`; optional patient id, age, sex, view and original pixel spacing):
  findings without boxes, and a panel diagnosis where a label names a panel disease
  (e.g. `Pneumonia`).
Annotation-file findings are ground truth, so they go to the case's `labels.findings`
(with `image_index`), never to `CXRImage.findings`, which holds reads supplied *with* the
input; a model fed the case must not see its own targets.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from medfuse.errors import InputError
from medfuse.io.base import (
    ImportReport,
    expand_paths,
    read_index_csv,
    read_or_skip,
    safe_case_id,
)
from medfuse.record.boxes import coco_to_xyxy, pixel_to_grid
from medfuse.record.case import (
    CXRImage,
    Demographics,
    Diagnosis,
    Finding,
    Labels,
    PatientCase,
)
from medfuse.record.store import image_size_guard, read_json

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
_PIL_FORMATS = {"PNG", "JPEG", "MPO", "TIFF", "BMP"}  # MPO: multi-picture JPEG from some cameras
_NO_FINDING = "no finding"


# ---------------------------------------------------------------- one image

def read_image(path: str | Path, report: ImportReport | None = None) -> CXRImage:
    """Read a PNG/JPEG/TIFF/BMP file as a 2-D `CXRImage` (uint8, or uint16 for 16-bit
    grayscale sources; 0 = black). `source` is the file name only.

    Raises `InputError` for a missing file, a file that is not an image, an image that is
    cut short or cannot be decoded, and a multi-frame image (a 3-D stack).
    """
    from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        with image_size_guard(path), Image.open(path) as im:
            fmt = im.format or "unknown"
            if fmt not in _PIL_FORMATS:
                raise InputError(path, f"unsupported image format {fmt} (PNG, JPEG, TIFF or BMP expected)")
            n_frames = int(getattr(im, "n_frames", 1) or 1)
            if n_frames > 1:
                raise InputError(path, f"image has {n_frames} frames (a 3-D stack); a single 2-D image is expected")
            im.load()
            # Pillow's exif_transpose returns a copy even when there is nothing to turn, so
            # the note goes by the orientation tag itself (1 = upright).
            rotated = fmt in ("JPEG", "MPO") and im.getexif().get(ExifTags.Base.Orientation, 1) not in (1, None)
            oriented = ImageOps.exif_transpose(im) if rotated else im
            if rotated and report is not None:
                report.note("JPEG EXIF orientation applied")
            pixels = _gray_array(oriented, path, report)
    except InputError:
        raise
    except UnidentifiedImageError:
        raise InputError(path, "not an image file (PNG, JPEG, TIFF or BMP expected)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        # Pillow reports a short file as OSError('image file is truncated ...').
        problem = "image file is cut short" if "truncat" in str(e).lower() else f"cannot decode image ({e.__class__.__name__})"
        raise InputError(path, problem) from None
    return CXRImage(pixels=pixels, source=path.name)


def _gray_array(im, path: Path, report: ImportReport | None) -> np.ndarray:
    """2-D uint8/uint16 pixels from a loaded Pillow image of any mode."""
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode.startswith("I;16"):
        # 'I;16B' arrives big-endian: astype gives native uint16 with the same values.
        return np.asarray(im).astype(np.uint16)
    if mode in ("I", "F"):
        values = np.asarray(im)
        if mode == "I" and values.size and values.min() >= 0 and values.max() <= 65535:
            return values.astype(np.uint16)  # how Pillow opens many 16-bit grayscale files
        # 32-bit integer or float data: no display range in the file, use its own range.
        if report is not None:
            report.note(f"{mode}-mode image scaled to 16 bits by its value range")
        lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        scaled = np.zeros(values.shape) if hi <= lo else (np.nan_to_num(values, nan=lo) - lo) / (hi - lo)
        return np.rint(scaled * 65535).astype(np.uint16)
    if mode not in ("1", "P", "PA", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        raise InputError(path, f"unsupported image mode {mode}")
    if report is not None and mode not in ("1", "LA", "La"):
        report.note("colour image converted to grayscale")
    # Pillow's 'L' conversion applies the palette and ITU-R 601 luma; alpha is dropped.
    return np.asarray(im.convert("L"), dtype=np.uint8).copy()


# ---------------------------------------------------------------- COCO annotations

@dataclass
class CocoImage:
    file_name: str
    width: float | None
    height: float | None
    boxes: dict[str, list[list[float]]] = field(default_factory=dict)  # label -> [xyxy pixel boxes]


@dataclass
class CocoIndex:
    """A COCO file reduced to what the importer needs, looked up by image path."""

    source: str  # the JSON file's name, for provenance
    by_path: dict[str, CocoImage]  # posix file_name as in the JSON
    by_name: dict[str, list[CocoImage]]  # file base name -> entries

    def find(self, path: Path) -> CocoImage | None:
        """The entry whose file_name is a suffix of `path`, else the only one of that name."""
        parts = path.as_posix().split("/")
        for k in range(len(parts)):
            hit = self.by_path.get("/".join(parts[k:]))
            if hit is not None:
                return hit
        same_name = self.by_name.get(path.name, [])
        return same_name[0] if len(same_name) == 1 else None


def load_coco(path: str | Path, report: ImportReport) -> CocoIndex:
    """Read a COCO detection JSON (images, annotations, categories) into a `CocoIndex`.

    Raises `InputError` when the file is missing, not JSON or lacks the COCO lists;
    annotations that cannot be used (no or invalid bbox, unknown image or category) are
    skipped one by one and counted in `report`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise InputError(path, "not a COCO annotation file (needs 'images' and 'annotations' lists)")
    categories: dict[Any, str] = {}
    for c in data.get("categories") or []:
        if isinstance(c, dict) and "id" in c and c.get("name"):
            categories[c["id"]] = str(c["name"])
    images: dict[Any, CocoImage] = {}
    for entry in data["images"]:
        if not isinstance(entry, dict) or "id" not in entry or not entry.get("file_name"):
            report.skip("COCO image entry without id or file_name")
            continue
        images[entry["id"]] = CocoImage(
            file_name=_posix_name(entry["file_name"]),
            width=_positive(entry.get("width")),
            height=_positive(entry.get("height")),
        )
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            report.skip("COCO annotation is not an object")
            continue
        image = images.get(ann.get("image_id"))
        if image is None:
            report.skip("COCO annotation for an unknown image")
            continue
        label = categories.get(ann.get("category_id"))
        if label is None:
            report.skip("COCO annotation with an unknown category")
            continue
        bbox = ann.get("bbox")
        if not isinstance(bbox, list | tuple) or len(bbox) != 4:
            report.skip("COCO annotation without a box")
            continue
        try:
            xyxy = coco_to_xyxy(bbox)
        except (TypeError, ValueError):
            report.skip("COCO box invalid (negative size or not numbers)")
            continue
        image.boxes.setdefault(label, []).append(xyxy)
    by_name: dict[str, list[CocoImage]] = defaultdict(list)
    for image in images.values():
        by_name[PurePosixPath(image.file_name).name].append(image)
    return CocoIndex(source=path.name, by_path={i.file_name: i for i in images.values()}, by_name=dict(by_name))


def _posix_name(file_name: Any) -> str:
    name = PurePosixPath(str(file_name).replace("\\", "/")).as_posix()
    while name.startswith(("./", "/")):
        name = name[1:] if name.startswith("/") else name[2:]
    return name


def _positive(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if v > 0 else None


def _coco_findings(entry: CocoImage, width: int, height: int, report: ImportReport) -> list[Finding]:
    """Grid-box findings of one image. Boxes are normalised by the size the annotators saw
    (the COCO entry's width/height), so they stay right on a resized copy of the image."""
    ref_w, ref_h = entry.width or width, entry.height or height
    if (ref_w, ref_h) != (width, height) and entry.boxes:
        report.note("image size differs from its COCO entry (boxes scaled)")
    findings = []
    for label, boxes in entry.boxes.items():
        grid = []
        for xyxy in boxes:
            x1, y1, x2, y2 = xyxy
            if x2 <= 0 or y2 <= 0 or x1 >= ref_w or y1 >= ref_h:
                report.skip("COCO box outside the image")
                continue
            grid.append(pixel_to_grid(xyxy, ref_w, ref_h))
        if grid:
            findings.append(Finding(label=label, boxes=grid))
    return findings


# ---------------------------------------------------------------- NIH-style labels CSV

@dataclass
class CsvRow:
    """What one labels-CSV row says about its image."""

    labels: list[str]
    patient_id: str | None = None
    age: float | None = None
    sex: str | None = None
    view: str | None = None
    original_size: tuple[float, float] | None = None  # width, height
    original_spacing: tuple[float, float] | None = None  # x, y in mm


@dataclass
class LabelsTable:
    source: str  # the CSV file's name, for provenance
    rows: dict[str, CsvRow]  # image file name -> row


def load_labels_csv(path: str | Path, report: ImportReport) -> LabelsTable:
    """Read an NIH ChestX-ray14 style CSV into a `LabelsTable` keyed by image file name.

    Needs `Image Index` and `Finding Labels`; uses `Patient ID`, `Patient Age`,
    `Patient Gender`, `View Position` and the original size and pixel spacing columns when
    present. Raises `InputError` for a missing/unreadable file or missing columns;
    duplicated image rows are skipped and counted.
    """
    from medfuse.io.dicom_header import parse_dicom_age

    df = read_index_csv(path, ("Image Index", "Finding Labels"))
    rows: dict[str, CsvRow] = {}
    for rec in df.to_dict("records"):
        name = str(rec["Image Index"]).strip()
        if not name:
            report.skip("labels-CSV row without an image name")
            continue
        if name in rows:
            report.skip("labels-CSV row for an image already listed")
            continue
        labels = [t.strip() for t in str(rec["Finding Labels"]).split("|") if t.strip()]
        sex = str(rec.get("Patient Gender", "")).strip().upper()[:1]
        rows[name] = CsvRow(
            labels=[t for t in labels if t.lower() != _NO_FINDING],
            patient_id=str(rec.get("Patient ID", "")).strip() or None,
            age=parse_dicom_age(str(rec.get("Patient Age", ""))),
            sex=sex if sex in ("F", "M", "O") else None,
            view=str(rec.get("View Position", "")).strip().upper() or None,
            original_size=_pair(rec, "OriginalImage[Width", "Height]"),
            original_spacing=_pair(rec, "OriginalImagePixelSpacing[x", "y]"),
        )
    return LabelsTable(source=path.name, rows=rows)


def _pair(rec: dict, first: str, second: str) -> tuple[float, float] | None:
    a, b = _positive(rec.get(first)), _positive(rec.get(second))
    return (a, b) if a is not None and b is not None else None


def _label_name(text: str) -> str:
    # NIH writes multi-word labels with underscores ('Pleural_Thickening').
    return " ".join(text.replace("_", " ").split())


# ---------------------------------------------------------------- importing

def find_image_files(paths: Iterable[str | Path], report: ImportReport) -> list[Path]:
    """Image files named by `paths`: named files as given (any suffix), folders searched
    recursively for image suffixes (other files there are counted, not read), and globs."""
    files: list[Path] = []
    seen: set[Path] = set()
    for s in paths:
        in_folder = Path(s).is_dir()
        for p in expand_paths([s]):
            if p in seen:
                continue
            seen.add(p)
            if in_folder and p.suffix.lower() not in IMAGE_SUFFIXES:
                report.skip("file in folder is not an image")
                continue
            files.append(p)
    return files


def import_images(paths: Iterable[str | Path], report: ImportReport, coco: str | Path | CocoIndex | None = None,
                  labels_csv: str | Path | LabelsTable | None = None, skip_bad: bool = False,
                  files: list[Path] | None = None) -> Iterator[PatientCase]:
    """One `PatientCase` per image file named by `paths` (files, folders, globs).

    `case_id` is the file stem. With `coco`, boxes from a COCO JSON become findings on
    the 0-999 grid; with `labels_csv`, NIH-style labels become findings (no boxes),
    panel diagnoses, demographics, view and pixel spacing. An image that cannot be read
    raises `InputError` (with `skip_bad`: skipped and counted). `coco` and `labels_csv`
    may also be already loaded (`load_coco`, `load_labels_csv`), and `files` the result of
    `find_image_files` (the CLI passes all three, so it checks them before writing).
    """
    from medfuse.knowledge.panel import load_panel

    coco_index = load_coco(coco, report) if isinstance(coco, str | Path) else coco
    labels_table = load_labels_csv(labels_csv, report) if isinstance(labels_csv, str | Path) else labels_csv
    panel = load_panel()
    for path in files if files is not None else find_image_files(paths, report):
        image = read_or_skip(report, skip_bad, "unreadable image file", read_image, path, report)
        if image is None:
            continue
        width, height = int(image.width or 0), int(image.height or 0)
        findings: list[Finding] = []
        diagnoses: list[Diagnosis] = []
        labelled = False
        demographics = Demographics()
        patient_id = None

        if coco_index is not None:
            entry = coco_index.find(path)
            if entry is None:
                report.note("image not in the COCO file")
            else:
                labelled = True
                findings.extend(_coco_findings(entry, width, height, report))

        if labels_table is not None:
            row = labels_table.rows.get(path.name)
            if row is None:
                report.note("image not in the labels CSV")
            else:
                labelled = True
                boxed = {f.label.lower() for f in findings}
                for raw_label in row.labels:
                    label = _label_name(raw_label)
                    if label.lower() not in boxed:  # a COCO box already says more
                        findings.append(Finding(label=label))
                    disease = panel.lookup(label)
                    if disease is not None and all(d.name != disease.name for d in diagnoses):
                        diagnoses.append(Diagnosis(name=disease.name))
                demographics = Demographics(age=row.age, sex=row.sex)
                patient_id = safe_case_id(row.patient_id) if row.patient_id else None
                if row.view:
                    image.view = row.view
                if row.original_size and row.original_spacing and width and height:
                    # The CSV spacing is for the original scan; a resized copy has
                    # proportionally larger pixels. Stored as (row, column) like DICOM.
                    (orig_w, orig_h), (sx, sy) = row.original_size, row.original_spacing
                    image.pixel_spacing_mm = (sy * orig_h / height, sx * orig_w / width)

        yield PatientCase(
            case_id=safe_case_id(path.stem),
            patient_id=patient_id,
            demographics=demographics,
            cxr=[image],
            labels=Labels(findings=findings, diagnoses=diagnoses) if labelled else None,
            provenance={
                "importer": "image",
                "source": path.name,
                **({"coco": coco_index.source} if coco_index is not None else {}),
                **({"labels_csv": labels_table.source} if labels_table is not None else {}),
            },
        )
