"""MedMCQA: `train.json` / `dev.json` / `test.json`, which are JSON Lines despite the name.

Fields `id, question, opa..opd, cop, choice_type, exp, subject_name, topic_name`. In the
raw release `cop` is 1-based (1-4); the HF conversion is 0-based with -1 for the hidden
test answers. Papers report on dev (4,183) because test answers are hidden.
"""

from __future__ import annotations

from pathlib import Path

from medfuse.errors import InputError
from medfuse.eval.benchmarks.base import Benchmark, iter_jsonl, pick_file, register, text_or_none

_OPTION_KEYS = ("opa", "opb", "opc", "opd")


@register
class MedMCQA(Benchmark):
    name = "medmcqa"
    task_type = "multiple_choice"
    description = "MedMCQA 4-option multiple choice (jsonl; cop 1-based raw, 0-based HF)"
    default_split = "dev"
    splits = ("train", "dev", "test", "validation")
    breakdowns = ("subject_name",)

    def _load(self, path: Path, split: str | None, lang: str | None):
        name = {"validation": "dev"}.get(split or "dev", split or "dev")
        file = pick_file(path, [f"{name}.json"], f"no MedMCQA {name}.json in this folder")
        records = [(n, r) for n, r in iter_jsonl(file)]
        for n, r in records:
            if not isinstance(r, dict) or "question" not in r or any(k not in r for k in _OPTION_KEYS):
                raise InputError(file, f"line {n} lacks question/opa..opd (not a MedMCQA file)")
        cops = {r.get("cop") for _, r in records if isinstance(r.get("cop"), int)}
        # Raw files use 1-4; the HF conversion 0-3 and -1 for unlabeled. A 0 or -1 can only
        # come from the HF form, a 4 only from the raw form; with neither seen (a small
        # slice), the documented raw release form is assumed.
        zero_based = bool(cops & {0, -1}) and 4 not in cops
        for n, r in records:
            cop = r.get("cop")
            if isinstance(cop, str) and cop.strip().isdigit():
                cop = int(cop)
            index = None if not isinstance(cop, int) else (cop if zero_based else cop - 1)
            if index is None or not 0 <= index <= 3:
                self.skip("no answer (cop missing or hidden)")
                continue
            question = text_or_none(r.get("question"))
            if question is None:
                self.skip("no question")
                continue
            options = {"ABCD"[i]: str(r.get(k) or "") for i, k in enumerate(_OPTION_KEYS)}
            meta = {k: r.get(k) for k in ("subject_name", "topic_name", "choice_type") if r.get(k) is not None}
            yield self.item(
                id=str(r.get("id") or f"{file.stem}-{n}"),
                answer_type="choice",
                question=question,
                options=options,
                gold="ABCD"[index],
                metadata=meta,
            )
