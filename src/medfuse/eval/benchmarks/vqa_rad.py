"""VQA-RAD (OSF release): `VQA_RAD Dataset Public.json` + `VQA_RAD Image Folder/`.

The official test split is the records whose `phrase_type` starts with `test` (451 =
300 free-form + 151 paraphrased). `answer_type` is OPEN or CLOSED; files without it (HF
exports with image/question/answer only) treat yes/no answers as closed, as MedEvalKit
does. Answers may be numbers in the source, so they are read with `str()`.
"""

from __future__ import annotations

from pathlib import Path

from medfuse.eval.benchmarks.base import (
    VQABenchmark, check_record, image_roots, pick_file, read_json_list, register, resolve_image,
)

JSON_NAME = "VQA_RAD Dataset Public.json"
IMAGE_FOLDER = "VQA_RAD Image Folder"


@register
class VQARAD(VQABenchmark):
    name = "vqa-rad"
    description = "VQA-RAD radiology VQA (OSF JSON; test = phrase_type test_*)"
    default_split = "test"
    splits = ("train", "test")
    breakdowns = ("answer_type", "question_type", "image_organ")

    def _load(self, path: Path, split: str | None, lang: str | None):
        file = pick_file(path, [JSON_NAME], f"no '{JSON_NAME}' in this folder")
        data = read_json_list(file, "QA records")
        image_dir = image_roots(file.parent, IMAGE_FOLDER)[0]  # the image folder, else beside the JSON
        for i, rec in enumerate(data):
            check_record(file, i, rec, ("question", "answer"), "a VQA-RAD file")
            is_test = str(rec.get("phrase_type") or "").lower().startswith("test")
            if split == "test" and not is_test or split == "train" and is_test:
                continue
            kind = str(rec.get("answer_type") or "").strip().upper()
            meta = {k: rec[k] for k in ("question_type", "image_organ", "phrase_type", "qid_linked_id") if rec.get(k)}
            item = self.vqa_item(
                id=str(rec.get("qid", i)),
                record=rec,
                image=resolve_image(image_dir, str(rec.get("image_name") or "")),
                kind=kind if kind in ("OPEN", "CLOSED") else None,  # HF exports have no answer_type
                metadata=meta,
            )
            if item is not None:
                yield item
