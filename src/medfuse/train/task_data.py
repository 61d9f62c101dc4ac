"""The instruction samples the language-model stages train and are scored on.

`TaskData` holds the samples of one split of the cohort (from a saved instruction dataset,
`medfuse tasks build`, or built on the fly from the cohort's cases) and the fused inputs of
their cases, each case read and featurized once. Used by `align`/`sft` (`lm_stages`), `grpo`
and the answer scoring (`lm_eval`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfuse.errors import InputError
from medfuse.record.case import PatientCase
from medfuse.train.config import LMStageConfig


@dataclass
class Sample:
    """One instruction sample, ready for the model."""

    case_id: str
    task: str
    lang: str
    system: str | None
    user: str
    target: str
    answer_diseases: list[str]
    gold_boxes: str


def _messages(row: dict[str, Any]) -> tuple[str | None, str, str] | None:
    system, user, assistant = None, None, None
    for m in row["messages"]:
        role, content = m.get("role"), m.get("content", "")
        if role == "system":
            system = content
        elif role == "user" and user is None:
            user = content
        elif role == "assistant" and assistant is None:
            assistant = content
    if user is None or assistant is None:
        return None
    return system, user, assistant


class TaskData:
    """Samples of one split ("train", "val", "test" or "all") and the fused inputs of their cases.

    With `cfg.tasks` the rows come from that instruction dataset; without, they are built
    now from the cohort (`medfuse.tasks.build_case_samples`), case by case in a seeded
    order until `limit` samples are reached, so a quick run interprets only the cases it
    uses. Cases are read and featurized once each, however many samples they have.
    """

    def __init__(self, cfg: LMStageConfig, split: str, task_types: tuple[str, ...], model, limit: int | None):
        from medfuse.model.inputs import featurize_many
        from medfuse.record.store import patient_split, read_case, read_index

        cohort = Path(cfg.cohort)
        if not cohort.is_dir():
            raise InputError(cohort, "no such cohort folder")
        index = patient_split(read_index(cohort), seed=cfg.split_seed)
        folders = dict(zip(index["case_id"], index["folder"], strict=True))
        in_split = set(index["case_id"] if split == "all" else index.loc[index["split"] == split, "case_id"])
        rng = np.random.default_rng(cfg.seed + (0 if split == "train" else 1))
        langs = tuple(cfg.langs)
        self._cases: dict[str, PatientCase] = {}
        samples: list[Sample] = []
        weights = dict(getattr(cfg, "task_weights", None) or {})
        # With task weights a subset is drawn from a larger pool (3x), not the first `limit`.
        pool = limit if limit is None or not weights else 3 * limit
        if cfg.tasks:
            for row in load_task_rows(cfg):
                if row["case_id"] in in_split and row["task"] in task_types and row["lang"] in langs:
                    samples.extend(_sample(row))
        else:
            from medfuse.interpret.case import interpret_case
            from medfuse.tasks.build import build_case_samples

            ids = sorted(in_split)
            for i in rng.permutation(len(ids)):
                case = read_case(cohort / folders[ids[i]])
                rows = build_case_samples(case, interpret_case(case), case_dir=folders[ids[i]], panel=model.panel,
                                          langs=langs, seed=cfg.seed,
                                          tasks=[t for t in task_types if t != "qa"])
                new = [x for row in rows for x in _sample(row)]
                if new:
                    self._cases[case.case_id] = case
                    samples.extend(new)
                if pool is not None and len(samples) >= pool:
                    break
        if limit is not None and weights and len(samples) > limit:
            p = np.array([float(weights.get(s.task, 1.0)) for s in samples])
            keep = rng.choice(len(samples), size=limit, replace=False, p=p / p.sum())
            samples = [samples[i] for i in sorted(keep)]
        order = rng.permutation(len(samples))
        samples = [samples[i] for i in order][:limit]
        self.samples = samples
        self.model = model
        for cid in sorted({s.case_id for s in samples} - set(self._cases)):
            self._cases[cid] = read_case(cohort / folders[cid])
        used = {s.case_id for s in samples}
        cases = [c for cid, c in sorted(self._cases.items()) if cid in used]
        items = featurize_many(cases, model.config, model.stats, model.panel) if cases else []
        self.features = {c.case_id: it for c, it in zip(cases, items, strict=True)}

    def case(self, case_id: str) -> PatientCase:
        return self._cases[case_id]

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, idx) -> tuple[list[Sample], dict[str, torch.Tensor]]:
        from medfuse.model.inputs import collate

        chosen = [self.samples[int(i)] for i in idx]
        items = [self.features[s.case_id] for s in chosen]
        if any("labels" not in it for it in items):
            items = [{k: v for k, v in it.items() if k != "labels"} for it in items]
        return chosen, collate(items)


def _sample(row: dict[str, Any]) -> list[Sample]:
    parts = _messages(row)
    if parts is None:
        return []
    return [Sample(row["case_id"], row["task"], row["lang"], parts[0], parts[1], parts[2],
                   list(row.get("answer_diseases") or []), row.get("gold_boxes") or "[]")]


def load_task_rows(cfg: LMStageConfig) -> list[dict[str, Any]]:
    """Rows of the instruction dataset at `cfg.tasks`."""
    from datasets import load_from_disk

    path = Path(cfg.tasks)
    if not path.is_dir():
        raise InputError(path, "no such instruction dataset folder (medfuse tasks build writes one)")
    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise InputError(path, f"not a saved dataset ({e.__class__.__name__})") from None
    return [dict(r) for r in ds]
