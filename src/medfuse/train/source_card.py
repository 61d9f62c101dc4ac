"""A per-source model card: every labelled cohort scored on its own, with bootstrap CIs and
sex / age-band subgroup gaps.

Pooling a pediatric pneumonia set with adult COVID-19 images and synthetic patients hides
where a model fails, so each source is reported separately (`source_card`):

- per panel disease the source annotates: AUROC of the calibrated probability and F1 at
  the checkpoint's stored threshold, each with a 95 % percentile bootstrap CI
  (`medfuse.eval.bootstrap.bootstrap_ci`) that resamples PATIENTS (a patient's images
  move together, so repeat images of one patient do not narrow the interval);
- per image finding label it annotates (image level, e.g. NIH cardiomegaly): AUROC of the
  finding head's image-level score, the max presence probability over the label's slots;
- subgroups: per sex and per age band (`AGE_BANDS`) where the source records them, the
  same AUROC / F1 per group and the gap (largest minus smallest group value, over groups
  with at least `min_class` positive and negative cases) with a bootstrap CI of the gap.
  A source without sex or age says so ("not recorded") instead of reporting nothing.

A metric that cannot be computed (one class only) is None with the reason. No patient id
or record content is written, only counts and figures. `write_source_card` stores the
result in the checkpoint's model card, as `per_source_evaluation` of its last training
stage (the stage whose model it scores; metadata.json keeps the stages whole).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.eval.bootstrap import bootstrap_ci
from medfuse.record.case import PatientCase

AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("0-17", 0, 18), ("18-39", 18, 40), ("40-64", 40, 65), ("65+", 65, 200))
DEFAULT_MIN_CLASS = 5
DEFAULT_RESAMPLES = 1000


@dataclass
class LabelledSource:
    """One labelled cohort to score and what it annotates."""

    name: str  # a set's name (never a path or a patient id)
    cases: list[PatientCase]
    diseases: tuple[str, ...] | None = None  # panel keys it annotates; None: every panel disease
    findings: tuple[str, ...] = ()  # image finding labels it annotates at image level
    note: str | None = None  # how the cases were chosen (e.g. "held-out patients")


def age_band(age: float | None) -> str | None:
    """The `AGE_BANDS` name of an age in years; None when unknown."""
    if age is None:
        return None
    return next((name for name, lo, hi in AGE_BANDS if lo <= age < hi), None)


def _auroc(y: np.ndarray, s: np.ndarray, w: np.ndarray | None = None) -> float:
    from sklearn.metrics import roc_auc_score

    keep = slice(None) if w is None else w > 0
    y, s = y[keep], s[keep]
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, s, sample_weight=None if w is None else w[keep]))


def _f1(y: np.ndarray, pred: np.ndarray, w: np.ndarray | None = None) -> float:
    w = np.ones(len(y)) if w is None else w
    tp = float((w * (y == 1) * (pred == 1)).sum())
    fp = float((w * (y == 0) * (pred == 1)).sum())
    fn = float((w * (y == 1) * (pred == 0)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else float("nan")


class _PatientBootstrap:
    """Percentile bootstrap over patients: a resample of patients becomes per-row weights
    (how often each row's patient was drawn), so a metric is one weighted call."""

    def __init__(self, groups: Sequence[str], n_resamples: int, seed: int):
        ids = {g: i for i, g in enumerate(dict.fromkeys(groups))}
        self.patient_of_row = np.array([ids[g] for g in groups])  # (n,)
        self.n_patients = len(ids)
        self.n_resamples, self.seed = n_resamples, seed

    def ci(self, metric: Callable[[np.ndarray], float]) -> list[float] | None:
        """95 % interval of metric(row weights), None when no resample defines it."""
        def statistic(patients: np.ndarray) -> float:
            counts = np.bincount(patients.astype(int), minlength=self.n_patients)
            return metric(counts[self.patient_of_row].astype(float))

        lo, hi = bootstrap_ci(np.arange(self.n_patients), statistic, n_resamples=self.n_resamples, seed=self.seed)
        return None if np.isnan(lo) else [round(lo, 3), round(hi, 3)]


def _rounded(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 3)


def _scored(y: np.ndarray, score: np.ndarray, pred: np.ndarray | None, boot: _PatientBootstrap,
            rows: np.ndarray | None = None) -> dict[str, Any]:
    """AUROC (and F1 when `pred` is given) with patient-bootstrap CIs on `rows` (a bool mask)."""
    rows = np.ones(len(y), bool) if rows is None else rows
    m = rows.astype(float)
    out: dict[str, Any] = {"n": int(rows.sum()), "n_positive": int(y[rows].sum())}
    auroc = _auroc(y, score, m)
    out["auroc"], out["auroc_ci95"] = _rounded(auroc), None if np.isnan(auroc) else boot.ci(
        lambda w: _auroc(y, score, w * m))
    if pred is not None:
        f1 = _f1(y, pred, m)
        out["f1"], out["f1_ci95"] = _rounded(f1), None if np.isnan(f1) else boot.ci(lambda w: _f1(y, pred, w * m))
    if np.isnan(auroc):
        out["why"] = "one class only"
    return out


def subgroup_gaps(y: np.ndarray, score: np.ndarray, pred: np.ndarray, groups: list[str | None],
                  boot: _PatientBootstrap, min_class: int) -> dict[str, Any]:
    """Per subgroup AUROC / F1 and the gap between the best and worst eligible group
    (>= `min_class` positive and negative cases), with a bootstrap CI of the gap."""
    names = sorted({g for g in groups if g is not None})
    labels = np.array([g or "" for g in groups])
    per_group = {g: _scored(y, score, pred, boot, labels == g) for g in names}
    eligible = [g for g in names if min(per_group[g]["n_positive"], per_group[g]["n"] - per_group[g]["n_positive"])
                >= min_class]
    out: dict[str, Any] = {"groups": per_group, "unknown": int(sum(g is None for g in groups))}
    if len(eligible) < 2:
        out["gap"] = None
        out["why"] = f"fewer than two groups with >= {min_class} positive and negative cases"
        return out
    masks = {g: (labels == g).astype(float) for g in eligible}
    gaps: dict[str, Any] = {}
    for name, metric in (("auroc", lambda w, m: _auroc(y, score, w * m)), ("f1", lambda w, m: _f1(y, pred, w * m))):
        def spread(w: np.ndarray, metric=metric) -> float:
            values = [metric(w, m) for m in masks.values()]
            return float("nan") if any(np.isnan(values)) else max(values) - min(values)

        value = spread(np.ones(len(y)))
        worst = min(eligible, key=lambda g: -1 if per_group[g][name] is None else per_group[g][name])
        gaps[name] = {"gap": _rounded(value), "gap_ci95": boot.ci(spread), "worst_group": worst}
    out["gap"] = gaps
    return out


def score_source(model: Any, source: LabelledSource, *, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                 min_class: int = DEFAULT_MIN_CLASS) -> dict[str, Any]:
    """The card entry of one source (module docstring); `model` is a `MedFuse`."""
    from medfuse.model.inputs import label_vector
    from medfuse.train.encoders import EncoderData, predict
    from medfuse.train.mixed import image_finding_labels

    cases = [c for c in source.cases if c.labels is not None]
    entry: dict[str, Any] = {"name": source.name, "n_cases": len(cases),
                             "n_patients": len({c.group_id for c in cases})}
    if source.note:
        entry["note"] = source.note
    if not cases:
        entry["why"] = "no labelled case"
        return entry
    keys = model.panel.keys
    pred = predict(model.fusion, EncoderData.build(cases, model, with_texts=False))
    probs = np.asarray(model.head.predict_proba(pred["logits"]), dtype=float)  # (n, D)
    decided = (probs >= np.asarray(model.head.thresholds)[None, :]).astype(int)  # (n, D)
    labels = np.stack([label_vector(c, model.panel) for c in cases]).astype(int)  # (n, D)
    boot = _PatientBootstrap([c.group_id for c in cases], n_resamples, seed)
    sexes = [c.demographics.sex if c.demographics.sex in ("F", "M") else None for c in cases]
    ages = [age_band(c.demographics.age) for c in cases]
    recorded = {"sex": sum(s is not None for s in sexes), "age": sum(a is not None for a in ages)}
    entry["demographics_recorded"] = {k: (f"{v} of {len(cases)} cases" if v else "not recorded")
                                      for k, v in recorded.items()}

    annotated = keys if source.diseases is None else [k for k in keys if k in source.diseases]
    entry["diseases"] = {}
    for key in annotated:
        j = keys.index(key)
        y, s, p = labels[:, j], probs[:, j], decided[:, j]
        result = _scored(y, s, p, boot) | {"threshold": round(float(model.head.thresholds[j]), 4)}
        result["subgroups"] = {name: (subgroup_gaps(y, s, p, groups, boot, min_class) if recorded[name]
                                      else "not recorded by this source")
                               for name, groups in (("sex", sexes), ("age", ages))}
        entry["diseases"][key] = result

    labels_q = model.config.finding_labels
    if source.findings and "finding_prob" in pred:
        from medfuse.model.findings import SLOTS_PER_LABEL

        image_score = pred["finding_prob"].reshape(len(cases), len(labels_q), SLOTS_PER_LABEL).max(-1)  # (n, L)
        image_truth = np.stack([image_finding_labels(c, labels_q) for c in cases]).astype(int)  # (n, L)
        has_image = pred["has_cxr"].astype(bool)
        entry["findings"] = {
            label: _scored(image_truth[:, q], image_score[:, q], None, boot, has_image)
            for q, label in enumerate(labels_q) if label in source.findings
        }
    return entry


def source_card(model: Any, sources: Sequence[LabelledSource], *, n_resamples: int = DEFAULT_RESAMPLES,
                seed: int = 0, min_class: int = DEFAULT_MIN_CLASS) -> dict[str, Any]:
    """Every source scored on its own (`score_source`), plus how it was scored."""
    return {
        "protocol": (f"per source: AUROC of the calibrated probability, F1 at the stored threshold; "
                     f"95 % percentile bootstrap CIs over patients ({n_resamples} resamples); "
                     f"subgroup gaps = best minus worst group with >= {min_class} positive and negative cases; "
                     f"age bands {', '.join(b[0] for b in AGE_BANDS)}"),
        "sources": [score_source(model, s, n_resamples=n_resamples, seed=seed, min_class=min_class) for s in sources],
    }


def write_source_card(model: Any, checkpoint: str | Path, card: dict[str, Any]) -> None:
    """Store `card` as `per_source_evaluation` of the model card's last training stage and
    rewrite the checkpoint (`MedFuse.save`); `InputError` when it has no training stage."""
    from medfuse.errors import InputError

    stages = model.card.get("stages") or []
    if not stages:
        raise InputError(checkpoint, "the checkpoint has no training stage to attach a per-source card to")
    stages[-1] = {**stages[-1], "per_source_evaluation": card}
    model.card["stages"] = stages
    model.save(checkpoint, overwrite=True)
