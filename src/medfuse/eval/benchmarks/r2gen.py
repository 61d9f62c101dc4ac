"""Report generation from R2Gen's `annotation.json` (IU-Xray, MIMIC-CXR).

The file is `{"train": [...], "val": [...], "test": [...]}` of `{id, report, image_path
[list, relative to images/], split}`; MIMIC adds `study_id`, `subject_id`. As in R2Gen's
loaders, IU-Xray items use both images (indices 0 and 1) and MIMIC-CXR items use
`image_path[0]` only. Gold is the report text as released; the text metrics apply R2Gen's
cleaning, not the loader.
"""

from __future__ import annotations

from pathlib import Path

from medfuse.errors import InputError
from medfuse.eval.benchmarks.base import Benchmark, image_roots, pick_file, read_json, register, resolve_image, text_or_none

REPORT_INSTRUCTION = "Write the findings and impression of the radiology report for this chest X-ray study."


@register
class R2Gen(Benchmark):
    name = "r2gen"
    task_type = "report"
    description = "IU-Xray / MIMIC-CXR report generation (R2Gen annotation.json)"
    default_split = "test"
    splits = ("train", "val", "test")

    def _load(self, path: Path, split: str | None, lang: str | None):
        file = pick_file(path, ["annotation.json"], "no annotation.json in this folder")
        data = read_json(file)
        if not isinstance(data, dict) or not any(k in data for k in self.splits):
            raise InputError(file, "expected an object with train/val/test lists (R2Gen annotation.json)")
        image_root = image_roots(file.parent, "images")[0]  # images/, else beside the annotation file
        for name in self.splits if split in (None, "all") else (split,):
            records = data.get(name, [])
            if not isinstance(records, list):
                raise InputError(file, f"'{name}' must be a list")
            for i, rec in enumerate(records):
                if not isinstance(rec, dict) or "report" not in rec or "image_path" not in rec:
                    raise InputError(file, f"{name}[{i}] lacks report/image_path")
                report = text_or_none(rec.get("report"))
                if report is None:
                    self.skip("empty report")
                    continue
                paths = rec["image_path"] if isinstance(rec["image_path"], list) else [rec["image_path"]]
                is_mimic = "study_id" in rec or "subject_id" in rec
                wanted = paths[:1] if is_mimic else paths[:2]
                images = [resolve_image(image_root, str(p)) for p in wanted]
                if not wanted or any(im is None for im in images):
                    self.skip("image file not found")
                    continue
                meta = {"dataset": "mimic_cxr" if is_mimic else "iu_xray", "split": name}
                if is_mimic:
                    meta["study_id"] = rec.get("study_id")
                yield self.item(
                    id=str(rec.get("id", f"{name}-{i}")),
                    answer_type="report",
                    question=REPORT_INSTRUCTION,
                    images=[str(im) for im in images],
                    gold=report,
                    metadata=meta,
                )
