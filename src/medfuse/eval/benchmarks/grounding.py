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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from medfuse.errors import InputError
from medfuse.eval.benchmarks.base import (
    Benchmark, EvalItem, find_image, image_roots, read_json, register, resolve_image,
)
from medfuse.eval.benchmarks.medfuse_cohort import cohort_folders
from medfuse.record.boxes import coco_to_xyxy, pixel_to_grid
from medfuse.record.store import read_case


def grounding_question(label: str) -> str:
    """The question that asks for every box of `label`."""
    return f"Locate every {label} in the image."


class LabelBoxes(NamedTuple):
    """Every box of one finding label on one image: the gold of one grounding item."""

    key: str  # the image within the benchmark; the item id is `<key>-<label>`
    label: str
    image: Path | None  # None when the image file is missing
    gold: list[list[int]]  # [x1, y1, x2, y2] on the 0-999 grid
    metadata: dict[str, Any]


class GroundingBenchmark(Benchmark):
    """One item per (image, finding label), gold = all of that label's boxes on the image."""

    task_type = "grounding"
    breakdowns = ("label",)

    def label_items(self, groups: Iterable[LabelBoxes]) -> Iterator[EvalItem]:
        """The items of `groups`; one whose image file is missing is skipped and counted."""
        for key, label, image, gold, metadata in groups:
            if image is None:
                self.skip("image file not found")
                continue
            yield self.item(
                id=f"{key}-{label.replace(' ', '_')}",
                answer_type="boxes",
                question=grounding_question(label),
                images=[str(image)],
                gold=gold,
                metadata={"label": label, **metadata},
            )


@register
class CohortGrounding(GroundingBenchmark):
    name = "cohort-grounding"
    description = "Find-the-box for boxed findings of a medfuse cohort (0-999 grid)"
    default_split = "test"
    splits = ("train", "val", "test")

    def _load(self, path: Path, split: str | None, lang: str | None):
        for folder in cohort_folders(path, split):
            yield from self.label_items(self._case_boxes(folder))

    def _case_boxes(self, folder: Path) -> Iterator[LabelBoxes]:
        """The boxed findings of one case folder, per (image, label)."""
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
            yield LabelBoxes(f"{case.case_id}-{image_index}", label, image, gold, {"case_dir": str(folder.resolve())})


@register
class CocoGrounding(GroundingBenchmark):
    name = "coco-grounding"
    description = "Find-the-box from a COCO-format annotation file (bbox [x, y, w, h] pixels)"
    default_split = None

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
        roots = image_roots(path.parent, "images")
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
                width, height = _image_size(find_image(roots, str(im.get("file_name", ""))))
                if width is None:
                    self.skip("image size unknown (no width/height, image not found)")
                    continue
            try:
                box = pixel_to_grid(coco_to_xyxy(ann["bbox"]), width, height)
            except (ValueError, TypeError):
                self.skip("invalid bbox")
                continue
            grouped[(ann["image_id"], label)].append(box)
        yield from self.label_items(
            LabelBoxes(str(image_id), label, find_image(roots, str(images[image_id].get("file_name", ""))), gold,
                       {"image_id": image_id})
            for (image_id, label), gold in grouped.items()
        )


def _image_size(image: Path | None) -> tuple[int | None, int | None]:
    """(width, height) of an image file; (None, None) when there is none or it is unreadable."""
    from PIL import Image

    if image is None:
        return None, None
    try:
        with Image.open(image) as im:
            return im.size
    except OSError:
        return None, None
