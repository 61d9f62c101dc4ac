"""Are the attributions faithful to the model? Deletion / insertion curves against random order.

For each case and each disease the head reports (the most probable one relative to its
threshold when none is reported), the case's items (each lab, vital sign, variant, ECG
lead, the notes, the radiograph) are removed one at a time, the way the model represents
a missing item (`medfuse.explain.features.without_items`; a modality left empty takes the
model's missing-modality path):

- deletion: most supporting item first (attribution order) vs several random orders;
  AOPC = mean over k = 1..n of P(case) - P(case without the first k items) (Samek et al.
  2017). Faithful attributions remove the evidence first, so their AOPC is higher;
- insertion: from the case with every item removed, items are added back in the same
  orders; AOPC = mean over k of P(first k items) - P(no item).

The figure of merit is the ratio of the attribution AOPC to the random AOPC, pooled over
all (case, disease) pairs (a ratio of means: stable when some random AOPCs are near 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, Field

from medfuse.explain.explanation import explain_case
from medfuse.explain.features import (
    CalibratedHead,
    CaseFeatures,
    case_features,
    stack_batches,
    without_items,
)
from medfuse.explain.schema import Explanation
from medfuse.model.assembly import MedFuse
from medfuse.record.case import PatientCase


class CurveResult(BaseModel):
    """One (case, disease) pair's curves."""

    case_id: str
    disease: str
    n_items: int
    deletion_aopc: float
    deletion_aopc_random: float = Field(..., description="Mean over the random orders.")
    insertion_aopc: float
    insertion_aopc_random: float


class FaithfulnessReport(BaseModel):
    n_pairs: int = Field(..., description="(case, disease) pairs scored.")
    n_random_orders: int
    deletion_aopc: float
    deletion_aopc_random: float
    deletion_ratio: float = Field(..., description="deletion_aopc / deletion_aopc_random (target >= 2).")
    insertion_aopc: float
    insertion_aopc_random: float
    insertion_ratio: float
    deletion_beats_random: float = Field(..., description="Share of pairs whose attribution AOPC exceeds their random AOPC.")
    pairs: list[CurveResult]


def aopc(start: float, curve: np.ndarray) -> float:
    """Mean of start - curve[k] over the steps of a deletion curve (curve excludes the start)."""
    return float(np.mean(start - curve)) if curve.size else 0.0


def _scored_diseases(explanation: Explanation) -> list[str]:
    reported = [d.disease for d in explanation.diseases if d.present]
    if reported:
        return reported
    best = max(explanation.diseases, key=lambda d: d.probability / max(d.threshold, 1e-9))
    return [best.disease]


def _curves(head: CalibratedHead, features: CaseFeatures, orders: Sequence[Sequence[int]]) -> np.ndarray:
    """(n_orders, 2, n + 1, D): deletion (row 0) and insertion (row 1) probabilities per step."""
    items = features.items
    n = len(items)
    rows = []
    for order in orders:
        for k in range(n + 1):
            rows.append(without_items(features, [items[i] for i in order[:k]]))  # deletion after k steps
        for k in range(n + 1):
            rows.append(without_items(features, [items[i] for i in order[k:]]))  # insertion after k steps
    p = head.probabilities(stack_batches(rows))
    return p.reshape(len(orders), 2, n + 1, -1)


def deletion_insertion(model: MedFuse, cases: Sequence[PatientCase], *,
                       explanations: Sequence[Explanation] | None = None, n_random: int = 10,
                       seed: int = 0) -> FaithfulnessReport:
    """Deletion / insertion AOPC of attribution order vs `n_random` random orders (see the module docstring).

    `explanations` (one per case, from `explain_case`) are computed when not given.
    """
    rng = np.random.default_rng(seed)
    pairs: list[CurveResult] = []
    for i, case in enumerate(cases):
        explanation = explanations[i] if explanations is not None else explain_case(model, case, counterfactuals=False)
        features = case_features(model, case)
        n = len(features.items)
        if n < 2:
            continue  # one item has a single order
        head = CalibratedHead(model, reference=features.batch)
        slot = {(it.modality, it.key): j for j, it in enumerate(features.items)}
        randoms = [list(rng.permutation(n)) for _ in range(n_random)]
        targets = [d for d in _scored_diseases(explanation)
                   if any(a.disease == d for a in explanation.attributions)]
        attributed = []
        for d in targets:
            attr = next(a for a in explanation.attributions if a.disease == d)
            score = np.zeros(n)
            for it in attr.items:
                score[slot[(it.modality, it.item)]] = it.attribution
            attributed.append(list(np.argsort(-score, kind="stable")))
        curves = _curves(head, features, [*randoms, *attributed])  # (R + T, 2, n + 1, D)
        for t, d in enumerate(targets):
            j = model.panel.keys.index(d)
            own = curves[n_random + t, :, :, j]  # (2, n + 1)
            rand = curves[:n_random, :, :, j]  # (R, 2, n + 1)
            pairs.append(CurveResult(
                case_id=case.case_id, disease=d, n_items=n,
                deletion_aopc=aopc(own[0, 0], own[0, 1:]),
                deletion_aopc_random=float(np.mean([aopc(r[0, 0], r[0, 1:]) for r in rand])),
                insertion_aopc=-aopc(own[1, 0], own[1, 1:]),
                insertion_aopc_random=float(np.mean([-aopc(r[1, 0], r[1, 1:]) for r in rand]))))
    return _report(pairs, n_random)


def _report(pairs: list[CurveResult], n_random: int) -> FaithfulnessReport:
    def mean(name: str) -> float:
        return float(np.mean([getattr(p, name) for p in pairs])) if pairs else 0.0

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("inf") if a > 0 else 0.0

    d, dr, ins, insr = (mean(x) for x in ("deletion_aopc", "deletion_aopc_random", "insertion_aopc",
                                            "insertion_aopc_random"))
    return FaithfulnessReport(
        n_pairs=len(pairs), n_random_orders=n_random, deletion_aopc=d, deletion_aopc_random=dr,
        deletion_ratio=ratio(d, dr), insertion_aopc=ins, insertion_aopc_random=insr, insertion_ratio=ratio(ins, insr),
        deletion_beats_random=float(np.mean([p.deletion_aopc > p.deletion_aopc_random for p in pairs])) if pairs else 0.0,
        pairs=pairs)

