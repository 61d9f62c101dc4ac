"""Disease head calibration: temperature scaling recovers a known temperature, thresholds maximise F1,
uncalibratable diseases are reported, and the calibration round-trips through JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from medfuse.model.head import DiseaseHead

DISEASES = ["a", "b", "c"]


def _overconfident(n: int, temps: list[float], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z); the model reports z * T (over-confident by T)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, len(temps)))  # (n, D) true log-odds
    y = (rng.random((n, len(temps))) < 1 / (1 + np.exp(-z))).astype(float)
    return z * np.asarray(temps), y


def test_temperature_scaling_recovers_the_over_confidence():
    logits, y = _overconfident(6000, [3.0, 3.0, 3.0])
    head = DiseaseHead(DISEASES)
    t = head.fit_temperature(logits, y)
    assert isinstance(t, float) and t == pytest.approx(3.0, rel=0.08)
    probs = head.predict_proba(logits)
    # Calibrated: mean predicted probability in each decile matches the observed rate.
    p, obs = probs.ravel(), y.ravel()
    edges = np.quantile(p, np.linspace(0, 1, 11))
    bins = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, 9)
    gaps = [abs(p[bins == b].mean() - obs[bins == b].mean()) for b in range(10)]
    assert max(gaps) < 0.05


def test_per_disease_temperatures_and_torch_input():
    logits, y = _overconfident(6000, [0.5, 1.0, 4.0], seed=1)
    head = DiseaseHead(DISEASES)
    temps = head.fit_temperature(torch.tensor(logits), torch.tensor(y), per_disease=True)
    np.testing.assert_allclose(temps, [0.5, 1.0, 4.0], rtol=0.1)


def test_thresholds_maximise_f1_on_validation():
    rng = np.random.default_rng(2)
    y = (rng.random((400, 3)) < [[0.1, 0.3, 0.5]]).astype(float)
    probs = np.clip(0.35 * y + rng.random((400, 3)) * 0.65, 0, 1)
    head = DiseaseHead(DISEASES)
    thr = head.fit_thresholds(probs, y)
    def f1(truth: np.ndarray, pred: np.ndarray) -> float:
        tp = float((truth * pred).sum())
        return 2 * tp / (truth.sum() + pred.sum())

    for j in range(3):
        best = f1(y[:, j], probs[:, j] >= thr[j])
        grid = max(f1(y[:, j], probs[:, j] >= t) for t in np.unique(probs[:, j]))  # brute force
        assert best == pytest.approx(grid)
        assert best == pytest.approx(f1_score(y[:, j], probs[:, j] >= thr[j]))
    head.thresholds = np.array([0.5, 0.2, 0.9])
    assert head.predict(np.zeros((1, 3))).tolist() == [[True, True, False]]  # p = 0.5 against each threshold


def test_a_disease_without_positives_stays_uncalibrated():
    logits, y = _overconfident(500, [2.0, 2.0, 2.0], seed=3)
    y[:, 1] = 0  # no positive case of "b" in validation
    head = DiseaseHead(DISEASES)
    head.fit_temperature(logits, y, per_disease=True)
    thr = head.fit_thresholds(head.predict_proba(logits), y)
    assert head.temperature[1] == 1.0 and thr[1] == 0.5
    assert head.uncalibrated == ["b"]
    with pytest.raises(ValueError, match="expected"):
        head.fit_thresholds(np.zeros((4, 2)), np.zeros((4, 2)))


def test_calibration_round_trips_through_json():
    logits, y = _overconfident(800, [2.0, 1.0, 3.0], seed=4)
    head = DiseaseHead(DISEASES)
    head.fit_temperature(logits, y, per_disease=True)
    head.fit_thresholds(head.predict_proba(logits), y)
    again = DiseaseHead.from_dict(json.loads(json.dumps(head.to_dict())))
    assert again.diseases == DISEASES and again.n_fit == 800
    np.testing.assert_array_equal(again.predict_proba(logits), head.predict_proba(logits))
    np.testing.assert_array_equal(again.predict(logits), head.predict(logits))
    with pytest.raises(ValueError, match="3 temperatures"):
        DiseaseHead.from_dict({**head.to_dict(), "temperature": [1.0]})
