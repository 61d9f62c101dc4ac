"""Site recalibration, `medfuse calibrate CKPT --cohort LABELLED --out CKPT2`: refit the
disease head's per-disease temperatures and F1-max thresholds on a new site's labelled
cohort, without retraining a weight.

A model calibrated on its training data is miscalibrated elsewhere: disease prevalence,
lab assays and case mix shift its scores. Temperature scaling and operating thresholds
(`medfuse.model.head.DiseaseHead`) are cheap to refit from one fusion pass over the
site's cases, which is all this does (no language-model generation).

Per disease, only the cases from which the model would assess it are used (a disease
none of whose evidence modalities a case has is declined by `diagnose`, so its score
there decides nothing). A disease with fewer than `min_positives` positive (or negative)
such cases keeps the checkpoint's calibration and is listed with the reason.

The report is honest about what it scores: "before" is the checkpoint's own calibration
on every case (not fitted on this cohort); "after" is the refit scored by 2-fold
cross-fitting by patient (`train.encoders.cross_fit_folds`: each half scored with values
fitted on the other half, pooled), so no case is scored at an operating point fitted on
it. The written checkpoint keeps the values fitted on all the cases, and its model card
(metadata.json) gets a `recalibration` entry with the cohort's name and size (never a
patient id), the date, both sets of figures and the diseases refit.
"""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.errors import InputError
from medfuse.record.case import PatientCase
from medfuse.record.store import check_output_apart

DEFAULT_MIN_POSITIVES = 5
SUMMARY_KEYS = ("macro_f1", "micro_f1", "jaccard", "macro_auroc", "ece")


def assessable_mask(model, cases: list[PatientCase]) -> np.ndarray:
    """(n, D) bool: the model assesses disease j for case i (it has one of j's evidence
    modalities; otherwise `diagnose` declines it for insufficient data)."""
    from medfuse.model.diagnosis import insufficient_diseases

    keys = model.panel.keys
    mask = np.ones((len(cases), len(keys)), dtype=bool)  # (n, D)
    for i, case in enumerate(cases):
        for key in insufficient_diseases(case, model.panel):
            mask[i, keys.index(key)] = False
    return mask


def diseases_to_refit(labels: np.ndarray, assessable: np.ndarray, keys: list[str],
                      min_positives: int) -> tuple[list[str], dict[str, str]]:
    """(keys to refit, {key: why it keeps its calibration}) from labels (n, D) and
    `assessable_mask` (n, D): a refit needs `min_positives` positives and negatives."""
    refit, kept = [], {}
    for j, key in enumerate(keys):
        rows = assessable[:, j]
        positives = int(labels[rows, j].sum())
        negatives = int(rows.sum()) - positives
        if not rows.any():
            kept[key] = "not assessable from this cohort's modalities"
        elif positives < min_positives:
            kept[key] = f"{positives} positive case(s), fewer than {min_positives}"
        elif negatives < min_positives:
            kept[key] = f"{negatives} negative case(s), fewer than {min_positives}"
        else:
            refit.append(key)
    return refit, kept


def refit_head(head, logits: np.ndarray, labels: np.ndarray, assessable: np.ndarray, refit: list[str]):
    """A copy of `head` whose diseases in `refit` get their own temperature and F1-max
    threshold fitted on their assessable rows of logits (n, D) and labels (n, D); the
    others (and any without both classes among these rows) keep `head`'s values."""
    from medfuse.model.head import DiseaseHead

    new = copy.deepcopy(head)
    for key in refit:
        j = new.diseases.index(key)
        rows = assessable[:, j]
        z, y = logits[rows, j : j + 1], labels[rows, j : j + 1]  # (m, 1)
        if not 0 < y.sum() < len(y):
            continue  # a cross-fitting half may lack a class: keep the old operating point there
        one = DiseaseHead([key])
        one.fit_temperature(z, y)
        one.fit_thresholds(one.predict_proba(z), y)
        new.temperature[j], new.thresholds[j] = one.temperature[0], one.thresholds[0]
        if key in new.uncalibrated:
            new.uncalibrated.remove(key)
    new.per_disease_temperature = new.per_disease_temperature or bool(refit)
    return new


