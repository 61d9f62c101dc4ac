"""Validation figures of a checkpoint come from cases no fitted operating point has seen,
and per-disease calibration is reported beside the pooled one."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from medfuse.model.head import DiseaseHead
from medfuse.record.case import PatientCase
from medfuse.train import encoders
from medfuse.train.encoders import calibrate, patient_halves, summarise_diagnosis

DISEASES = ["af", "htn", "dm"]


def noise_predictions(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Logits that carry no information about the labels: in-sample thresholds overfit them."""
    rng = np.random.default_rng(seed)
    return {"logits": rng.normal(size=(n, 3)), "labels": (rng.random((n, 3)) < 0.4).astype(float),
            "has_cxr": np.zeros(n, dtype=bool)}


def test_calibration_scores_each_half_with_thresholds_fitted_on_the_other(monkeypatch):
    # 40 patients, two cases each: a patient's cases always land in the same half.
    cases = [PatientCase(case_id=f"c{k}", patient_id=f"p{k // 2}") for k in range(80)]
    half = patient_halves(cases)
    assert half.sum() == 40 and all(half[k] == half[k + 1] for k in range(0, 80, 2))
    pred = noise_predictions(80)
    monkeypatch.setattr(encoders, "predict", lambda fusion, data: pred)
    model = SimpleNamespace(head=DiseaseHead(DISEASES), fusion=None, card={},
                            panel=SimpleNamespace(keys=DISEASES), config=SimpleNamespace(finding_labels=[]))
    result = calibrate(model, cases, val=object())
    diagnosis = result["diagnosis"]
    assert diagnosis["scored_on"] == "held out: 2-fold cross-fit by patient" and diagnosis["n_samples"] == 80

    # The same figures by hand: each half scored by a head fitted on the other half only.
    probs, y_pred = np.zeros((80, 3)), np.zeros((80, 3), dtype=int)
    for fit, score in ((half, ~half), (~half, half)):
        head = DiseaseHead(DISEASES)
        head.fit_temperature(pred["logits"][fit], pred["labels"][fit])
        head.fit_thresholds(head.predict_proba(pred["logits"][fit]), pred["labels"][fit])
        probs[score] = head.predict_proba(pred["logits"][score])
        y_pred[score] = head.predict(pred["logits"][score])
    assert diagnosis == summarise_diagnosis(pred["labels"], y_pred, probs, DISEASES) | {"scored_on": diagnosis["scored_on"]}

    # The model keeps the operating points fitted on every validation case ...
    full = DiseaseHead(DISEASES)
    full.fit_temperature(pred["logits"], pred["labels"])
    full.fit_thresholds(full.predict_proba(pred["logits"]), pred["labels"])
    assert np.allclose(model.head.thresholds, full.thresholds)
    # ... whose in-sample F1 on pure noise is the optimism the held-out figure avoids.
    in_sample = summarise_diagnosis(pred["labels"], full.predict(pred["logits"]), full.predict_proba(pred["logits"]),
                                    DISEASES)
    assert in_sample["macro_f1"] > diagnosis["macro_f1"]


def test_too_few_patients_for_two_halves_is_labelled_in_sample(monkeypatch):
    cases = [PatientCase(case_id=f"c{k}", patient_id="p0" if k < 5 else "p1") for k in range(8)]
    monkeypatch.setattr(encoders, "predict", lambda fusion, data: noise_predictions(8, seed=1))
    model = SimpleNamespace(head=DiseaseHead(DISEASES), fusion=None, card={},
                            panel=SimpleNamespace(keys=DISEASES), config=SimpleNamespace(finding_labels=[]))
    assert calibrate(model, cases, val=object())["diagnosis"]["scored_on"].startswith("in-sample")


def test_per_disease_ece_beside_pooled_ece():
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 1]])
    prob = np.array([[0.9, 0.05], [0.1, 0.95], [0.9, 0.05], [0.1, 0.95]])
    m = summarise_diagnosis(y, (prob >= 0.5).astype(int), prob, ["good", "bad"])
    assert m["per_disease_ece"] == {"good": 0.1, "bad": 0.25}
    assert m["ece"] == pytest.approx(0.175)
    # A disease with no case and no prediction has no F1 (None, not 0) and no macro weight.
    none = summarise_diagnosis(np.array([[1, 0], [0, 0]]), np.array([[1, 0], [0, 0]]), np.array([[0.9, 0.1], [0.1, 0.1]]),
                               ["af", "dm"])
    assert none["per_disease_f1"] == {"af": 1.0, "dm": None} and none["macro_f1"] == 1.0
