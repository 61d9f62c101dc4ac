"""SLAKE 1.0: `train.json`, `validate.json` (HF: `validation.json`), `test.json`, `imgs/`.

Records carry `q_lang` (en / zh), `answer_type` (OPEN / CLOSED: closed answers are not
only yes/no), `content_type`, `modality`. Papers usually report the English test set
(`--lang en`, 1,061 items); without `--lang` both languages are read.
"""

from __future__ import annotations

from pathlib import Path

from medfuse.errors import InputError
from medfuse.eval.benchmarks.base import Benchmark, EvalItem, read_json, register, resolve_image, text_or_none

_SPLIT_FILES = {"train": ("train.json",), "validation": ("validate.json", "validation.json"), "test": ("test.json",)}


@register
class SLAKE(Benchmark):
    name = "slake"
    task_type = "vqa"
    description = "SLAKE bilingual VQA (JSON; q_lang en/zh; imgs/)"
    default_split = "test"
    splits = ("train", "validation", "test")
    breakdowns = ("answer_type", "content_type", "modality", "lang")

    def _files(self, path: Path, split: str | None) -> list[Path]:
        if path.is_file():
            return [path]
        names = [n for s in (_SPLIT_FILES if split in (None, "all") else {split: _SPLIT_FILES[split]}).values() for n in s]
        files = [path / n for n in names if (path / n).is_file()]
        if not files:
            raise InputError(path, f"no SLAKE {' / '.join(names)} in this folder")
        return files[:1] if split not in (None, "all") else files

    def _load(self, path: Path, split: str | None, lang: str | None):
        for file in self._files(path, split):
            data = read_json(file)
            if not isinstance(data, list):
                raise InputError(file, "expected a JSON list of QA records")
            image_root = file.parent / "imgs" if (file.parent / "imgs").is_dir() else file.parent
            for i, rec in enumerate(data):
                if not isinstance(rec, dict) or "question" not in rec or "answer" not in rec or "q_lang" not in rec:
                    raise InputError(file, f"record {i} lacks question/answer/q_lang (not a SLAKE file)")
                q_lang = str(rec["q_lang"]).strip().lower()
                if lang is not None and q_lang != lang:
                    continue  # cheap filter before the image look-up
                question, answer = text_or_none(rec.get("question")), text_or_none(rec.get("answer"))
                if question is None or answer is None:
                    self.skip("empty question or answer")
                    continue
                image = resolve_image(image_root, str(rec.get("img_name") or ""))
                if image is None:
                    self.skip("image file not found")
                    continue
                kind = str(rec.get("answer_type") or "OPEN").strip().upper()
                meta = {k: rec[k] for k in ("content_type", "modality", "location", "base_type") if rec.get(k)}
                meta["answer_type"] = kind
                meta["lang"] = q_lang
                yield EvalItem(
                    id=str(rec.get("qid", f"{file.stem}-{i}")),
                    benchmark=self.name,
                    task_type="vqa",
                    answer_type="closed" if kind == "CLOSED" else "open",
                    question=question,
                    images=[str(image)],
                    gold=answer,
                    lang=q_lang,
                    metadata=meta,
                )
