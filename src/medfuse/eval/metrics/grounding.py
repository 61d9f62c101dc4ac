"""Grounding metrics: box IoU, one-to-one Hungarian matching, Acc@IoU, precision/recall/F1.

Boxes are ``[x1, y1, x2, y2]`` in one coordinate system per image (medfuse uses the
0-999 grid of DESIGN.md), with continuous-coordinate areas ``(x2-x1)·(y2-y1)`` as in
`medfuse.record.boxes.box_iou` and COCO. A malformed predicted box (not four finite
numbers, or x2 < x1 / y2 < y1) overlaps nothing: it counts as a prediction that matches
no gold box instead of stopping the evaluation.

Definitions, pooled over every box of every image (micro averages). The boxes of one
image are those answering one query (one finding label): a box given for another label
is the caller's to count as an unmatched prediction (`unmatched_extra`).
- matching pairs each gold box with at most one prediction and vice versa
  (``scipy.optimize.linear_sum_assignment``). At a threshold t, the assignment first
  maximises the number of pairs with IoU >= t, then their total IoU;
- ``precision`` = matched / predicted, ``recall`` = matched / gold, ``f1`` their harmonic
  mean, at IoU 0.5: the headline, since it is the one number that both missed gold boxes
  and surplus predictions lower;
- an image has ``max(n_gold, n_pred)`` *slots*: one per gold box, plus one per
  prediction beyond the number of gold boxes (a surplus box is a false positive, and
  it takes a slot that no match can fill);
- ``acc_iou_<t>`` = pairs with IoU >= t / slots. It is the share of gold boxes found
  when a model predicts no more boxes than there are, and falls with every surplus box:
  an image whose predictions are more than twice its gold boxes scores below 0.5 at
  every threshold, and a grid of 2,256 boxes over one gold box scores 1/2,256;
- ``mean_iou`` = the IoU of the assignment of largest total IoU, summed, / slots (a gold
  box left without a prediction and a surplus prediction each add 0);
- a ratio with nothing to divide (no gold boxes, or no predictions) is 0.0; ``n_gold``,
  ``n_pred``, ``n_matched`` and ``n_slots`` say when that happened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from medfuse.record import boxes as record_boxes

__all__ = ["ACC_THRESHOLDS", "box_iou", "grounding_counts", "grounding_metrics", "iou_matrix", "match_boxes",
           "pool_grounding_counts"]

ACC_THRESHOLDS = (0.25, 0.5, 0.75)
F1_THRESHOLD = 0.5


def _valid_box(box: Sequence[float]) -> bool:
    try:
        if len(box) != 4:
            return False
        x1, y1, x2, y2 = (float(v) for v in box)
    except (TypeError, ValueError):
        return False
    return all(math.isfinite(v) for v in (x1, y1, x2, y2)) and x2 >= x1 and y2 >= y1


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``[x1, y1, x2, y2]`` boxes; 0.0 when either box is malformed.

    >>> box_iou([0, 0, 10, 10], [5, 0, 15, 10])
    0.3333333333333333
    >>> box_iou([10, 10, 0, 0], [0, 0, 10, 10])  # corners reversed: not a box
    0.0
    """
    if not (_valid_box(a) and _valid_box(b)):
        return 0.0
    return record_boxes.box_iou(a, b)


