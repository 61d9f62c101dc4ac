"""Grounding (text to region): find every box of a named finding on an image.

Two sources, one item per (image, finding label) with all of that label's boxes as gold,
on the 0-999 grid of DESIGN.md:
- `cohort-grounding`: boxed findings of a medfuse cohort (`labels.findings` and each
  image's `findings`);
- `coco-grounding`: a COCO-format detection file (`bbox` = [x, y, w, h] in pixels,
  converted with `medfuse.record.boxes`). `iscrowd=1` regions are ignore regions in
  COCOeval and have no place in a box-matching score, so they are skipped and counted.
Only labels present on an image are asked about (no absent-finding questions).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from medfuse.errors import InputError
from medfuse.eval.benchmarks.base import Benchmark, EvalItem, read_json, register, resolve_image
from medfuse.eval.benchmarks.medfuse_cohort import cohort_folders
from medfuse.record.boxes import coco_to_xyxy, pixel_to_grid
from medfuse.record.store import read_case


def grounding_question(label: str) -> str:
    return f"Locate every {label} in the image."


@register
class CohortGrounding(Benchmark):
    name = "cohort-grounding"
    task_type = "grounding"
    description = "Find-the-box for boxed findings of a medfuse cohort (0-999 grid)"
    default_split = "test"
    splits = ("train", "val", "test")
    breakdowns = ("label",)

    def _load(self, path: Path, split: str | None, lang: str | None):
        for folder in cohort_folders(path, split):
            case = read_case(folder, load_bulk=False)
            boxes: dict[tuple[int, str], list[list[int]]] = defaultdict(list)
            findings = [(f.image_index, f) for f in (case.labels.findings if case.labels else [])]
            findings += [(i, f) for i, img in enumerate(case.cxr) for f in img.findings]
            for image_index, f in findings:
                for b in f.boxes:
                    if list(b) not in boxes[(image_index, f.label)]:  # the same box may be stored twice
                        boxes[(image_index, f.label)].append(list(b))
            for (image_index, label), gold in sorted(boxes.items()):
                if not gold:
                    continue
                if image_index >= len(case.cxr) or not case.cxr[image_index].file:
                    self.skip("finding refers to a missing image")
                    continue
                image = resolve_image(folder, case.cxr[image_index].file)
                if image is None:
                    self.skip("image file not found")
                    continue
                yield EvalItem(
                    id=f"{case.case_id}-{image_index}-{label.replace(' ', '_')}",
                    benchmark=self.name,
                    task_type="grounding",
                    answer_type="boxes",
                    question=grounding_question(label),
                    images=[str(image)],
                    gold=gold,
                    metadata={"label": label, "case_dir": str(folder.resolve())},
                )


@register
class CocoGrounding(Benchmark):
    name = "coco-grounding"
    task_type = "grounding"
    description = "Find-the-box from a COCO-format annotation file (bbox [x, y, w, h] pixels)"
    default_split = None
    breakdowns = ("label",)

    def _load(self, path: Path, split: str | None, lang: str | None):
        if path.is_dir():
            files = sorted(path.glob("*.json"))
            if len(files) != 1:
                raise InputError(path, "give the COCO annotation .json file (the folder holds none or several)")
            path = files[0]
        data = read_json(path)
        if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
            raise InputError(path, "expected COCO keys images / annotations / categories (lists)")
        try:
            categories = {c["id"]: str(c["name"]) for c in data["categories"]}
            images = {im["id"]: im for im in data["images"]}
        except (KeyError, TypeError):
            raise InputError(path, "every category needs id and name, every image id and file_name") from None
        roots = [d for d in (path.parent / "images", path.parent) if d.is_dir()]
        grouped: dict[tuple[object, str], list[list[int]]] = defaultdict(list)
        for k, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann or "bbox" not in ann or "category_id" not in ann:
                raise InputError(path, f"annotations[{k}] lacks image_id / category_id / bbox")
            if ann.get("iscrowd"):
                self.skip("iscrowd region (ignore region)")
                continue
            im = images.get(ann["image_id"])
            label = categories.get(ann["category_id"])
            if im is None or label is None:
                self.skip("annotation refers to an unknown image or category")
                continue
            width, height = im.get("width"), im.get("height")
            if not width or not height:
                width, height = _image_size(roots, str(im.get("file_name", "")))
                if width is None:
                    self.skip("image size unknown (no width/height, image not found)")
                    continue
            try:
                box = pixel_to_grid(coco_to_xyxy(ann["bbox"]), width, height)
            except (ValueError, TypeError):
                self.skip("invalid bbox")
                continue
            grouped[(ann["image_id"], label)].append(box)
        for (image_id, label), gold in grouped.items():
            im = images[image_id]
            image = next((p for d in roots if (p := resolve_image(d, str(im.get("file_name", "")))) is not None), None)
            if image is None:
                self.skip("image file not found")
                continue
            yield EvalItem(
                id=f"{image_id}-{label.replace(' ', '_')}",
                benchmark=self.name,
                task_type="grounding",
                answer_type="boxes",
                question=grounding_question(label),
                images=[str(image)],
                gold=gold,
                metadata={"label": label, "image_id": image_id},
            )


def _image_size(roots: list[Path], name: str) -> tuple[int | None, int | None]:
    from PIL import Image

    for d in roots:
        p = resolve_image(d, name)
        if p is not None:
            try:
                with Image.open(p) as im:
                    return im.size
            except OSError:
                return None, None
    return None, None
