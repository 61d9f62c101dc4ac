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
from medfuse.eval.benchmarks.base import Benchmark, EvalItem, read_csv_rows, register, resolve_image, text_or_none

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
        if path.is_file():
            file = path
        else:
            names = {"test": ("test_2.csv", "test.csv"), "test_clean": ("test_clean.csv",), "train": ("train_2.csv", "train.csv")}
            file = next((path / n for n in names.get(split or "test", ("test_2.csv",)) if (path / n).is_file()), None)
            if file is None:
                raise InputError(path, "no PMC-VQA test_2.csv / test.csv in this folder")
        rows = read_csv_rows(file)
        if rows and not {"Figure_path", "Question", "Choice A"} <= set(rows[0]):
            raise InputError(file, "missing columns Figure_path / Question / Choice A (not a PMC-VQA CSV)")
        root = file.parent
        image_dirs = [d for d in (root / "figures", root / "images", root / "images_2", root) if d.is_dir()]
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
                    matches = [k for k, v in options.items() if v.lower() == answer.lower()]
                    gold = matches[0] if len(matches) == 1 else None
            if gold is None:
                self.skip("answer is not one of the options")
                continue
            figure = str(row.get("Figure_path") or "")
            image = next((p for d in image_dirs if (p := resolve_image(d, figure)) is not None), None)
            if image is None:
                self.skip("image file not found")
                continue
            index = text_or_none(row.get("index") or row.get(""))
            yield EvalItem(
                id=f"{file.stem}-{index if index is not None else i}",
                benchmark=self.name,
                task_type="multiple_choice",
                answer_type="choice",
                question=question,
                options=options,
                images=[str(image)],
                gold=gold,
                metadata={"figure": figure},
            )