def iou_matrix(pred: Sequence[Sequence[float]], gold: Sequence[Sequence[float]]) -> np.ndarray:
    """IoU of every predicted box with every gold box, shape (n_pred, n_gold).

    Vectorised; agrees with `box_iou` entry by entry (malformed boxes give 0 rows/columns).
    """
    n_p, n_g = len(pred), len(gold)
    if n_p == 0 or n_g == 0:
        return np.zeros((n_p, n_g))
    valid_p = np.array([_valid_box(b) for b in pred])
    valid_g = np.array([_valid_box(b) for b in gold])
    p = np.array([[float(v) for v in b] if ok else [0.0] * 4 for b, ok in zip(pred, valid_p, strict=True)])  # (P, 4)
    g = np.array([[float(v) for v in b] if ok else [0.0] * 4 for b, ok in zip(gold, valid_g, strict=True)])  # (G, 4)
    iw = np.clip(np.minimum(p[:, None, 2], g[None, :, 2]) - np.maximum(p[:, None, 0], g[None, :, 0]), 0, None)  # (P, G)
    ih = np.clip(np.minimum(p[:, None, 3], g[None, :, 3]) - np.maximum(p[:, None, 1], g[None, :, 1]), 0, None)  # (P, G)
    inter = iw * ih
    area_p = (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])  # (P,)
    area_g = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])  # (G,)
    union = area_p[:, None] + area_g[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    # Two identical zero-area boxes are a perfect match, as in record.boxes.box_iou.
    same = (union <= 0) & np.all(p[:, None, :] == g[None, :, :], axis=2)
    iou = np.where(same, 1.0, iou)
    iou[~valid_p, :] = 0.0
    iou[:, ~valid_g] = 0.0
    return iou


def match_boxes(
    pred: Sequence[Sequence[float]], gold: Sequence[Sequence[float]], iou_threshold: float = 0.5
) -> list[tuple[int, int, float]]:
    """One-to-one matches ``(pred_index, gold_index, iou)`` with IoU >= `iou_threshold`.

    The assignment maximises the number of such pairs and, among those, their total IoU
    (Hungarian algorithm); a threshold of 0 keeps only pairs that overlap at all.

    >>> match_boxes([[0, 0, 10, 10], [100, 100, 120, 120]], [[1, 1, 10, 10]])
    [(0, 0, 0.81)]
    """
    iou = iou_matrix(pred, gold)
    if iou.size == 0:
        return []
    eligible = (iou >= iou_threshold) & (iou > 0)
    if not eligible.any():
        return []
    # Each eligible pair is worth more than any sum of IoU gains (at most min(P, G)), so
    # the number of matches is maximised first and the total IoU second.
    bonus = float(min(iou.shape) + 1)
    weight = np.where(eligible, bonus + iou, 0.0)  # (P, G)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return [(int(r), int(c), float(iou[r, c])) for r, c in zip(rows, cols, strict=True) if eligible[r, c]]


def grounding_counts(
    pred: Sequence[Sequence[float]], gold: Sequence[Sequence[float]], unmatched_extra: int = 0
) -> dict[str, float]:
    """The per-image quantities the grounding metrics pool: n_gold, n_pred, n_slots,
    matched_<t> per Acc@IoU threshold, iou_sum (see the module docstring).

    `unmatched_extra` counts predicted boxes that can match nothing (given for another
    label than the one asked for): they are predictions, so they take slots and lower
    precision, but are not offered to the matching.
    """
    n_pred = len(pred) + unmatched_extra
    counts: dict[str, float] = {"n_gold": len(gold), "n_pred": n_pred, "n_slots": max(len(gold), n_pred),
                                "iou_sum": 0.0, **{f"matched_{t}": 0 for t in ACC_THRESHOLDS}}
    if pred and gold:
        for t in ACC_THRESHOLDS:
            counts[f"matched_{t}"] = len(match_boxes(pred, gold, t))
        iou = iou_matrix(pred, gold)
        rows, cols = linear_sum_assignment(iou, maximize=True)  # largest total IoU
        counts["iou_sum"] = float(iou[rows, cols].sum())
    return counts


def pool_grounding_counts(counts: Sequence[dict[str, float]]) -> dict[str, Any]:
    """The grounding metrics of images whose `grounding_counts` are given (micro averages)."""

    def total(key: str) -> float:
        return float(sum(c[key] for c in counts))

    def ratio(num: float, den: float) -> float:
        return num / den if den else 0.0

    n_gold, n_pred, n_slots = total("n_gold"), total("n_pred"), total("n_slots")
    n_matched = total(f"matched_{F1_THRESHOLD}")
    precision, recall = ratio(n_matched, n_pred), ratio(n_matched, n_gold)
    out: dict[str, Any] = {
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "precision": precision,
        "recall": recall,
        **{f"acc_iou_{t}": ratio(total(f"matched_{t}"), n_slots) for t in ACC_THRESHOLDS},
        "mean_iou": ratio(total("iou_sum"), n_slots),
    }
    out.update(n_images=len(counts), n_gold=int(n_gold), n_pred=int(n_pred), n_matched=int(n_matched),
               n_slots=int(n_slots))
    return out


def grounding_metrics(
    preds: Sequence[Sequence[Sequence[float]]], golds: Sequence[Sequence[Sequence[float]]]
) -> dict[str, Any]:
    """Grounding metrics over images: `preds[i]` and `golds[i]` are the boxes of image i
    for one finding label.

    Returns f1, precision, recall (at IoU 0.5), acc_iou_0.25, acc_iou_0.5, acc_iou_0.75,
    mean_iou, n_images, n_gold, n_pred, n_matched, n_slots (see the module docstring).

    >>> m = grounding_metrics([[[0, 0, 10, 10]], []], [[[0, 0, 10, 20]], [[5, 5, 9, 9]]])
    >>> m["acc_iou_0.5"], m["acc_iou_0.75"], m["precision"], m["recall"]
    (0.5, 0.0, 1.0, 0.5)
    >>> grid = [[x, y, x + 20, y + 20] for x in range(0, 940, 20) for y in range(0, 960, 20)]
    >>> len(grid), grounding_metrics([grid], [[[0, 0, 20, 20]]])["acc_iou_0.5"] == 1 / len(grid)
    (2256, True)
    """
    if len(preds) != len(golds):
        raise ValueError(f"preds and golds differ in length ({len(preds)} vs {len(golds)})")
    return pool_grounding_counts([grounding_counts(p, g) for p, g in zip(preds, golds, strict=True)])
