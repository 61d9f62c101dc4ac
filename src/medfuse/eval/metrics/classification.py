"""Multi-label diagnosis metrics: set Jaccard, F1/precision/recall, AUROC/AUPRC, calibration.

Conventions (stated so that numbers can be compared with papers):
- ``jaccard`` is the mean over samples of |pred ∩ gold| / |pred ∪ gold|; two empty sets
  agree perfectly (1.0), as in MedTVT-R1's reward and scikit-learn's
  ``jaccard_score(average="samples", zero_division=1)``.
- F1, precision and recall come from scikit-learn with ``zero_division=0``: a class that
  is never predicted but occurs has precision 0, not an undefined value that would be
  skipped. A class with no gold positive and no prediction has nothing to score: its
  per-class F1, precision and recall are NaN, it is left out of the macro means (which
  would otherwise count it as 0 and score perfect predictions below 1) and listed under
  ``f1_excluded``; with no class left the macro means are NaN.
- AUROC and AUPRC are computed from probabilities only (``y_prob``), never from the 0/1
  predictions. A class whose gold column holds a single value (all positive or all
  negative) has no AUROC (NaN); it is left out of ``macro_auroc`` and listed under
  ``auroc_excluded``. AUPRC is NaN for a class with no positive sample.
- ``ece`` is the expected calibration error over every (sample, class) probability, with
  equal-width bins, binned as ``sklearn.calibration.calibration_curve`` bins them; each
  class also gets its own ECE (``per_class[name]["ece"]``), since a pooled ECE can hide
  one badly calibrated disease behind many well calibrated ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
)

__all__ = ["expected_calibration_error", "jaccard_sets", "macro_f1", "multilabel_metrics", "reliability_bins",
           "scored_classes"]


def jaccard_sets(pred: Sequence[set | frozenset | list], gold: Sequence[set | frozenset | list]) -> list[float]:
    """Per-sample Jaccard index of predicted and gold label sets (empty vs empty = 1.0).

    >>> jaccard_sets([{"AF", "HF"}, set(), {"DM"}], [{"AF"}, set(), {"HTN"}])
    [0.5, 1.0, 0.0]
    """
    if len(pred) != len(gold):
        raise ValueError(f"pred and gold differ in length ({len(pred)} vs {len(gold)})")
    out: list[float] = []
    for p, g in zip(pred, gold, strict=True):
        p, g = set(p), set(g)
        union = p | g
        out.append(1.0 if not union else len(p & g) / len(union))
    return out


def _check_binary(name: str, a: np.ndarray) -> None:
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, classes), got shape {a.shape}")
    if not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1")


def reliability_bins(y_true: Any, y_prob: Any, n_bins: int = 10) -> dict[str, list[float]]:
    """Per-bin counts, mean predicted probability and observed positive rate (a reliability
    diagram's points) for binary outcomes; empty bins are left out.

    Bins are equal-width on [0, 1]; a probability on an inner edge falls in the lower bin
    (the binning of ``sklearn.calibration.calibration_curve``).
    """
    t = np.asarray(y_true, dtype=float).ravel()
    p = np.asarray(y_prob, dtype=float).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_prob differ in size ({t.size} vs {p.size})")
    if p.size and (np.nanmin(p) < 0 or np.nanmax(p) > 1 or np.isnan(p).any()):
        raise ValueError("probabilities must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_of = np.searchsorted(edges[1:-1], p)  # (N,) bin index per probability
    count = np.bincount(bin_of, minlength=n_bins)
    sum_prob = np.bincount(bin_of, weights=p, minlength=n_bins)
    sum_true = np.bincount(bin_of, weights=t, minlength=n_bins)
    keep = count > 0
    return {
        "bin_lower": edges[:-1][keep].tolist(),
        "bin_upper": edges[1:][keep].tolist(),
        "count": count[keep].astype(int).tolist(),
        "mean_prob": (sum_prob[keep] / count[keep]).tolist(),
        "positive_rate": (sum_true[keep] / count[keep]).tolist(),
    }


def expected_calibration_error(y_true: Any, y_prob: Any, n_bins: int = 10) -> float:
    """Expected calibration error: Σ_bins (n_bin / N) · |positive rate − mean probability|.

    `y_true` (0/1) and `y_prob` may be 1-D (one binary outcome) or 2-D (samples, classes),
    in which case every entry is one binary prediction.

    >>> expected_calibration_error([0, 1, 1, 0], [0.1, 0.9, 0.8, 0.3], n_bins=10)
    0.175
    """
    bins = reliability_bins(y_true, y_prob, n_bins)
    total = sum(bins["count"])
    if total == 0:
        return float("nan")
    gaps = np.abs(np.asarray(bins["positive_rate"]) - np.asarray(bins["mean_prob"]))
    return float(np.sum(np.asarray(bins["count"]) / total * gaps))


def scored_classes(y_true: Any, y_pred: Any) -> np.ndarray:
    """Column mask (classes,) of the classes F1 is defined for: some gold positive or some
    prediction. The others are left out of macro averages (see the module docstring)."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    return (t.sum(axis=0) > 0) | (p.sum(axis=0) > 0)


def macro_f1(y_true: Any, y_pred: Any) -> float:
    """Macro F1 of 0/1 matrices (samples, classes) over the classes it is defined for;
    NaN when there is none.

    >>> macro_f1([[1, 0, 0], [0, 0, 0]], [[1, 0, 0], [0, 0, 0]])  # two classes never occur
    1.0
    """
    return _macro_average(f1_score, np.asarray(y_true), np.asarray(y_pred))


def _macro_average(score: Any, t: np.ndarray, p: np.ndarray) -> float:
    """`score` (an sklearn F1/precision/recall function) macro-averaged over the scored classes."""
    labels = np.flatnonzero(scored_classes(t, p))
    if not len(labels):
        return float("nan")
    return float(score(t, p, labels=labels, average="macro", zero_division=0))


def multilabel_metrics(
    y_true: Any,
    y_pred: Any,
    y_prob: Any | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """All diagnosis metrics for 0/1 matrices `y_true`, `y_pred` of shape (samples, classes).

    `y_prob` (same shape, probabilities in [0, 1]) enables per-class AUROC/AUPRC, their
    macro means and the ECE; without it those are None. `names` label the classes
    (default ``class_0``...). Returns jaccard, micro/macro F1, precision and recall,
    per_class {name: {f1, precision, recall, support, auroc, auprc}}, macro_auroc,
    macro_auprc, auroc_excluded, f1_excluded, ece, n_samples and notes; per_class also
    holds each class's own ECE when `y_prob` is given.
    """
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    _check_binary("y_true", t)
    _check_binary("y_pred", p)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in shape ({t.shape} vs {p.shape})")
    n_samples, n_classes = t.shape
    names = list(names) if names is not None else [f"class_{j}" for j in range(n_classes)]
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} names for {n_classes} classes")
    t, p = t.astype(int), p.astype(int)

    result: dict[str, Any] = {"n_samples": n_samples, "notes": []}
    result["jaccard"] = (
        float(np.mean(jaccard_sets([set(np.flatnonzero(r)) for r in p], [set(np.flatnonzero(r)) for r in t])))
        if n_samples
        else float("nan")
    )
    result["micro_f1"] = float(f1_score(t, p, average="micro", zero_division=0))
    result["micro_precision"] = float(precision_score(t, p, average="micro", zero_division=0))
    result["micro_recall"] = float(recall_score(t, p, average="micro", zero_division=0))
    scored = scored_classes(t, p)  # (classes,)
    for avg_name, score in (("f1", f1_score), ("precision", precision_score), ("recall", recall_score)):
        result[f"macro_{avg_name}"] = _macro_average(score, t, p)
    precision, recall, f1, support = precision_recall_fscore_support(t, p, average=None, zero_division=0)

    prob: np.ndarray | None = None
    if y_prob is not None:
        prob = np.asarray(y_prob, dtype=float)
        if prob.shape != t.shape:
            raise ValueError(f"y_prob has shape {prob.shape}, expected {t.shape}")
        if np.isnan(prob).any() or prob.min() < 0 or prob.max() > 1:
            raise ValueError("y_prob must hold probabilities in [0, 1]")
        if np.isin(prob, (0.0, 1.0)).all():
            result["notes"].append("y_prob holds only 0 and 1: AUROC/AUPRC of hard labels are not ranking metrics")

    per_class: dict[str, dict[str, float | int | None]] = {}
    aurocs: list[float] = []
    auprcs: list[float] = []
    excluded: list[str] = []
    for j, name in enumerate(names):
        undefined = float("nan")
        entry: dict[str, float | int | None] = {
            "f1": float(f1[j]) if scored[j] else undefined,
            "precision": float(precision[j]) if scored[j] else undefined,
            "recall": float(recall[j]) if scored[j] else undefined,
            "support": int(support[j]),
            "auroc": None,
            "auprc": None,
            "ece": None,
        }
        if prob is not None:
            entry["ece"] = expected_calibration_error(t[:, j], prob[:, j])
            column = t[:, j]
            if column.min() == column.max():
                entry["auroc"] = float("nan")
                excluded.append(name)
            else:
                entry["auroc"] = float(roc_auc_score(column, prob[:, j]))
                aurocs.append(entry["auroc"])
            if column.sum() == 0:
                entry["auprc"] = float("nan")
            else:
                entry["auprc"] = float(average_precision_score(column, prob[:, j]))
                auprcs.append(entry["auprc"])
        per_class[name] = entry
    result["per_class"] = per_class
    result["macro_auroc"] = (float(np.mean(aurocs)) if aurocs else float("nan")) if prob is not None else None
    result["macro_auprc"] = (float(np.mean(auprcs)) if auprcs else float("nan")) if prob is not None else None
    result["auroc_excluded"] = excluded
    if excluded:
        result["notes"].append(
            f"AUROC undefined for {len(excluded)} class(es) whose gold labels are all one value; "
            "excluded from macro_auroc: " + ", ".join(excluded)
        )
    result["f1_excluded"] = [name for name, ok in zip(names, scored, strict=True) if not ok]
    if result["f1_excluded"]:
        result["notes"].append(
            f"F1 undefined for {len(result['f1_excluded'])} class(es) with no gold positive and no prediction; "
            "excluded from the macro means: " + ", ".join(result["f1_excluded"])
        )
    result["ece"] = expected_calibration_error(t, prob) if prob is not None else None
    return result
