"""Report generation from a table of findings/impression: a CSV with `findings` and
`impression` columns (any case; e.g. CheXpert Plus `section_findings`/`section_impression`)
or MedEvalKit's JSON list `{id, image: [files], findings, impression}`.

Gold follows MedEvalKit: `"Findings: {f} Impression: {i}"` when both are present, else
the one that is; rows where both are empty are skipped. Images are optional (a text
model can be scored on the same references) and resolved relative to the file's folder
or its `images/` subfolder.
"""

from __future__ import annotations

from pathlib import Path

from medfuse.errors import InputError
from medfuse.eval.benchmarks.base import (
    Benchmark, find_image, image_roots, pick_file, read_csv_rows, read_json_list, register, text_or_none,
)
from medfuse.eval.benchmarks.r2gen import REPORT_INSTRUCTION

_FINDINGS = ("findings", "section_findings")
_IMPRESSION = ("impression", "section_impression")
_IMAGE = ("image", "images", "image_path", "path_to_image", "figure_path")
_ID = ("id", "study_id", "dicom_id")


def _column(row: dict, names: tuple[str, ...]):
    lower = {k.lower().strip(): k for k in row if k is not None}
    for n in names:
        if n in lower:
            return row[lower[n]]
    return None


@register
class FindingsImpression(Benchmark):
    name = "findings-impression"
    task_type = "report"
    description = "Report generation from a findings/impression CSV or MedEvalKit-style JSON"
    default_split = None
    splits = ("test", "valid", "validation", "train")

    def _load(self, path: Path, split: str | None, lang: str | None):
        file = pick_file(path, ["test.csv", "test.json"], "no test.csv or test.json in this folder")
        if file.suffix.lower() == ".json":
            rows = read_json_list(file, "{image, findings, impression} records")
        else:
            rows = read_csv_rows(file)
        if rows and isinstance(rows[0], dict) and _column(rows[0], _FINDINGS) is None and _column(rows[0], _IMPRESSION) is None:
            if not any(k.lower() in _FINDINGS + _IMPRESSION for k in rows[0]):
                raise InputError(file, "no findings or impression column")
        roots = image_roots(file.parent, "images")
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise InputError(file, f"record {i} is not an object")
            row_split = text_or_none(_column(row, ("split",)))
            if split not in (None, "all") and row_split is not None and row_split.lower() != split:
                continue
            findings = text_or_none(_column(row, _FINDINGS))
            impression = text_or_none(_column(row, _IMPRESSION))
            if findings and impression:
                gold = f"Findings: {findings} Impression: {impression}"
            elif findings or impression:
                gold = findings or impression
            else:
                self.skip("findings and impression both empty")
                continue
            raw_images = _column(row, _IMAGE)
            names = raw_images if isinstance(raw_images, list) else ([raw_images] if text_or_none(raw_images) else [])
            images = []
            for n in names:
                found = find_image(roots, str(n))
                if found is None:
                    break
                images.append(str(found))
            if len(images) != len(names):
                self.skip("image file not found")
                continue
            yield self.item(
                id=str(text_or_none(_column(row, _ID)) or f"{file.stem}-{i}"),
                answer_type="report",
                question=REPORT_INSTRUCTION,
                images=images,
                gold=gold,
            )
