"""PMC-VQA multiple choice: `test_2.csv` (v2) or `test.csv` / `test_clean.csv` (v1).

v1 columns `Figure_path, Question, Answer, Choice A..D, Answer_label` (also spelled
`Anwser`); choices carry a prefix (`"B:Focal uptake"`). v2 `test_2.csv` has
`Figure_path, Caption, Question, Choice A..D, Answer, split`; its `Answer` may be a letter
or the option text, so both are accepted. Images are under `figures/` or `images/`.
"""

from __future__ import annotations

import re
from pathlib import Path

from medfuse.errors import InputError
from medfuse.eval.benchmarks.base import (
    Benchmark, find_image, image_roots, option_letter, pick_file, read_csv_rows, register, text_or_none,
)

_SPLIT_FILES = {"test": ("test_2.csv", "test.csv"), "test_clean": ("test_clean.csv",), "train": ("train_2.csv", "train.csv")}
_PREFIX = re.compile(r"^\s*\(?([A-D])\s*[:.)]\s*")


def _strip_prefix(text: str) -> str:
    return _PREFIX.sub("", text, count=1).strip()


@register
class PMCVQA(Benchmark):
    name = "pmc-vqa"
    task_type = "multiple_choice"
    description = "PMC-VQA 4-option image multiple choice (CSV v1/v2)"
    default_split = "test"
    splits = ("test", "test_clean", "train")

    def _load(self, path: Path, split: str | None, lang: str | None):
        file = pick_file(path, _SPLIT_FILES.get(split or "test", ("test_2.csv",)), "no PMC-VQA test_2.csv / test.csv in this folder")
        rows = read_csv_rows(file)
        if rows and not {"Figure_path", "Question", "Choice A"} <= set(rows[0]):
            raise InputError(file, "missing columns Figure_path / Question / Choice A (not a PMC-VQA CSV)")
        image_dirs = image_roots(file.parent, "figures", "images", "images_2")
        for i, row in enumerate(rows):
            options = {}
            for letter in "ABCD":
                text = text_or_none(row.get(f"Choice {letter}"))
                if text is not None:
                    options[letter] = _strip_prefix(text)
            question = text_or_none(row.get("Question"))
            if question is None or len(options) < 2:
                self.skip("no question or fewer than 2 options")
                continue
            gold = None
            label = text_or_none(row.get("Answer_label"))
            answer = text_or_none(row.get("Answer") if "Answer" in row else row.get("Anwser"))
            if label and label.upper() in options:
                gold = label.upper()
            elif answer:
                m = _PREFIX.match(answer)
                if answer.strip().upper() in options:
                    gold = answer.strip().upper()
                elif m and m.group(1) in options:
                    gold = m.group(1)
                else:
                    gold = option_letter(options, answer, fold=str.lower)
            if gold is None:
                self.skip("answer is not one of the options")
                continue
            figure = str(row.get("Figure_path") or "")
            image = find_image(image_dirs, figure)
            if image is None:
                self.skip("image file not found")
                continue
            index = text_or_none(row.get("index") or row.get(""))
            yield self.item(
                id=f"{file.stem}-{index if index is not None else i}",
                answer_type="choice",
                question=question,
                options=options,
                images=[str(image)],
                gold=gold,
                metadata={"figure": figure},
            )
