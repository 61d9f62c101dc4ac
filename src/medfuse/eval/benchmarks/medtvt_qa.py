"""MedTVT-QA diagnosis files (`{train,test}_dig_qa_dataset_gpt_7_category*.json`).

A JSON list of `{"messages": [{"role": "user", ...}, {"role": "assistant", ...}], "ECG":
[path], "image": [path]}`. Gold is the `;`-separated set inside the assistant's
`<answer>...</answer>`, mapped to panel names (the 7 MedTVT categories are all in the
default panel). The user text is the question (in `_add_spec_token` files it holds literal
`<ecg>`, `<cxr>`, `<lab>` placeholders that only MedTVT-R1 fills); signal paths are kept in
metadata for models that read them.
"""

from __future__ import annotations

import re
from pathlib import Path

from medfuse.errors import InputError
from medfuse.eval.benchmarks.base import Benchmark, read_json_list, register
from medfuse.knowledge.panel import load_panel

MEDTVT_CATEGORIES = (
    "Coronary Artery Disease", "Acute Renal Failure", "Hypertension", "Atrial Fibrillation", "Pneumonia",
    "Diabetes Mellitus", "Sepsis",
)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)


@register
class MedTVTQA(Benchmark):
    name = "medtvt-qa"
    task_type = "diagnosis"
    description = "MedTVT-QA diagnosis JSON (gold = ';'-joined labels in <answer>)"
    default_split = None

    def _load(self, path: Path, split: str | None, lang: str | None):
        if path.is_dir():
            files = sorted(path.glob("test_dig_qa_dataset_gpt_7_category*.json"))
            if not files:
                raise InputError(path, "no test_dig_qa_dataset_gpt_7_category*.json in this folder")
            path = files[0]
        data = read_json_list(path, "{messages, ECG, image} records")
        panel = load_panel()
        candidates = [panel.lookup(c).name if panel.lookup(c) else c for c in MEDTVT_CATEGORIES]
        for i, rec in enumerate(data):
            messages = rec.get("messages") if isinstance(rec, dict) else None
            if not isinstance(messages, list):
                raise InputError(path, f"record {i} has no 'messages' list (not a MedTVT-QA file)")
            user = next((m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
            answer = next((m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"), None)
            m = _ANSWER.search(answer or "")
            if not user or m is None:
                self.skip("no user question or no <answer> in the assistant turn")
                continue
            raw_labels = [t.strip() for t in re.split(r"[;；]", m.group(1)) if t.strip()]
            gold = sorted({(panel.lookup(t).name if panel.lookup(t) else t) for t in raw_labels if t.lower() != "none"})
            meta = {"ecg": rec.get("ECG") or [], "image": rec.get("image") or []}
            yield self.item(
                id=f"{path.stem}-{i}",
                answer_type="label_set",
                question=str(user).strip(),
                candidates=candidates,
                gold=gold,
                metadata=meta,
            )
