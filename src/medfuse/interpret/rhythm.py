"""Rhythm class from RR irregularity, P waves and signal quality: a small, transparent model.

The ECG reader (`medfuse.interpret.ecg`) finds the beats; this module turns them into
rhythm features and a rhythm class among sinus (N), atrial fibrillation (A), other
rhythm (O) and too noisy to read (~), the four classes of the PhysioNet/CinC 2017
challenge.

Features (`rhythm_features`), each a published AF or signal-quality marker:
- RR irregularity: coefficient of variation, RMSSD / mean RR, median successive
  difference / median RR (robust to a single ectopic beat), the share of successive
  differences above 10 % of the mean RR (a pNN50 that does not depend on the rate),
  the turning-point ratio (2/3 for a random sequence; Dash et al. 2009), the Shannon
  entropy of the RR histogram (Dash et al. 2009) and the coefficient of sample entropy
  COSEn (Lake & Moorman 2011, made for short AF recordings), the heart rate; two that
  isolated ectopic beats barely move but AF does: the share of successive-difference
  pairs near the origin of the Lorenz (Poincare) plot of dRR (the idea behind AF
  evidence, Sarkar et al. 2008) and the share of RR intervals within 10 % of the median;
- atrial activity: the reader's share of beats with a repeating P wave and the P
  template's coherence; on the rhythm lead's median beat, the P-window deflection over
  the QRS; after subtracting the median beat (QRST cancellation), the residual's size
  before each QRS over the QRS and the share of its power at 4-10 Hz, where
  fibrillatory waves lie;
- quality: QRS template correlation, QRS-to-background ratio and bSQI, the agreement
  of two independent R-peak detectors (Li, Mark & Clifford 2008); per-beat template
  correlation (its 10th percentile and the share of beats below 0.7), which sees noise
  confined to part of a recording that the median correlation misses.

The classifier is a multinomial logistic regression on standardised features, stored as
plain numbers in `knowledge/data/rhythm_model.json` (no pickle) and evaluated here with
numpy; `fit_rhythm_model` (scikit-learn) writes that file. Every coefficient can be
read: positive weight of a feature on a class means more of it makes that class likelier.
It is fitted without class re-weighting, so its probabilities are calibrated to the
class mix it was trained on (CinC-2017: about half sinus, a sixth AF, a quarter other,
a tenth noisy); benchmarks/bench_real_ecg.py reports their calibration out of fold.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.errors import InputError

RHYTHM_CLASSES: tuple[str, ...] = ("N", "A", "O", "~")
FEATURES: tuple[str, ...] = (
    "log_hr", "rr_cv", "rmssd_ratio", "successive_ratio", "irregular_fraction", "turning_point_ratio",
    "rr_shannon_entropy", "cosen", "p_wave_present", "p_coherence", "log_p_wave_ratio", "log_tq_residual",
    "log_tq_fwave_share", "qrs_correlation", "log_qrs_snr", "detector_agreement",
    "lorenz_origin", "regular_fraction", "beat_correlation_p10", "bad_beat_fraction",
)
MODEL_FILE = "rhythm_model.json"

_IRREGULAR_STEP = 0.10       # share of mean RR a successive difference must exceed to count
_ENTROPY_BINS = 16           # RR histogram bins (Dash et al. 2009)
_SAMPEN_R_S = 0.03           # tolerance r (s) for COSEn, as Lake & Moorman chose for AF
_MATCH_S = 0.15              # two detectors' beats within this count as the same beat (bSQI)
_LORENZ_CELL = 0.06          # half-width (share of the median RR) of the Lorenz plot's central cell
_REGULAR_BAND = 0.10         # an RR within this share of the median RR counts as regular
_BAD_BEAT_CORRELATION = 0.7  # a beat correlating less with the median beat counts as bad


# ---------------------------------------------------------------- features

def rr_irregularity(rr_s: np.ndarray) -> dict[str, float]:
    """RR-irregularity features of a sequence of RR intervals in seconds (>= 3 intervals)."""
    rr = np.asarray(rr_s, dtype=np.float64)
    if rr.size < 3:
        raise ValueError("at least 3 RR intervals are needed")
    mean = float(rr.mean())
    d = np.diff(rr)
    # Turning points: a middle interval above or below both neighbours.
    mid = rr[1:-1]
    turning = int(np.sum(((mid > rr[:-2]) & (mid > rr[2:])) | ((mid < rr[:-2]) & (mid < rr[2:]))))
    median = float(np.median(rr))
    # Lorenz plot of successive differences (dRR_i, dRR_i+1): regular beats sit in the
    # central cell; one ectopic beat with its pause leaves it for two points only, AF
    # scatters nearly every point.
    d_rel = d / median
    central = (np.abs(d_rel[1:]) < _LORENZ_CELL) & (np.abs(d_rel[:-1]) < _LORENZ_CELL)
    return {
        "log_hr": math.log(60.0 / mean),
        "rr_cv": float(rr.std(ddof=1) / mean),
        "rmssd_ratio": float(np.sqrt(np.mean(d**2)) / mean),
        "successive_ratio": float(np.median(np.abs(d)) / np.median(rr)),
        "irregular_fraction": float(np.mean(np.abs(d) > _IRREGULAR_STEP * mean)),
        "turning_point_ratio": turning / (rr.size - 2),
        "rr_shannon_entropy": _shannon_entropy(rr),
        "cosen": _cosen(rr),
        "lorenz_origin": float(central.mean()),
        "regular_fraction": float(np.mean(np.abs(rr - median) <= _REGULAR_BAND * median)),
    }


def _shannon_entropy(rr: np.ndarray) -> float:
    """Entropy (bits / log2 of the bin count, so 0..1) of the RR histogram, 16 equal bins
    between the smallest and largest interval."""
    if np.ptp(rr) <= 0:
        return 0.0
    counts, _ = np.histogram(rr, bins=_ENTROPY_BINS)
    p = counts[counts > 0] / rr.size
    return float(-(p * np.log2(p)).sum() / math.log2(_ENTROPY_BINS))


def _cosen(rr: np.ndarray) -> float:
    """Coefficient of sample entropy: SampEn(m=1, r=30 ms) + ln(2r) - ln(mean RR).

    With no match of length 2 (few beats, or every pair distinct) SampEn is undefined;
    it is then taken as ln(B + 1), B the count of length-1 matches: the value one match
    more would give, so that fewer similar intervals still mean more entropy.
    """
    r = _SAMPEN_R_S
    x = rr
    n = x.size
    close1 = np.abs(x[:-1, None] - x[None, :-1]) <= r                 # (n-1, n-1) templates of length 1
    b = (close1.sum() - (n - 1)) / 2                                  # pairs i < j
    close2 = close1[:-1, :-1] & (np.abs(x[1:, None] - x[None, 1:]) <= r)[: n - 2, : n - 2]
    a = (close2.sum() - (n - 2)) / 2
    sampen = -math.log(a / b) if a > 0 and b > 0 else math.log(b + 1.0)
    return float(sampen + math.log(2 * r) - math.log(float(np.mean(rr))))


def detector_agreement(x: np.ndarray, rpeaks: np.ndarray, fs: float) -> float:
    """bSQI: F1 of the match between `rpeaks` and a second, independent detector
    (Pan-Tompkins as implemented by neurokit2) on the same cleaned lead.

    Noise fools two detectors differently, a clean ECG not at all: near 1 on clean
    recordings, low on noisy ones.
    """
    import neurokit2 as nk

    try:
        _, info = nk.ecg_peaks(x, sampling_rate=int(fs), method="pantompkins1985")
        other = np.asarray(info["ECG_R_Peaks"], dtype=np.int64)
    except Exception:  # neurokit2 raises assorted errors on pathological input
        return 0.0
    if other.size == 0 or rpeaks.size == 0:
        return 0.0
    tol = _MATCH_S * fs
    # Pan-Tompkins marks the QRS a few samples from the apex: match by distance.
    nearest = np.abs(rpeaks[:, None] - other[None, :]).min(axis=1)
    matched = int(np.sum(nearest <= tol))
    return 2.0 * matched / (rpeaks.size + other.size)


def beat_quality(x: np.ndarray, rpeaks: np.ndarray, fs: float) -> dict[str, float]:
    """Per-beat template correlation on one cleaned lead (`x` at `fs`, R peaks in samples).

    Each beat (200 ms before to 400 ms after R) is correlated with the median beat: the
    10th percentile and the share of beats under 0.7. Noise over a few seconds of a
    recording (a handheld device losing contact) spoils those beats and leaves the
    median correlation, which the reader gates on, intact.
    """
    before, after = int(0.2 * fs), int(0.4 * fs)
    ok = (rpeaks - before >= 0) & (rpeaks + after < x.size)
    if ok.sum() < 3:
        return {"beat_correlation_p10": 0.0, "bad_beat_fraction": 1.0}
    beats = x[rpeaks[ok][:, None] + np.arange(-before, after)[None, :]]  # (beats, 600 ms)
    beats = beats - beats.mean(axis=1, keepdims=True)
    template = np.median(beats, axis=0)
    template = template - template.mean()
    corr = beats @ template / (np.linalg.norm(beats, axis=1) * np.linalg.norm(template) + 1e-12)
    return {"beat_correlation_p10": float(np.percentile(corr, 10)),
            "bad_beat_fraction": float(np.mean(corr < _BAD_BEAT_CORRELATION))}


def atrial_activity(x: np.ndarray, rpeaks: np.ndarray, fs: float) -> dict[str, float]:
    """Atrial-activity features of one cleaned, upright lead (`x` at `fs`, R peaks in samples).

    Averaging beats keeps a P wave (locked to the QRS) and cancels fibrillatory waves
    (not locked): the median beat's P-window deflection over its QRS is large in sinus
    rhythm and small in AF. What the median beat does not explain before each QRS (the
    residual after QRST cancellation) is larger in AF and concentrated at 4-10 Hz.
    Logarithms, since these ratios span decades.
    """
    before, after = int(0.35 * fs), int(0.45 * fs)
    rr_med = float(np.median(np.diff(rpeaks))) if rpeaks.size > 1 else 0.35 * fs
    ok = (rpeaks - before >= 0) & (rpeaks + after < x.size)
    if ok.sum() < 3:
        return {"log_p_wave_ratio": math.log(1e-3), "log_tq_residual": 0.0, "log_tq_fwave_share": math.log(1e-3)}
    beats = x[rpeaks[ok][:, None] + np.arange(-before, after)[None, :]]  # (beats, 800 ms)
    med = np.median(beats, axis=0)
    qrs = float(np.ptp(med[before - int(0.05 * fs): before + int(0.05 * fs)])) + 1e-9
    # P window: up to 300 ms before R (less at fast rates, where the T wave comes close), to 80 ms before R.
    p_from = before - int(min(0.3, 0.45 * rr_med / fs) * fs)
    p = med[p_from: before - int(0.08 * fs)]
    p_detrended = p - np.linspace(p[0], p[-1], p.size)
    residual = (beats - med)[:, before - int(0.3 * fs): before - int(0.08 * fs)]  # (beats, 220 ms)
    residual = residual - residual.mean(axis=1, keepdims=True)
    from scipy.signal import welch

    freqs, power = welch(residual, fs=fs, nperseg=residual.shape[1], axis=1)
    power = power.mean(axis=0)
    fwave = power[(freqs >= 4) & (freqs <= 10)].sum() / (power[(freqs >= 1) & (freqs <= 30)].sum() + 1e-12)
    return {
        "log_p_wave_ratio": math.log(float(np.ptp(p_detrended)) / qrs + 1e-3),
        "log_tq_residual": math.log(float(np.median(residual.std(axis=1))) / qrs + 1e-3),
        "log_tq_fwave_share": math.log(float(fwave) + 1e-3),
    }


def rhythm_features(rr_s: np.ndarray, x: np.ndarray, rpeaks: np.ndarray, fs: float, *,
                    p_wave_present: float | None, p_coherence: float | None,
                    qrs_correlation: float, qrs_snr: float) -> dict[str, float]:
    """The model's feature vector (as a name -> value dict) from the reader's measurements.

    `rr_s` are the RR intervals the reader kept (s), `x` the cleaned, upright rhythm lead
    at `fs` and `rpeaks` its R peaks (samples). A recording where P waves could not be
    assessed counts as 'no P wave seen' (0).
    """
    out = rr_irregularity(rr_s)
    out.update(atrial_activity(x, rpeaks, fs))
    out.update(beat_quality(x, rpeaks, fs))
    out.update(
        p_wave_present=float(p_wave_present or 0.0),
        p_coherence=float(p_coherence or 0.0),
        qrs_correlation=float(qrs_correlation),
        log_qrs_snr=math.log(max(float(qrs_snr), 1e-3)),
        detector_agreement=detector_agreement(x, rpeaks, fs),
    )
    return out


# ---------------------------------------------------------------- the model

class RhythmModel:
    """Multinomial logistic regression on standardised features, from plain numbers."""

    def __init__(self, spec: dict[str, Any], origin: str = MODEL_FILE) -> None:
        try:
            self.features: tuple[str, ...] = tuple(spec["features"])
            self.classes: tuple[str, ...] = tuple(spec["classes"])
            self.mean = np.asarray(spec["mean"], dtype=np.float64)          # (F,)
            self.scale = np.asarray(spec["scale"], dtype=np.float64)        # (F,)
            self.coef = np.asarray(spec["coef"], dtype=np.float64)          # (C, F)
            self.intercept = np.asarray(spec["intercept"], dtype=np.float64)  # (C,)
            self.af_threshold = float(spec["af_threshold"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(origin, f"not a rhythm model ({e.__class__.__name__}: {e})") from None
        f, c = len(self.features), len(self.classes)
        if (self.mean.shape != (f,) or self.scale.shape != (f,) or self.coef.shape != (c, f)
                or self.intercept.shape != (c,) or "A" not in self.classes):
            raise InputError(origin, "rhythm model arrays do not match its feature and class lists")
        self.spec = spec

    def probabilities(self, features: dict[str, float]) -> dict[str, float]:
        """Class -> probability for one recording's features."""
        x = np.array([features[name] for name in self.features], dtype=np.float64)
        logits = self.coef @ ((x - self.mean) / self.scale) + self.intercept   # (C,)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        return {c: float(v) for c, v in zip(self.classes, p)}

    def predict(self, features: dict[str, float]) -> tuple[str, dict[str, float]]:
        """(class, probabilities): AF when its probability reaches the stored threshold
        (chosen on cross-validated training predictions), else the likeliest other class."""
        probs = self.probabilities(features)
        if probs["A"] >= self.af_threshold:
            return "A", probs
        return max((c for c in self.classes if c != "A"), key=probs.__getitem__), probs


