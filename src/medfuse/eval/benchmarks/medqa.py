"""MedQA (USMLE 4/5 options, Mainland, Taiwan): JSON Lines from `data_clean/questions/`.

Record: `question`, `options` {A..E}, `answer` (option text), `answer_idx` (letter, the
gold we score on), `meta_info`. The 4-option files re-letter `answer_idx`, so always use
the letter from the same file. The HF `-hf` variant (`sent1`, `ending0..3`, 0-based
`label`) is read too.
"""

from __future__ import annotations

from pathlib import Path

from medfuse.errors import InputError
from medfuse.eval.benchmarks.base import LETTERS, Benchmark, iter_jsonl, option_letter, pick_file, register, text_or_none


@register
class MedQA(Benchmark):
    name = "medqa"
    task_type = "multiple_choice"
    description = "MedQA USMLE/MCMLE multiple choice (jsonl; gold answer_idx)"
    default_split = "test"
    splits = ("train", "dev", "test")
    breakdowns = ("meta_info",)

    def _load(self, path: Path, split: str | None, lang: str | None):
        split = self.one_split(split)
        candidates = [f"{split}.jsonl", f"US/{split}.jsonl", f"phrases_no_exclude_{split}.jsonl",
                      f"US/4_options/phrases_no_exclude_{split}.jsonl"]
        file = pick_file(path, candidates, f"no MedQA {split}.jsonl in this folder")
        lang_guess = "zh" if "Mainland" in file.parts or "Taiwan" in file.parts or file.name.startswith("tw_") else "en"
        for lineno, rec in iter_jsonl(file):
            if not isinstance(rec, dict):
                raise InputError(file, f"line {lineno} is not a JSON object")
            if "sent1" in rec and "ending0" in rec:  # HF -hf variant
                options = {LETTERS[i]: str(rec[f"ending{i}"]) for i in range(10) if f"ending{i}" in rec}
                label = rec.get("label")
                gold = LETTERS[label] if isinstance(label, int) and 0 <= label < len(options) else None
                question = text_or_none(rec.get("sent1"))
            else:
                if "question" not in rec or "options" not in rec:
                    raise InputError(file, f"line {lineno} has no 'question'/'options' (not a MedQA file)")
                raw = rec["options"]
                if isinstance(raw, dict):
                    options = {str(k).strip().upper(): str(v) for k, v in raw.items()}
                elif isinstance(raw, list):  # some mirrors store [{"key":"A","value":...}]
                    options = {str(o.get("key")).upper(): str(o.get("value")) for o in raw if isinstance(o, dict)}
                else:
                    raise InputError(file, f"line {lineno}: 'options' must be an object")
                gold = text_or_none(rec.get("answer_idx"))
                gold = gold.upper() if gold else None
                if gold is None:
                    # Older mirrors carry only the answer text; map it by exact equality.
                    gold = option_letter(options, text_or_none(rec.get("answer")))
                question = text_or_none(rec.get("question"))
            if question is None:
                self.skip("no question")
                continue
            if gold is None or gold not in options:
                self.skip("gold answer missing or not an option")
                continue
            yield self.item(
                id=str(rec.get("id", f"{file.stem}-{lineno}")),
                answer_type="choice",
                question=question,
                options=options,
                gold=gold,
                lang=lang_guess,
                metadata={"meta_info": rec.get("meta_info")} if rec.get("meta_info") else {},
            )
