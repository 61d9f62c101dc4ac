"""MMLU medical subsets from the raw release: `data/{dev,val,test}/<subject>_<split>.csv`.

The CSV files have no header: question, A, B, C, D, answer letter. By default the six
MultiMedQA subjects are read (1,089 test questions); the HF form (`choices` list, integer
`answer`) is not a CSV and is not read here.
"""

from __future__ import annotations

import re
from pathlib import Path

from medfuse.errors import InputError
from medfuse.eval.benchmarks.base import Benchmark, read_csv_rows, register, text_or_none

MULTIMEDQA_SUBJECTS = (
    "anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics", "professional_medicine",
)


@register
class MMLUMedical(Benchmark):
    name = "mmlu-medical"
    task_type = "multiple_choice"
    description = "MMLU medical subjects (raw headerless CSV; 6 MultiMedQA subjects)"
    default_split = "test"
    splits = ("dev", "val", "test")
    breakdowns = ("subject",)

    def _files(self, path: Path, split: str) -> list[tuple[str, Path]]:
        if path.is_file():
            subject = re.sub(r"_(dev|val|test)$", "", path.stem)
            return [(subject, path)]
        folder = path
        for cand in (path / "data" / split, path / split):
            if cand.is_dir():
                folder = cand
                break
        files = [(s, folder / f"{s}_{split}.csv") for s in MULTIMEDQA_SUBJECTS if (folder / f"{s}_{split}.csv").is_file()]
        if not files:
            raise InputError(path, f"no <subject>_{split}.csv files of the medical subjects in this folder")
        return files

    def _load(self, path: Path, split: str | None, lang: str | None):
        split = self.one_split(split)
        for subject, file in self._files(path, split):
            for i, row in enumerate(read_csv_rows(file, header=False)):
                if len(row) != 6:
                    raise InputError(file, f"row {i + 1} has {len(row)} columns; MMLU CSV has 6 (question, A-D, answer)")
                question = text_or_none(row[0])
                gold = (text_or_none(row[5]) or "").upper()
                if question is None or gold not in "ABCD" or not gold:
                    self.skip("no question or answer not A-D")
                    continue
                yield self.item(
                    id=f"{subject}-{i}",
                    answer_type="choice",
                    question=question,
                    options={"ABCD"[k]: row[1 + k] for k in range(4)},
                    gold=gold,
                    metadata={"subject": subject},
                )
