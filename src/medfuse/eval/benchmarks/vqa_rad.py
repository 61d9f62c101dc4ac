"""VQA-RAD (OSF release): `VQA_RAD Dataset Public.json` + `VQA_RAD Image Folder/`.

The official test split is the records whose `phrase_type` starts with `test` (451 =
300 free-form + 151 paraphrased). `answer_type` is OPEN or CLOSED; files without it (HF
exports with image/question/answer only) treat yes/no answers as closed, as MedEvalKit
does. Answers may be numbers in the source, so they are read with `str()`.
"""

from __future__ import annotations

from pathlib import Path

from medfuse.errors import InputError
from medfuse.eval.benchmarks.base import Benchmark, EvalItem, read_json, register, resolve_image, text_or_none

JSON_NAME = "VQA_RAD Dataset Public.json"
IMAGE_FOLDER = "VQA_RAD Image Folder"


@register
class VQARAD(Benchmark):
    name = "vqa-rad"
    task_type = "vqa"
    description = "VQA-RAD radiology VQA (OSF JSON; test = phrase_type test_*)"
    default_split = "test"
    splits = ("train", "test")
    breakdowns = ("answer_type", "question_type", "image_organ")

    def _load(self, path: Path, split: str | None, lang: str | None):
        file = path if path.is_file() else path / JSON_NAME
        if not file.is_file():
            raise InputError(path, f"no '{JSON_NAME}' in this folder")
        data = read_json(file)
        if not isinstance(data, list):
            raise InputError(file, "expected a JSON list of QA records")
        root = file.parent
        image_dir = root / IMAGE_FOLDER if (root / IMAGE_FOLDER).is_dir() else root
        for i, rec in enumerate(data):
            if not isinstance(rec, dict) or "question" not in rec or "answer" not in rec:
                raise InputError(file, f"record {i} lacks question/answer (not a VQA-RAD file)")
            phrase = str(rec.get("phrase_type") or "")
            is_test = phrase.lower().startswith("test")
            if split == "test" and not is_test or split == "train" and is_test:
                continue
            question, answer = text_or_none(rec.get("question")), text_or_none(rec.get("answer"))
            if question is None or answer is None:
                self.skip("empty question or answer")
                continue
            kind = str(rec.get("answer_type") or "").strip().upper()
            if kind not in ("OPEN", "CLOSED"):
                kind = "CLOSED" if answer.lower() in ("yes", "no") else "OPEN"
            image = resolve_image(image_dir, str(rec.get("image_name") or ""))
            if image is None:
                self.skip("image file not found")
                continue
            meta = {k: rec[k] for k in ("question_type", "image_organ", "phrase_type", "qid_linked_id") if rec.get(k)}
            meta["answer_type"] = kind
            yield EvalItem(
                id=str(rec.get("qid", i)),
                benchmark=self.name,
                task_type="vqa",
                answer_type="closed" if kind == "CLOSED" else "open",
                question=question,
                images=[str(image)],
                gold=answer,
                metadata=meta,
            )
