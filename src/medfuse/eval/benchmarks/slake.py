"""SLAKE 1.0: `train.json`, `validate.json` (HF: `validation.json`), `test.json`, `imgs/`.

Records carry `q_lang` (en / zh), `answer_type` (OPEN / CLOSED: closed answers are not
only yes/no), `content_type`, `modality`. Papers usually report the English test set
(`--lang en`, 1,061 items); without `--lang` both languages are read.
"""

from __future__ import annotations

from pathlib import Path

from medfuse.errors import InputError
from medfuse.eval.benchmarks.base import (
    VQABenchmark, check_record, image_roots, read_json_list, register, resolve_image,
)

_SPLIT_FILES = {"train": ("train.json",), "validation": ("validate.json", "validation.json"), "test": ("test.json",)}


@register
class SLAKE(VQABenchmark):
    name = "slake"
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
            data = read_json_list(file, "QA records")
            image_root = image_roots(file.parent, "imgs")[0]  # imgs/, else beside the JSON
            for i, rec in enumerate(data):
                check_record(file, i, rec, ("question", "answer", "q_lang"), "a SLAKE file")
                q_lang = str(rec["q_lang"]).strip().lower()
                if lang is not None and q_lang != lang:
                    continue  # cheap filter before the image look-up
                item = self.vqa_item(
                    id=str(rec.get("qid", f"{file.stem}-{i}")),
                    record=rec,
                    image=resolve_image(image_root, str(rec.get("img_name") or "")),
                    # Closed SLAKE answers are not only yes/no, so a missing type means open.
                    kind=str(rec.get("answer_type") or "OPEN").strip().upper(),
                    lang=q_lang,
                    metadata={k: rec[k] for k in ("content_type", "modality", "location", "base_type") if rec.get(k)},
                )
                if item is not None:
                    item.metadata["lang"] = q_lang
                    yield item