def _scores(labels: np.ndarray, probs: np.ndarray, decided: np.ndarray, keys: list[str]) -> dict[str, Any]:
    """`summarise_diagnosis` of decisions (n, D), declined diseases counted absent."""
    from medfuse.train.encoders import summarise_diagnosis

    return summarise_diagnosis(labels, decided.astype(int), probs, keys)


def recalibrate(checkpoint: str | Path, cohort: str | Path, out: str | Path, *,
                min_positives: int = DEFAULT_MIN_POSITIVES, overwrite: bool = False) -> dict[str, Any]:
    """Refit `checkpoint`'s disease head on the labelled `cohort` and write the result to
    `out` (a new checkpoint, written atomically); returns the report (module docstring):
    cohort name and size, scored_on, refit / kept diseases, before / after figures and,
    per disease, support and old -> new temperature and threshold.

    Bad input (no such checkpoint or cohort, no labelled case, an existing `out` without
    `overwrite`, an `out` that is, holds or lies inside an input) raises `InputError`
    before anything is written.
    """
    from medfuse.model import MedFuse
    from medfuse.model.inputs import label_vector
    from medfuse.record.store import iter_cohort
    from medfuse.train.encoders import EncoderData, cross_fit_folds, out_name, predict

    check_output_apart(out, [checkpoint, cohort])
    out, cohort = Path(out), Path(cohort)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise InputError(out, "already exists (use --overwrite to replace it)")
    if not cohort.is_dir():
        raise InputError(cohort, "no such cohort folder")
    model = MedFuse.load(checkpoint)
    every = list(iter_cohort(cohort, load_bulk=True))
    cases = [c for c in every if c.labels is not None]
    if not cases:
        raise InputError(cohort, "no case has labels (import a labelled cohort, e.g. with medfuse import mimic-iv)")
    keys = model.panel.keys
    pred = predict(model.fusion, EncoderData.build(cases, model, with_texts=False))
    logits = pred["logits"].astype(np.float64)  # (n, D)
    labels = np.stack([label_vector(c, model.panel) for c in cases]).astype(int)  # (n, D)
    assessable = assessable_mask(model, cases)  # (n, D)
    refit, kept = diseases_to_refit(labels, assessable, keys, min_positives)

    old = model.head
    before_probs = old.predict_proba(logits)
    before = _scores(labels, before_probs, (before_probs >= old.thresholds) & assessable, keys)
    folds, scored_on = cross_fit_folds(cases)
    after_probs = np.zeros_like(logits)  # (n, D)
    after_decided = np.zeros(logits.shape, dtype=bool)  # (n, D)
    for fit, score in folds:
        head = refit_head(old, logits[fit], labels[fit], assessable[fit], refit)
        after_probs[score] = head.predict_proba(logits[score])
        after_decided[score] = after_probs[score] >= head.thresholds
    after = _scores(labels, after_probs, after_decided & assessable, keys)
    new = refit_head(old, logits, labels, assessable, refit)

    per_disease = {
        key: {"support": int(labels[:, j].sum()), "assessable_cases": int(assessable[:, j].sum()),
              "assessable_positives": int(labels[assessable[:, j], j].sum()),
              "refit": key in refit,
              "temperature": [round(float(old.temperature[j]), 4), round(float(new.temperature[j]), 4)],
              "threshold": [round(float(old.thresholds[j]), 4), round(float(new.thresholds[j]), 4)],
              "f1": [before["per_disease_f1"][key], after["per_disease_f1"][key]],
              "ece": [before["per_disease_ece"][key], after["per_disease_ece"][key]]}
        for j, key in enumerate(keys)
    }
    report = {
        "cohort": out_name(str(cohort)), "n_cases": len(cases), "n_patients": len({c.group_id for c in cases}),
        "n_unlabelled_skipped": len(every) - len(cases),
        "date": dt.datetime.now(dt.UTC).date().isoformat(),
        "min_positives": min_positives, "refit": refit, "kept": kept,
        "before": {"scored_on": "every case, at the checkpoint's calibration (not fitted on this cohort)",
                   **{k: before[k] for k in SUMMARY_KEYS}},
        "after": {"scored_on": scored_on, **{k: after[k] for k in SUMMARY_KEYS}},
        "per_disease": per_disease,
    }
    model.head = new
    model.card["recalibration"] = report
    model.save(out, overwrite=overwrite)
    return {**report, "out": str(out)}
