"""Disease head calibration: temperature scaling and per-disease operating thresholds.

The fusion model's head gives one logit per panel disease. On VALIDATION data:
- `fit_temperature` finds T minimising the binary cross-entropy of sigmoid(logit / T)
  (Guo et al. 2017, temperature scaling, applied per label of a multi-label head): one T
  shared by all diseases (default: robust on small validation sets) or one per disease;
- `fit_thresholds` picks, per disease, the probability threshold that maximises F1.
The values serialise to JSON (`to_dict` / `from_dict`) and travel with the checkpoint,
as torchxrayvision ships operating thresholds with its weights.

A disease with no positive (or no negative) validation case cannot be calibrated: it keeps
T = 1 and threshold 0.5, and `uncalibrated` lists it so the model card can say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_expit
from sklearn.metrics import precision_recall_curve

_LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))


def _array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _bce(logits: np.ndarray, labels: np.ndarray) -> float:
    # log_expit is the numerically stable log sigmoid.
    return float(-(labels * log_expit(logits) + (1 - labels) * log_expit(-logits)).mean())


class DiseaseHead:
    """Calibration of the (B, D) disease logits: temperatures (D,) and thresholds (D,)."""

    def __init__(self, diseases: Sequence[str]):
        self.diseases = list(diseases)
        D = len(self.diseases)
        self.temperature = np.ones(D)  # (D,)
        self.thresholds = np.full(D, 0.5)  # (D,)
        self.per_disease_temperature = False
        self.uncalibrated: list[str] = []
        self.n_fit = 0

    def _check(self, scores: np.ndarray, labels: np.ndarray) -> None:
        D = len(self.diseases)
        if scores.ndim != 2 or scores.shape[1] != D or labels.shape != scores.shape:
            raise ValueError(f"expected (n, {D}) scores and labels, got {scores.shape} and {labels.shape}")

    def fit_temperature(self, logits: Any, labels: Any, per_disease: bool = False) -> float | np.ndarray:
        """Fit temperature(s) on validation logits (n, D) and 0/1 labels (n, D); returns T (or (D,) Ts)."""
        z, y = _array(logits), _array(labels)
        self._check(z, y)
        usable = np.array([0 < y[:, j].sum() < len(y) for j in range(y.shape[1])])  # (D,) both classes seen
        self.uncalibrated = [d for d, ok in zip(self.diseases, usable, strict=True) if not ok]
        self.n_fit = int(len(y))
        self.per_disease_temperature = per_disease

        def fit(zz: np.ndarray, yy: np.ndarray) -> float:
            res = minimize_scalar(lambda log_t: _bce(zz / np.exp(log_t), yy), bounds=_LOG_T_BOUNDS, method="bounded")
            return float(np.exp(res.x))

        if per_disease:
            self.temperature = np.array([fit(z[:, j], y[:, j]) if usable[j] else 1.0 for j in range(z.shape[1])])
            return self.temperature.copy()
        t = fit(z[:, usable], y[:, usable]) if usable.any() else 1.0
        self.temperature = np.full(z.shape[1], t)
        return t

    def predict_proba(self, logits: Any) -> np.ndarray:
        """(n, D) calibrated probabilities sigmoid(logit / T)."""
        z = _array(logits)
        return expit(z / self.temperature)

    def fit_thresholds(self, probs: Any, labels: Any) -> np.ndarray:
        """Per disease, the threshold maximising F1 on validation probabilities (n, D); returns (D,)."""
        p, y = _array(probs), _array(labels)
        self._check(p, y)
        out = np.full(p.shape[1], 0.5)
        for j in range(p.shape[1]):
            if not 0 < y[:, j].sum() < len(y):
                if self.diseases[j] not in self.uncalibrated:
                    self.uncalibrated.append(self.diseases[j])
                continue
            precision, recall, thr = precision_recall_curve(y[:, j], p[:, j])
            f1 = 2 * precision[:-1] * recall[:-1] / np.clip(precision[:-1] + recall[:-1], 1e-12, None)
            best = np.flatnonzero(f1 >= f1.max() - 1e-12)
            # Among equally good thresholds take the highest: fewer false alarms at equal F1.
            out[j] = float(thr[best[-1]])
        self.thresholds = out
        return out.copy()

    def predict(self, logits: Any) -> np.ndarray:
        """(n, D) bool: calibrated probability >= the disease's threshold."""
        return self.predict_proba(logits) >= self.thresholds

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (the checkpoint's calibration.json)."""
        return {
            "diseases": self.diseases,
            "temperature": [float(t) for t in self.temperature],
            "thresholds": [float(t) for t in self.thresholds],
            "per_disease_temperature": self.per_disease_temperature,
            "uncalibrated": list(self.uncalibrated),
            "n_validation_cases": self.n_fit,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiseaseHead:
        """Inverse of `to_dict`."""
        head = cls(data["diseases"])
        D = len(head.diseases)
        head.temperature = np.asarray(data["temperature"], dtype=np.float64)
        head.thresholds = np.asarray(data["thresholds"], dtype=np.float64)
        if head.temperature.shape != (D,) or head.thresholds.shape != (D,):
            raise ValueError(f"calibration needs {D} temperatures and thresholds")
        head.per_disease_temperature = bool(data.get("per_disease_temperature", False))
        head.uncalibrated = list(data.get("uncalibrated", []))
        head.n_fit = int(data.get("n_validation_cases", 0))
        return head
