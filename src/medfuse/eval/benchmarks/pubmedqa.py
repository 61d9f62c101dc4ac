"""PubMedQA (PQA-L): `ori_pqal.json`, a dict keyed by PMID, and `test_ground_truth.json`.

The test split is the 500 PMIDs of `test_ground_truth.json` (`{pmid: yes|no|maybe}`),
looked up in `ori_pqal.json`; gold is `final_decision`. The model sees the question and
the abstract's contexts (reasoning-required setting), not `LONG_ANSWER`.
"""

from __future__ import annotations

from pathlib import Path

from medfuse.errors import InputError
from medfuse.eval.benchmarks.base import Benchmark, pick_file, read_json, register, text_or_none

DECISIONS = ("yes", "no", "maybe")


@register
class PubMedQA(Benchmark):
    name = "pubmedqa"
    task_type = "multiple_choice"
    description = "PubMedQA PQA-L yes/no/maybe (ori_pqal.json + test_ground_truth.json)"
    default_split = "test"
    splits = ("test",)

    def _load(self, path: Path, split: str | None, lang: str | None):
        pqal_file = pick_file(path, ["data/ori_pqal.json", "ori_pqal.json"], "no ori_pqal.json in this folder")
        folder = pqal_file.parent
        data = read_json(pqal_file)
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise InputError(pqal_file, "expected an object keyed by PMID (ori_pqal.json)")
        truth: dict[str, str] | None = None
        if split == "test":
            truth_file = folder / "test_ground_truth.json"
            if not truth_file.is_file():
                raise InputError(folder, "the test split needs test_ground_truth.json beside ori_pqal.json (or use --split all)")
            truth = read_json(truth_file)
            if not isinstance(truth, dict):
                raise InputError(truth_file, "expected an object {pmid: yes|no|maybe}")
            pmids = list(truth)
        else:
            pmids = list(data)
        for pmid in pmids:
            rec = data.get(pmid)
            if rec is None:
                self.skip("test PMID missing from ori_pqal.json")
                continue
            gold = text_or_none(truth[pmid] if truth is not None else rec.get("final_decision"))
            gold = gold.lower() if gold else None
            if gold not in DECISIONS:
                self.skip("final decision not yes/no/maybe")
                continue
            question = text_or_none(rec.get("QUESTION"))
            contexts = rec.get("CONTEXTS") or []
            if question is None or not isinstance(contexts, list):
                self.skip("no question or contexts")
                continue
            labels = rec.get("LABELS") or []
            parts = []
            for i, c in enumerate(contexts):
                label = labels[i] if i < len(labels) and labels[i] else None
                parts.append(f"{label.capitalize()}: {c}" if label else str(c))
            yield self.item(
                id=str(pmid),
                answer_type="yes_no_maybe",
                question=question,
                context="\n".join(parts),
                gold=gold,
                metadata={"year": rec.get("YEAR")} if rec.get("YEAR") else {},
            )