def load_rhythm_model(path: str | Path | None = None) -> RhythmModel:
    """The rhythm model from `path`, or the bundled one (trained on CinC-2017 dev)."""
    if path is None:
        return _bundled_model()
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "no such rhythm model file")
    try:
        spec = json.loads(p.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(p, f"invalid JSON ({e.msg})") from None
    return RhythmModel(spec, str(p))


@lru_cache(maxsize=1)
def _bundled_model() -> RhythmModel:
    text = resources.files("medfuse.knowledge").joinpath("data").joinpath(MODEL_FILE).read_text("utf-8")
    return RhythmModel(json.loads(text), MODEL_FILE)


def fit_rhythm_model(x: np.ndarray, y: list[str], *, af_threshold: float, c: float = 1.0,
                     balanced: bool = False, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit the model (scikit-learn) and return its JSON spec.

    `x` is (records, len(FEATURES)) in `FEATURES` order; `y` the class per record.
    `balanced` re-weights classes to equal total weight, which trades calibrated
    probabilities for recall of the rare classes. The spec carries a few training rows
    with scikit-learn's own probabilities (`check`), so a loaded file can be checked
    against the model as it was fitted.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    classes = [c_ for c_ in RHYTHM_CLASSES if c_ in set(y)]
    clf = LogisticRegression(C=c, class_weight="balanced" if balanced else None, max_iter=5000)
    clf.fit(scaler.transform(x), y)
    order = [list(clf.classes_).index(c_) for c_ in classes]
    check_rows = x[np.linspace(0, len(x) - 1, min(len(x), 5)).astype(int)]
    check_probs = clf.predict_proba(scaler.transform(check_rows))[:, order]
    return {
        "what": "multinomial logistic regression on standardised rhythm features (medfuse.interpret.rhythm)",
        "features": list(FEATURES),
        "classes": classes,
        "mean": scaler.mean_.tolist(),
        "scale": scaler.scale_.tolist(),
        "coef": clf.coef_[order].tolist(),
        "intercept": clf.intercept_[order].tolist(),
        "af_threshold": af_threshold,
        "regularisation_c": c,
        "class_weight": "balanced" if balanced else "none",
        "check": {"x": check_rows.tolist(), "probabilities": check_probs.tolist()},
        **({"provenance": provenance} if provenance else {}),
    }
