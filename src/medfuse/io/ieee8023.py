"""ieee8023 covid-chestxray-dataset (`metadata.csv` + images) -> labelled `PatientCase`s.

One case per X-ray row of the metadata (CT rows are counted and left out): the image,
sex and age, view, the few labs and vitals some rows carry (temperature; leukocyte,
neutrophil and lymphocyte counts in 10^9/L; `pO2_saturation`), and the label from the
`finding` column through `cxr_labels.yaml` (`ieee8023`): infectious pneumonias become the
panel's pneumonia and keep their organism as a non-panel diagnosis; ARDS and lipoid
pneumonia are non-panel diagnoses; 'No Finding' is an explicit negative.

Lung-field boxes (`lung_boxes.csv`: filename, label 'Right Lung'/'Left Lung', x, y, w, h
in the stored image's pixels) are anatomy, not lesions: they go to
`provenance['anatomy']` on the 0-999 grid, never to the findings a model is trained to
find. Each image's licence, DOI and URL stay in the provenance for attribution (most
images are CC BY-NC-SA; `exclude_noncommercial` keeps only the others).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medfuse.errors import InputError
from medfuse.io.base import ImportReport, read_index_csv, read_or_skip, safe_case_id
from medfuse.io.dataset_files import (
    count_unlisted,
    index_images,
    number,
    sex_code,
    unique_rows,
)
from medfuse.io.image import read_image
from medfuse.io.labs_common import make_lab_result
from medfuse.knowledge.label_maps import LabelMap, load_label_map, map_labels
from medfuse.knowledge.panel import load_panel
from medfuse.record.boxes import coco_to_xyxy, pixel_to_grid
from medfuse.record.case import Demographics, LabResult, PatientCase, VitalSigns

LABEL_FILES = ("labels.csv", "metadata.csv")
BOX_FILES = ("lung_boxes.csv",)
REQUIRED_COLUMNS = ("filename", "patientid", "finding")
# Cell counts in 10^9/L (the dataset's unit), by the LOINC code of the automated count.
_COUNTS = {"leukocyte_count": ("Leukocytes", "6690-2"), "neutrophil_count": ("Neutrophils", "751-8"),
           "lymphocyte_count": ("Lymphocytes", "731-0")}
_OUTCOMES = ("survival", "intubated", "went_icu", "needed_supplemental_O2")
# The source's `view` spelling -> the DICOM View Position medfuse uses.
_VIEWS = {"PA": "PA", "AP": "AP", "AP SUPINE": "AP", "AP ERECT": "AP", "L": "LATERAL", "LATERAL": "LATERAL"}
# A body temperature outside this range (Cel) is a typo or another unit, not a reading.
_TEMPERATURE_RANGE = (25.0, 45.0)


@dataclass
class Ieee8023Tables:
    metadata_source: str
    rows: list[dict[str, str]]
    boxes_source: str | None = None
    lung_boxes: dict[str, list[tuple[str, list[float]]]] = field(default_factory=dict)  # filename -> (label, xyxy)


def load_ieee8023_tables(metadata_csv: str | Path, boxes_csv: str | Path | None,
                         report: ImportReport) -> Ieee8023Tables:
    """The metadata rows and, when given, the lung boxes by file name.

    Raises `InputError` naming the file when it is missing, unreadable or lacks a needed
    column (metadata: filename, patientid, finding; boxes: filename, label, x, y, w, h).
    A repeated file name is skipped and counted.
    """
    df = read_index_csv(metadata_csv, REQUIRED_COLUMNS, what="metadata CSV")
    tables = Ieee8023Tables(metadata_source=Path(metadata_csv).name, rows=unique_rows(df, "filename", report))
    if boxes_csv is not None:
        bdf = read_index_csv(boxes_csv, ("filename", "label", "x", "y", "w", "h"), what="lung boxes CSV")
        for rec in bdf.to_dict("records"):
            values = [number(rec[c]) for c in ("x", "y", "w", "h")]
            try:
                xyxy = coco_to_xyxy(values) if None not in values else None
            except ValueError:
                xyxy = None
            if xyxy is None:
                report.skip("lung box row without a valid box")
                continue
            tables.lung_boxes.setdefault(rec["filename"].strip(), []).append((rec["label"].strip().lower(), xyxy))
        tables.boxes_source = Path(boxes_csv).name
    return tables


def _labs_and_vitals(row: dict[str, str], report: ImportReport, source: str) -> tuple[list[LabResult], list[VitalSigns]]:
    labs: list[LabResult] = []
    for column, (name, loinc) in _COUNTS.items():
        if number(row.get(column, "")) is None:
            continue
        result = make_lab_result(name, row[column], "10*9/L", loinc=loinc, report=report, source=source,
                                 where=f"image {row['filename']}: {column}")
        if result is not None:
            labs.append(result)
    po2 = number(row.get("pO2_saturation", ""))
    if po2 is not None:
        # The column mixes SpO2 (%) and PaO2 (mm[Hg]) (values from 20 to 340): kept as
        # the source's number without a unit rather than read as either.
        labs.append(LabResult(name="pO2_saturation", value=po2))
        report.note("pO2_saturation kept without a unit (the source mixes SpO2 % and PaO2 mm[Hg])")
    vitals: list[VitalSigns] = []
    temperature = number(row.get("temperature", ""))
    if temperature is not None:
        if _TEMPERATURE_RANGE[0] <= temperature <= _TEMPERATURE_RANGE[1]:
            vitals.append(VitalSigns(temperature=temperature))
        else:
            report.skip("temperature outside 25-45 Cel")
    return labs, vitals


def read_ieee8023_case(row: dict[str, str], image_path: Path, tables: Ieee8023Tables, label_map: LabelMap,
                       report: ImportReport, split: str | None = None) -> PatientCase:
    """One labelled case for one metadata row (raises `InputError` for an unreadable image
    or an implausible lab value)."""
    image = read_image(image_path, report)
    view = _VIEWS.get(" ".join(row.get("view", "").upper().split()))
    if view:
        image.view = view
    findings = [t.strip() for t in row["finding"].split(",") if t.strip()]
    mapped = map_labels(findings or ["(empty finding)"], label_map)
    for line in mapped.summary:
        report.note(line)
    labs, vitals = _labs_and_vitals(row, report, tables.metadata_source)
    if row.get("clinical_notes", "").strip():
        # Free-text case descriptions often name the diagnosis: not a model input here.
        report.note("clinical notes not imported (the text often names the diagnosis)")
    anatomy: dict[str, Any] = {}
    width, height = int(image.width or 0), int(image.height or 0)
    for label, xyxy in tables.lung_boxes.get(row["filename"], []):
        x1, y1, x2, y2 = xyxy
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            report.skip("lung box outside the image")
            continue
        anatomy.setdefault(label, []).append(pixel_to_grid(xyxy, width, height))
        report.note(f"anatomy box: {label}")
    age = number(row.get("age", ""))
    outcomes = {k: row[k].strip() for k in _OUTCOMES if row.get(k, "").strip()}
    offset = number(row.get("offset", ""))
    case_split = split or row.get("split", "").strip() or None
    return PatientCase(
        case_id=safe_case_id(image_path.stem),
        patient_id=f"ieee8023-{safe_case_id(row['patientid'])}" if row["patientid"].strip() else None,
        demographics=Demographics(age=age if age is not None and 0 <= age <= 130 else None,
                                  sex=sex_code(row.get("sex"))),
        cxr=[image],
        labs=labs,
        vitals=vitals,
        labels=mapped.labels,
        provenance={
            "importer": "ieee8023",
            "dataset": "ieee8023-covid-chestxray",
            "source": image_path.name,
            "labels_csv": tables.metadata_source,
            "source_labels": findings,
            **({"unmapped_labels": mapped.unmapped} if mapped.unmapped else {}),
            **({"split": case_split} if case_split else {}),
            **({"days_since_symptom_onset": offset} if offset is not None else {}),
            **({"outcomes": outcomes} if outcomes else {}),
            # Lung fields: anatomy for locating findings, not findings themselves.
            **({"anatomy": {"image_index": 0, "source": tables.boxes_source, "boxes": anatomy}} if anatomy else {}),
            "license": row.get("license", "").strip() or None,
            **{k: row[k].strip() for k in ("doi", "url") if row.get(k, "").strip()},
        },
    )


def import_ieee8023(sources: Iterable[str | Path], tables: Ieee8023Tables, report: ImportReport,
                    split: str | None = None, exclude_noncommercial: bool = False, skip_bad: bool = False,
                    images: dict[str, Path] | None = None) -> Iterator[PatientCase]:
    """One labelled case per X-ray metadata row whose image is among `sources`.

    Rows of another modality (CT) are counted and left out, and with
    `exclude_noncommercial` so are images licensed for non-commercial use only. A row
    whose image is missing, or an unreadable image, raises `InputError` naming the file;
    with `skip_bad` it is skipped and listed.
    """
    label_map = load_label_map("ieee8023", panel=load_panel())
    images = images if images is not None else index_images(sources, report)
    count_unlisted(images, {row["filename"] for row in tables.rows}, report)
    for row in tables.rows:
        modality = row.get("modality", "").strip()
        if modality and modality.lower() not in ("x-ray", "xray", "cr", "dx"):
            report.skip(f"not an X-ray ({modality})")
            continue
        if exclude_noncommercial and "NC" in row.get("license", "").upper().replace("-", " ").split():
            report.skip("image licensed for non-commercial use only (--exclude-noncommercial)")
            continue
        path = images.get(row["filename"])
        if path is None:
            error = InputError(row["filename"], f"image listed in {tables.metadata_source} not found among the inputs")
            if not skip_bad:
                raise error
            report.skip_file(error, "image listed in the metadata is missing")
            continue
        case = read_or_skip(report, skip_bad, "unreadable image file", read_ieee8023_case, row, path, tables,
                            label_map, report, split)
        if case is not None:
            yield case
