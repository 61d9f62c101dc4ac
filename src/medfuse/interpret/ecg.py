"""ECG reader: rhythm, rate, intervals, ST/T, Q waves, LVH voltage and signal quality.

`interpret_ecg(ecg)` works on any `medfuse.record.case.ECG` (1 to 12+ leads, any
sampling rate >= 100 Hz, any length >= 5 s). neurokit2 does the cleaning, R-peak
detection and wave delineation; around it:

1. Quality gate per lead, on the raw samples: missing samples, flat line, clipping
   (amplifier saturation). A recording with no usable lead is 'unreadable' with the
   reason; no number is invented for it.
2. Resampling to 500 Hz, cleaning (`nk.ecg_clean`, mains notch at the frequency found
   in the spectrum), R peaks (`nk.ecg_peaks`) on the best of a few preferred leads,
   with a 200 ms refractory period (AF's short RRs) and beats up to both ends of the
   recording (a lost RR shifts an irregular rhythm's mean); detections that may be T or
   P waves (close to another detection, or near an end) must match the lead's QRS.
   Beats must look alike (QRS template correlation) and stand out of the background
   (QRS-to-background ratio), otherwise the "peaks" are noise and the ECG is
   'unreadable'.
3. Rhythm from RR irregularity, atrial activity and signal quality. P waves are judged
   per beat: the low-passed pre-QRS segment must repeat from beat to beat (correlate
   with the median) and the median must show a P deflection. A rhythm lead recorded
   upside down (a handheld single-lead device held the other way) is turned upright
   first. `medfuse.interpret.rhythm` turns the RR intervals, the P-wave measures, QRST
   cancellation residuals and quality indices into features, and a small logistic
   regression trained on real single-lead recordings (PhysioNet/CinC 2017) gives
   P(sinus / AF / other / noisy): AF when P(AF) reaches its threshold, too noisy when
   that class wins; otherwise sinus (labelled by rate: <60 brady, >100 tachy) when the
   model says sinus, or P waves repeat and the RR is regular, else 'other'. Without the model
   (`rhythm_model=False`) the rule alone decides: irregular RR without P waves is AF.
4. Intervals from `nk.ecg_delineate` (DWT) on the rhythm lead, medians over beats;
   QTc by Bazett and Fridericia.
5. Per-lead amplitudes on median beats (R-aligned, baseline = the PR segment): Q depth
   and width, R, S, ST at J+40 ms, T amplitude; from those ST elevation/depression, T
   inversion, tall (peaked) T, pathological Q and LVH voltage (Sokolow-Lyon, Cornell).

Thresholds follow the usual clinical criteria (Fourth Universal Definition of MI for
ST elevation and Q waves, textbook "tall T" limits); each is named once below.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from medfuse.interpret.rhythm import RhythmModel, load_rhythm_model, rhythm_features
from medfuse.record.case import ECG
from medfuse.record.evidence import Evidence

Rhythm = Literal["sinus_rhythm", "sinus_tachycardia", "sinus_bradycardia", "atrial_fibrillation", "other", "unreadable"]
RHYTHMS: tuple[str, ...] = ("sinus_rhythm", "sinus_tachycardia", "sinus_bradycardia", "atrial_fibrillation",
                            "other", "unreadable")

WORK_FS = 500.0            # Hz: every recording is analysed at this rate
MIN_DURATION_S = 5.0
MIN_FS = 100.0

# neurokit2's R-peak detector. Its default places peaks on the R apex (which the
# median beats rely on); it can mistake tall peaked T waves for beats, which
# `_drop_t_wave_peaks` undoes. (Kalidas 2017 avoids that but places peaks off the apex
# and missed beats on MIT-BIH 100.)
_PEAK_METHOD = "neurokit"
# Shortest RR interval accepted between two beats: the ventricles' refractory period
# (Pan-Tompkins' 200 ms blanking), i.e. at most 300 beats/min.
_REFRACTORY_S = 0.2
_NEGATED_MARGIN = 1.25     # a lead is read negated only if its beats score this much better
_PAD_END_S = 0.1           # flat padding after the last sample, so a QRS there closes
# Detections that may be a T or P wave must match the lead's QRS (`_confirm_doubtful_peaks`):
# those less than `_CLOSE_PAIR_S` (neurokit2's default `mindelay`) from another, and
# those within `_EDGE_WAVE_S` of either end (a T wave up to 450 ms after its QRS, a P
# wave up to ~300 ms before it, with that QRS outside the recording).
_CLOSE_PAIR_S = 0.3
_EDGE_WAVE_S = 0.45
_QRS_MATCH_CORRELATION = 0.7
_QRS_MATCH_AMPLITUDE = 0.5  # share of the QRS template's peak-to-peak
# Share of the QRS template's steepest slope. Measured on synthetic ECGs (10 patterns x
# 150 seeds, leads II, V5, V6): T waves taken for beats <= 0.68 (tall peaked T), real
# beats >= 0.88, or >= 0.67 when cut by the edge of the recording.
_QRS_MATCH_SLOPE = 0.7

# Leads tried for R peaks, best first (tall, narrow R in most people). MLII/ML* are the
# Holter/MIT-BIH modified limb leads.
_RHYTHM_LEADS = ("II", "MLII", "V5", "V6", "I", "aVF", "V4", "ECG", "ML5", "V1", "V2", "V3", "III", "aVL", "aVR")
# Leads tried for P waves (largest P in most people).
_P_LEADS = ("II", "MLII", "V1", "aVF", "I", "III")

# Quality gates.
_FLAT_MV = 0.04            # peak-to-peak (0.5-99.5 %) below this: no signal
_CLIP_FRACTION = 0.005     # share of samples sitting on the min or max rail
_MISSING_FRACTION = 0.2    # share of NaN samples that makes a lead unusable
_MIN_QRS_CORRELATION = 0.8  # median leave-one-out beat correlation (QRS-ST-T, < 15 Hz)
_MIN_QRS_SNR = 2.0         # QRS peak-to-peak over the background's robust spread (T waves included)
# With the rhythm model, which has a 'too noisy' class fed by these same indices and the
# two-detector agreement, only beats that are plainly not beats stop the reading: on real
# single-lead recordings (CinC-2017) the fixed gate above turned away AF recordings
# (beat-to-beat QRS variation, small QRS) and one normal recording in ten.
_MODEL_MIN_QRS_CORRELATION = 0.3
_MODEL_MIN_QRS_SNR = 1.0

# Rhythm criteria.
_BRADY_BPM, _TACHY_BPM = 60.0, 100.0
_IRREGULAR_SUCCESSIVE = 0.06  # median |dRR| / median RR above this: irregular
_IRREGULAR_CV = 0.08
_P_PRESENT_FRACTION = 0.5
_P_BEAT_CORRELATION = 0.6
_P_MIN_MV = 0.04
_P_COHERENCE = 0.7

# Morphology criteria (mV unless named otherwise).
_ST_ELEVATION_MV = 0.1
_ST_ELEVATION_V2V3_MV = {"M": 0.2, "F": 0.15, None: 0.2}
_ST_DEPRESSION_MV = -0.05
_T_INVERSION_MV = -0.1
_TALL_T_LIMB_MV, _TALL_T_CHEST_MV = 0.5, 1.0
_TALL_T_MIN_LEADS = 2
_Q_MIN_MS, _Q_MIN_MV = 30.0, 0.1
_SOKOLOW_MV = 3.5
_CORNELL_MV = {"M": 2.8, "F": 2.0, None: 2.8}

# Contiguous lead groups (for "in two contiguous leads" criteria).
_CONTIGUOUS: dict[str, tuple[str, ...]] = {
    "inferior": ("II", "III", "aVF"),
    "lateral": ("I", "aVL", "V5", "V6"),
    "septal": ("V1", "V2"),
    "anterior": ("V2", "V3", "V4"),
    "anterolateral": ("V4", "V5", "V6"),
}
_CHEST = frozenset({"V1", "V2", "V3", "V4", "V5", "V6"})
# Leads where a negative T or a Q wave is a normal finding.
_T_NEGATIVE_NORMAL = frozenset({"aVR", "III", "V1"})
_Q_NORMAL = frozenset({"aVR", "III", "V1"})


# ---------------------------------------------------------------- result types

class LeadMeasurement(BaseModel):
    """Amplitudes of one lead's median beat, relative to its PR-segment baseline."""

    q_mv: float = Field(..., description="Depth of the initial negative deflection (>= 0), 0 when none.")
    q_ms: float = Field(..., description="Width of that initial negative deflection.")
    r_mv: float = Field(..., description="Largest positive QRS deflection (>= 0).")
    s_mv: float = Field(..., description="Depth of the largest negative QRS deflection after R (>= 0).")
    st_mv: float = Field(..., description="ST level at J + 40 ms (signed).")
    t_mv: float = Field(..., description="T-wave amplitude: the largest deviation in the T window (signed).")
    beat_correlation: float = Field(..., description="Median correlation of this lead's QRS complexes with its median beat.")


class ECGReading(BaseModel):
    """What the reader measured. Fields are None where they could not be measured."""

    rhythm: Rhythm
    reason: str | None = Field(None, description="Why the ECG is unreadable (only then).")
    heart_rate: float | None = Field(None, description="/min, from the mean RR interval.")
    n_beats: int = 0
    rhythm_lead: str | None = None
    duration_s: float | None = None
    fs: float | None = Field(None, description="Sampling rate of the input, Hz.")
    # RR irregularity
    rr_mean_ms: float | None = None
    rr_sd_ms: float | None = None
    rr_cv: float | None = Field(None, description="SD / mean of RR.")
    rmssd_ratio: float | None = Field(None, description="RMSSD / mean RR.")
    rr_successive_ratio: float | None = Field(None, description="Median |RR(i) - RR(i-1)| / median RR (robust to single ectopics).")
    p_wave_present: float | None = Field(None, description="Share of analysable beats with a repeating P wave.")
    p_coherence: float | None = Field(None, description="P template amplitude over the per-beat amplitude (~1 repeating, low in AF).")
    p_lead: str | None = None
    rhythm_lead_inverted: bool | None = Field(None, description="The rhythm lead was upside down and was turned upright for beat detection.")
    rhythm_features: dict[str, float] | None = Field(None, description="Inputs of the rhythm model (medfuse.interpret.rhythm).")
    rhythm_probabilities: dict[str, float] | None = Field(
        None, description="Rhythm model: N sinus, A atrial fibrillation, O other rhythm, ~ too noisy.")
    # Intervals (ms)
    pr_ms: float | None = None
    qrs_ms: float | None = None
    qt_ms: float | None = None
    qtc_bazett_ms: float | None = None
    qtc_fridericia_ms: float | None = None
    # Morphology
    leads: dict[str, LeadMeasurement] = Field(default_factory=dict)
    st_elevation_leads: list[str] = Field(default_factory=list)
    st_depression_leads: list[str] = Field(default_factory=list)
    t_inversion_leads: list[str] = Field(default_factory=list)
    tall_t_leads: list[str] = Field(default_factory=list)
    q_wave_leads: list[str] = Field(default_factory=list)
    sokolow_lyon_mv: float | None = None
    sokolow_lyon_lvh: bool | None = None
    cornell_mv: float | None = None
    cornell_threshold_mv: float | None = None
    cornell_lvh: bool | None = None
    # Quality
    signal_quality: Literal["good", "acceptable", "poor"] | None = None
    qrs_correlation: float | None = Field(None, description="Median QRS correlation with the median beat, rhythm lead.")
    qrs_snr: float | None = Field(None, description="QRS peak-to-peak over the background's robust spread, rhythm lead.")
    excluded_leads: dict[str, str] = Field(default_factory=dict, description="Lead -> why it was not used.")

    @property
    def readable(self) -> bool:
        return self.rhythm != "unreadable"


# ---------------------------------------------------------------- the reader

def interpret_ecg(ecg: ECG, *, sex: str | None = None, rhythm_model: RhythmModel | bool = True) -> ECGReading:
    """Read an ECG: rhythm, rate, intervals, ST/T per lead, Q waves, LVH, quality.

    `sex` ('M'/'F') only selects the sex-specific thresholds (Cornell voltage, ST
    elevation in V2-V3); unknown uses the male (stricter-for-LVH) values.
    `rhythm_model`: True uses the bundled rhythm model, a `RhythmModel` that one, False
    the rule alone (irregular RR without P waves is AF).
    Never raises for a bad recording: flat, clipped, noisy or too short ECGs come back
    with `rhythm='unreadable'` and a `reason`.
    """
    with warnings.catch_warnings():
        # neurokit2 warns on every short or odd signal; the reading says what went wrong.
        warnings.simplefilter("ignore")
        model = load_rhythm_model() if rhythm_model is True else (rhythm_model or None)
        return _interpret(ecg, sex if sex in ("M", "F") else None, model)


def _unreadable(reason: str, **fields) -> ECGReading:
    return ECGReading(rhythm="unreadable", reason=reason, **fields)


def _interpret(ecg: ECG, sex: str | None, model: RhythmModel | None) -> ECGReading:
    import neurokit2 as nk

    if ecg.signal is None:
        return _unreadable("no signal loaded", fs=ecg.fs)
    raw = np.asarray(ecg.signal, dtype=np.float64)                    # (samples, leads) mV
    fs = float(ecg.fs)
    duration = raw.shape[0] / fs if raw.ndim == 2 else 0.0
    base = {"fs": fs, "duration_s": round(duration, 3)}
    if raw.ndim != 2 or raw.shape[0] == 0:
        return _unreadable("no samples", **base)
    if fs < MIN_FS:
        return _unreadable(f"sampling rate {fs:g} Hz is below {MIN_FS:g} Hz", **base)
    if duration < MIN_DURATION_S:
        return _unreadable(f"too short ({duration:.1f} s; at least {MIN_DURATION_S:g} s needed)", **base)

    # ---- 1. quality gate per lead (raw samples: resampling would hide clipping)
    names = [str(x) for x in ecg.leads]
    excluded: dict[str, str] = {}
    usable: list[int] = []
    for j, name in enumerate(names):
        problem = _lead_problem(raw[:, j])
        if problem:
            excluded[name] = problem
        else:
            usable.append(j)
    if not usable:
        kinds = sorted(set(excluded.values()))
        what = kinds[0] if len(kinds) == 1 else " or ".join(kinds)
        return _unreadable(f"no usable lead ({what} in every lead)", excluded_leads=excluded, **base)

    # ---- 2. resample, clean, R peaks
    sig = _resample(_fill_missing(raw[:, usable]), fs)                # (n, usable) mV at WORK_FS
    lead_names = [names[j] for j in usable]
    mains = _mains_frequency(sig)
    # neurokit2's cleaning feeds R-peak detection and delineation, which only ever use the
    # first three preferred leads; the other columns stay zero (and are never read).
    cleaned = np.zeros_like(sig)                                      # (n, usable)
    for k in _preferred(lead_names, _RHYTHM_LEADS)[:3]:
        cleaned[:, k] = nk.ecg_clean(sig[:, k], sampling_rate=int(WORK_FS), powerline=mains)
    amp_sig = _amplitude_filter(sig, mains)                           # for amplitudes (no low-pass)

    beats = _best_beats(cleaned, lead_names)
    if beats is None:
        return _unreadable("no QRS complexes found (noise or no cardiac signal)", excluded_leads=excluded, **base)
    rhythm_k, rpeaks, corr, snr, upside_down = beats
    if upside_down:
        cleaned[:, rhythm_k] = -cleaned[:, rhythm_k]  # rhythm features and intervals read the upright lead
    quality = dict(qrs_correlation=round(corr, 3), qrs_snr=round(snr, 2))
    min_corr, min_snr = ((_MODEL_MIN_QRS_CORRELATION, _MODEL_MIN_QRS_SNR) if model is not None
                         else (_MIN_QRS_CORRELATION, _MIN_QRS_SNR))
    if corr < min_corr or snr < min_snr:
        return _unreadable(
            f"no consistent QRS complexes (noise): beat correlation {corr:.2f}, QRS/background {snr:.1f}",
            excluded_leads=excluded, rhythm_lead=lead_names[rhythm_k], **quality, **base)
    rr = np.diff(rpeaks) / WORK_FS                                    # (beats-1,) s
    gaps = np.flatnonzero(~np.isfinite(raw[:, usable]).all(axis=1)) * (WORK_FS / fs)
    if gaps.size:
        # Beats inside a filled gap were not recorded: RR intervals spanning one are not RRs.
        spans_gap = np.searchsorted(gaps, rpeaks[1:]) > np.searchsorted(gaps, rpeaks[:-1])
        rr = rr[~spans_gap]
        if rr.size < 2:
            return _unreadable("too few beats outside missing-sample gaps", excluded_leads=excluded, **base)
    heart_rate = 60.0 / float(np.mean(rr))
    if not 20 <= heart_rate <= 300:
        return _unreadable(f"implausible heart rate ({heart_rate:.0f}/min) from detected beats",
                           excluded_leads=excluded, rhythm_lead=lead_names[rhythm_k], **quality, **base)

    # ---- 3. rhythm
    rr_mean = float(np.mean(rr))
    rr_sd = float(np.std(rr, ddof=1)) if rr.size > 1 else 0.0
    d_rr = np.diff(rr)
    rmssd = float(np.sqrt(np.mean(d_rr**2))) if d_rr.size else 0.0
    successive = float(np.median(np.abs(d_rr)) / np.median(rr)) if d_rr.size else 0.0
    cv = rr_sd / rr_mean
    irregular = successive >= _IRREGULAR_SUCCESSIVE and cv >= _IRREGULAR_CV
    p_fraction, p_coherence, p_lead = _p_wave_presence(amp_sig, lead_names, rpeaks)
    p_present = p_fraction is not None and p_fraction >= _P_PRESENT_FRACTION
    sinus = ("sinus_tachycardia" if heart_rate > _TACHY_BPM
             else "sinus_bradycardia" if heart_rate < _BRADY_BPM else "sinus_rhythm")
    features = probabilities = None
    if rr.size >= 3:
        features = rhythm_features(rr, cleaned[:, rhythm_k], rpeaks, WORK_FS, p_wave_present=p_fraction,
                                   p_coherence=p_coherence, qrs_correlation=corr, qrs_snr=snr)
    if model is not None and features is not None:
        label, probabilities = model.predict(features)
        if label == "~":
            return _unreadable(
                f"too much noise to read the rhythm (rhythm model: P(noisy) {probabilities['~']:.2f})",
                excluded_leads=excluded, rhythm_lead=lead_names[rhythm_k], rhythm_features=_rounded(features),
                rhythm_probabilities=_rounded(probabilities), **quality, **base)
        # The model's 'other' stands with P waves if the RR is irregular (ectopic beats keep
        # their P waves); a regular rhythm with repeating P waves is sinus.
        rhythm: str = ("atrial_fibrillation" if label == "A"
                       else sinus if label == "N" or (p_present and not irregular) else "other")
    elif p_present:
        rhythm = sinus
    elif irregular:
        rhythm = "atrial_fibrillation"
    else:
        rhythm = "other"

    # ---- 4. intervals (neurokit2 DWT delineation on the rhythm lead)
    lead_order = [rhythm_k] + [k for k in _preferred(lead_names, _RHYTHM_LEADS) if k != rhythm_k]
    intervals = _intervals(cleaned, lead_order, rpeaks, rr_mean, want_pr=rhythm.startswith("sinus"))
    qt = intervals.get("QT")
    qtc_b = qt / math.sqrt(rr_mean) if qt is not None else None
    qtc_f = qt / rr_mean ** (1 / 3) if qt is not None else None

    # ---- 5. morphology on median beats
    on_rel, off_rel = _qrs_bounds(intervals)
    measures = _lead_measurements(amp_sig, lead_names, rpeaks, rr_mean, on_rel, off_rel, qt)
    findings = _morphology_findings(measures, sex)

    score = corr * min(1.0, snr / 10)
    signal_quality = "good" if score >= 0.85 else "acceptable" if score >= 0.6 else "poor"
    return ECGReading(
        rhythm=rhythm,  # type: ignore[arg-type]
        heart_rate=round(heart_rate, 1),
        n_beats=int(rpeaks.size),
        rhythm_lead=lead_names[rhythm_k],
        rr_mean_ms=round(1000 * rr_mean, 1),
        rr_sd_ms=round(1000 * rr_sd, 1),
        rr_cv=round(cv, 4),
        rmssd_ratio=round(rmssd / rr_mean, 4),
        rr_successive_ratio=round(successive, 4),
        p_wave_present=None if p_fraction is None else round(p_fraction, 3),
        p_coherence=None if p_coherence is None else round(p_coherence, 3),
        p_lead=p_lead,
        rhythm_lead_inverted=upside_down,
        rhythm_features=None if features is None else _rounded(features),
        rhythm_probabilities=None if probabilities is None else _rounded(probabilities),
        pr_ms=_r1(intervals.get("PR")),
        qrs_ms=_r1(intervals.get("QRS")),
        qt_ms=_r1(qt),
        qtc_bazett_ms=_r1(qtc_b),
        qtc_fridericia_ms=_r1(qtc_f),
        leads=measures,
        signal_quality=signal_quality,
        excluded_leads=excluded,
        **findings,
        **quality,
        **base,
    )


def _r1(x: float | None) -> float | None:
    return None if x is None else round(float(x), 1)


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in values.items()}


# ---------------------------------------------------------------- 1. quality gate

def _lead_problem(x: np.ndarray) -> str | None:
    """Why one raw lead (mV) cannot be used, or None."""
    finite = np.isfinite(x)
    if finite.mean() < 1 - _MISSING_FRACTION:
        return "missing samples"
    v = x[finite]
    lo, hi = np.percentile(v, [0.5, 99.5])
    if hi - lo < _FLAT_MV:
        return "flat line"
    vmin, vmax = float(v.min()), float(v.max())
    # Saturation: many samples exactly on a rail. A real peak touches its maximum for a
    # sample or two; a saturated amplifier holds it for runs of samples.
    tol = 1e-9 + 1e-4 * (vmax - vmin)
    on_rail = max(np.mean(v >= vmax - tol), np.mean(v <= vmin + tol))
    if on_rail >= _CLIP_FRACTION:
        return "clipped"
    return None


def _fill_missing(x: np.ndarray) -> np.ndarray:
    """Linear interpolation over NaN samples (leads with few of them were kept)."""
    x = x.copy()
    idx = np.arange(x.shape[0])
    for k in range(x.shape[1]):
        bad = ~np.isfinite(x[:, k])
        if bad.any():
            x[bad, k] = np.interp(idx[bad], idx[~bad], x[~bad, k])
    return x


# ---------------------------------------------------------------- 2. filtering, beats

def _resample(x: np.ndarray, fs: float) -> np.ndarray:
    """(samples, leads) at `fs` -> at WORK_FS (polyphase, anti-aliased)."""
    if abs(fs - WORK_FS) < 1e-6:
        return x
    from scipy.signal import resample_poly

    ratio = Fraction(WORK_FS / fs).limit_denominator(200)
    return resample_poly(x, ratio.numerator, ratio.denominator, axis=0, padtype="line")


def _mains_frequency(x: np.ndarray) -> int:
    """50 or 60: whichever mains line stands out more in the spectrum (50 when neither)."""
    spec = np.abs(np.fft.rfft(x - x.mean(axis=0), axis=0)).sum(axis=1)
    freqs = np.fft.rfftfreq(x.shape[0], 1 / WORK_FS)

    def prominence(f: float) -> float:
        band = (freqs > f - 0.5) & (freqs < f + 0.5)
        ref = (freqs > f - 5) & (freqs < f + 5) & ~band
        return float(spec[band].max() / (np.median(spec[ref]) + 1e-12))

    return 60 if prominence(60) > max(prominence(50), 3.0) else 50


def _amplitude_filter(x: np.ndarray, mains: int) -> np.ndarray:
    """Baseline (0.5 Hz zero-phase high-pass, within AHA limits for ST) and a narrow mains
    notch; no low-pass, so QRS amplitudes stay true (nk's powerline smoothing lowers R).

    The high-pass is neurokit2's `signal_filter(lowcut=0.5, method='butterworth',
    order=5)` filter, designed once and run on all leads together.
    """
    from scipy.signal import filtfilt, sosfiltfilt

    highpass, (b, a) = _filters(mains)
    return filtfilt(b, a, sosfiltfilt(highpass, x, axis=0), axis=0)


@lru_cache(maxsize=4)
def _filters(mains: int):
    from scipy.signal import butter, iirnotch

    return butter(5, 0.5, btype="highpass", output="sos", fs=WORK_FS), iirnotch(mains, 30.0, fs=WORK_FS)


def _windows(x: np.ndarray, centres: np.ndarray, before: int, after: int) -> np.ndarray:
    """Stack x[c - before : c + after] for centres fully inside x: (beats, before + after)."""
    ok = (centres - before >= 0) & (centres + after <= x.shape[0])
    idx = centres[ok][:, None] + np.arange(-before, after)[None, :]
    return x[idx]


def _beat_consistency(x: np.ndarray, rpeaks: np.ndarray) -> tuple[float, float]:
    """(median beat correlation with the median beat, QRS-to-background ratio), one lead.

    The correlation is taken on the slow (< ~15 Hz) content over 100 ms before to 250 ms
    after R (QRS, ST and the start of T): noise "beats" aligned on their own maxima look
    alike only for the few milliseconds around the maximum and mostly at high
    frequencies, real beats over the whole window and at low frequencies.
    """
    before, after = int(0.10 * WORK_FS), int(0.25 * WORK_FS)
    # At most 60 beats, evenly spread: enough for a median, and long Holter-type
    # recordings stay fast (the leave-one-out median below is quadratic in beats).
    sample = rpeaks[np.linspace(0, rpeaks.size - 1, min(rpeaks.size, 60)).astype(int)]
    beats = _windows(_smooth(x), sample, before, after)                # (beats, 350 ms)
    if beats.shape[0] < 3:
        return 0.0, 0.0
    # Leave-one-out: with few beats, a median that includes the beat itself resembles
    # it even when all "beats" are noise.
    keep = np.ones(beats.shape[0], bool)
    corrs = []
    for i in range(beats.shape[0]):
        keep[i] = False
        corrs.append(_corr(beats[i], np.median(beats[keep], axis=0)))
        keep[i] = True
    corr = float(np.median(corrs))
    half = int(0.06 * WORK_FS)
    qrs = _windows(x, sample, half, half)
    mask = np.ones(x.shape[0], bool)
    for r in rpeaks:
        mask[max(r - int(0.1 * WORK_FS), 0): r + int(0.1 * WORK_FS)] = False
    background = x[mask] if mask.sum() > WORK_FS else x
    spread = 1.4826 * float(np.median(np.abs(background - np.median(background)))) + 1e-6
    ptp = float(np.median(qrs.max(axis=1) - qrs.min(axis=1)))
    return corr, ptp / spread


def _smooth(x: np.ndarray) -> np.ndarray:
    """Low-pass (~15 Hz) with a 62 ms Hann window. A short FIR rather than an IIR filter:
    its response ends after 31 ms, so a tall R cannot ring into neighbouring segments."""
    window = np.hanning(int(0.062 * WORK_FS) | 1)
    return np.convolve(x, window / window.sum(), mode="same")


def _preferred(names: list[str], preference: tuple[str, ...]) -> list[int]:
    """Lead indices in `preference` order, then the remaining leads."""
    upper = [n.upper() for n in names]
    order = [upper.index(p.upper()) for p in preference if p.upper() in upper]
    return order + [k for k in range(len(names)) if k not in order]


def _may_be_inverted(x: np.ndarray) -> bool:
    """Whether a cleaned lead's largest deflections point down (its 0.5th percentile lies
    further from the median than its 99.5th): then it may be upside down."""
    lo, mid, hi = np.percentile(x, [0.5, 50, 99.5])
    return mid - lo > hi - mid


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else 0.0


def _best_beats(cleaned: np.ndarray, names: list[str]) -> tuple[int, np.ndarray, float, float, bool] | None:
    """R peaks from the most consistent of up to three preferred leads.

    A lead whose largest deflections point down (`_may_be_inverted`) may be upside down
    (a handheld single-lead device held the other way round, swapped electrodes), and
    the detector places beats on maxima: such a lead is also read negated, and the
    negated reading is kept when its beats are clearly more consistent
    (`_NEGATED_MARGIN`). On real single-lead recordings (CinC-2017 dev) the simpler
    rules did worse: neurokit2's `ecg_invert` (the sign of the largest sample in 2 s
    windows) or the larger percentile tail turned a third of the normal recordings over
    (T or S waves outweighing small R waves), and keeping whichever polarity scores
    higher flipped 40 % of upright 12-lead rhythm leads; each lowered AF F1.

    Returns (lead index, R-peak samples, QRS correlation, QRS/background ratio, whether
    the lead was read negated), or None when no lead gives at least three beats.
    """
    order = _preferred(names, _RHYTHM_LEADS)
    best: tuple[float, int, np.ndarray, float, float, bool] | None = None
    for k in order[:3]:
        for negated in (False, True) if _may_be_inverted(cleaned[:, k]) else (False,):
            x = -cleaned[:, k] if negated else cleaned[:, k]
            try:
                rpeaks = _r_peaks(x)
            except Exception:  # neurokit2 raises assorted errors on pathological input
                continue
            if rpeaks.size < 3:
                continue
            corr, snr = _beat_consistency(x, rpeaks)
            # The negated lead must be clearly better: on upright leads with deep S waves
            # both polarities give consistent beats, and the upright reading is the norm.
            score = corr * min(snr, 20.0) / (_NEGATED_MARGIN if negated else 1.0)
            if best is None or score > best[0]:
                best = (score, k, rpeaks, corr, snr, negated)
    if best is None:
        return None
    return best[1:]


def _r_peaks(x: np.ndarray) -> np.ndarray:
    """R-peak samples of one cleaned lead (at WORK_FS): neurokit2's detector, made to see
    every beat of the recording, less the T (and P) waves it took for beats.

    Called plainly, the detector loses beats, which biases the rate most in atrial
    fibrillation (the RR intervals differ, so each lost one shifts the mean):
    - it keeps a peak only if it comes more than `mindelay` (300 ms) after the one it
      kept before: the second of two beats closer than that (frequent in fast AF) is
      dropped, and so is a beat in the first 300 ms (the first "previous" is sample 0);
      and when a P or T wave came first, it is kept and the QRS dropped;
    - a QRS still open at the last sample is never closed: a beat at the end is dropped.
    So the detector runs with `mindelay` 0 (one candidate per supra-threshold region) on
    the lead padded at its end with the last value (flat: no QRS of its own, and an
    upstroke cut by the edge is no peak). T waves among the candidates go
    (`_drop_t_wave_peaks`, `_confirm_doubtful_peaks`), and of two beats closer than the
    refractory period the taller stays.
    """
    import neurokit2 as nk

    tail = int(_PAD_END_S * WORK_FS)
    padded = np.pad(x, (0, tail), mode="edge")
    _, info = nk.ecg_peaks(padded, sampling_rate=int(WORK_FS), method=_PEAK_METHOD, mindelay=0.0)
    peaks = np.asarray(info["ECG_R_Peaks"], dtype=np.int64)
    peaks = _confirm_doubtful_peaks(x, _drop_t_wave_peaks(x, peaks[peaks < x.size]))
    keep: list[int] = []
    for p in peaks:
        if keep and p - keep[-1] < _REFRACTORY_S * WORK_FS:
            if x[p] > x[keep[-1]]:
                keep[-1] = int(p)
        else:
            keep.append(int(p))
    return np.asarray(keep, dtype=np.int64)


def _confirm_doubtful_peaks(x: np.ndarray, rpeaks: np.ndarray) -> np.ndarray:
    """Drop detections that may be a T or P wave and do not look like this lead's QRS.

    A detection is doubtful where a T or P wave can be taken for a beat: less than
    `_CLOSE_PAIR_S` from its neighbour (a span the detector's default `mindelay` ruled
    out, at the cost of AF's short RRs), or within `_EDGE_WAVE_S` of either end of the
    recording, where the QRS the wave belongs to may lie outside it. It stays only if
    its QRS window matches the lead's QRS template in shape (correlation), size
    (peak-to-peak) and steepness (largest slope: a tall peaked T is slower than a QRS),
    each compared over the part of the window inside the recording, so that a beat cut
    by the edge is compared with the same part of the QRS.
    """
    half = int(0.06 * WORK_FS)
    edge = int(_EDGE_WAVE_S * WORK_FS)
    short = np.diff(rpeaks) < _CLOSE_PAIR_S * WORK_FS                # (detections-1,)
    close = np.concatenate([[False], short]) | np.concatenate([short, [False]])
    doubtful = close | (rpeaks < edge) | (rpeaks >= x.size - edge)
    inner = _windows(x, rpeaks[(rpeaks >= edge) & (rpeaks < x.size - edge)], half, half)  # (beats, 120 ms)
    if not doubtful.any() or inner.shape[0] < 3:
        return rpeaks
    # The QRS template: the steeper half of the detections away from the ends, QRS
    # complexes even in a lead where every beat's T wave was detected too.
    slopes = np.abs(np.diff(inner, axis=1)).max(axis=1)
    template = np.median(inner[slopes >= np.median(slopes)], axis=0)  # (120 ms,)
    keep = ~doubtful
    for i in np.flatnonzero(doubtful):
        lo, hi = max(rpeaks[i] - half, 0), min(rpeaks[i] + half, x.size)
        seg = x[lo:hi]
        ref = template[lo - (rpeaks[i] - half): hi - (rpeaks[i] - half)]
        keep[i] = (_corr(seg, ref) >= _QRS_MATCH_CORRELATION
                   and np.ptp(seg) >= _QRS_MATCH_AMPLITUDE * np.ptp(ref)
                   and np.abs(np.diff(seg)).max() >= _QRS_MATCH_SLOPE * np.abs(np.diff(ref)).max())
    return rpeaks[keep]


def _drop_t_wave_peaks(x: np.ndarray, rpeaks: np.ndarray) -> np.ndarray:
    """Remove detections that are T waves.

    A tall, peaked T can reach the detector's threshold. Its detections are slower
    than the QRS complexes (steepest slope < 0.6 x a typical QRS's, measured 0.4-0.5 on
    hyperkalaemic T waves), follow a QRS by 150-450 ms, and do so after many beats at
    a constant delay. The last two conditions spare sporadic ectopic beats, whose
    coupling interval varies.
    """
    if rpeaks.size < 4:
        return rpeaks
    grad = np.abs(np.gradient(x))
    half = int(0.04 * WORK_FS)
    slopes = np.array([grad[max(p - half, 0): p + half].max() for p in rpeaks])
    reference = float(np.percentile(slopes, 75))   # a QRS even if half the detections are T
    gap = np.diff(rpeaks, prepend=rpeaks[0] - int(WORK_FS)) / WORK_FS
    slow = slopes < 0.6 * reference
    suspect = slow & (gap >= 0.15) & (gap <= 0.45) & np.concatenate([[False], ~slow[:-1]])
    if suspect.sum() >= max(2, 0.3 * rpeaks.size) and float(np.std(gap[suspect])) < 0.03:
        return rpeaks[~suspect]
    return rpeaks


# ---------------------------------------------------------------- 3. P waves

def _p_wave_presence(x: np.ndarray, names: list[str], rpeaks: np.ndarray) -> tuple[float | None, float | None, str | None]:
    """(share of beats with a repeating P wave, P coherence, lead) from the best P lead.

    For each beat the segment [R - 260 ms, R - 90 ms] is taken from the smoothed signal
    (P waves are slow; muscle noise is not), after subtracting the previous
    beat's repolarisation: a median post-R template built only from samples at least
    300 ms before the next R (so it never contains a P wave). In an irregular rhythm
    this removes the T wave that a short RR pushes into the window; in a regular one the
    template does not reach the window, so nothing of a P wave is removed.

    The P template is the median of the (linearly detrended) segments. Its coherence is
    its amplitude over the median per-beat amplitude: a P wave that repeats keeps its
    amplitude when averaged (~1), fibrillatory waves cancel (< 0.65 on synthetic AF).
    Returns (None, None, None) when fewer than 3 beats can be analysed.
    """
    order = _preferred(names, _P_LEADS)
    before, after = int(0.26 * WORK_FS), int(0.09 * WORK_FS)
    post_len, p_guard = int(0.8 * WORK_FS), int(0.3 * WORK_FS)
    found: list[tuple[float, float, float, str]] = []  # (coherence, amplitude, ..., lead) per lead
    for k in order[:3]:
        low = _smooth(x[:, k])
        post = np.full((rpeaks.size - 1, post_len), np.nan)            # (beats-1, lag)
        for i in range(rpeaks.size - 1):
            end = min(rpeaks[i] + post_len, rpeaks[i + 1] - p_guard, low.size)
            if end > rpeaks[i]:
                post[i, : end - rpeaks[i]] = low[rpeaks[i]: end]
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN lags: nothing to subtract there
            repol = np.nan_to_num(np.nanmedian(post, axis=0))          # (lag,) mV, 0 where unknown
        segs = []
        for i in range(1, rpeaks.size):
            a, b = rpeaks[i] - before, rpeaks[i] - after
            if a < 0:
                continue
            seg = low[a:b].copy()
            lag = np.arange(a, b) - rpeaks[i - 1]
            inside = lag < post_len
            seg[inside] -= repol[lag[inside]]
            segs.append(seg)
        if len(segs) < 3:
            continue
        segs_arr = np.asarray(segs)                                    # (beats, 180 ms)
        t = np.linspace(-1.0, 1.0, segs_arr.shape[1])
        design = np.stack([np.ones_like(t), t], axis=1)
        coef = np.linalg.lstsq(design, segs_arr.T, rcond=None)[0]
        segs_arr = segs_arr - (design @ coef).T
        template = np.median(segs_arr, axis=0)
        amplitude = float(template.max() - template.min())
        per_beat = float(np.median(segs_arr.max(axis=1) - segs_arr.min(axis=1))) + 1e-9
        fraction = float(np.mean([_corr(s, template) >= _P_BEAT_CORRELATION for s in segs_arr]))
        found.append((amplitude / per_beat, amplitude, fraction, names[k]))
    if not found:
        return None, None, None
    # Decide on the median lead: P waves repeat in every P lead, while one lead of an AF
    # recording can look coherent by chance. Report the lead with the clearest P.
    coherence = float(np.median([f[0] for f in found]))
    best = max(found, key=lambda f: (f[0] >= _P_COHERENCE and f[1] >= _P_MIN_MV, f[2], f[0]))
    if coherence < _P_COHERENCE or best[1] < _P_MIN_MV:
        return 0.0, coherence, best[3]
    return best[2], coherence, best[3]


# ---------------------------------------------------------------- 4. intervals

def _intervals(x: np.ndarray, lead_order: list[int], rpeaks: np.ndarray, rr_mean: float,
               want_pr: bool) -> dict[str, float]:
    """PR, QRS and QT (ms) and the QRS onset/offset relative to R, medians over leads.

    Per lead: neurokit2's delineation (method 'prominence', which of neurokit2's
    methods agreed best with the device measurements of a real DICOM ECG) gives P onset,
    QRS onset and offset and the T peak for every beat (medians over beats); the T end
    is found on the lead's median beat by the tangent method (steepest T downslope
    meets the baseline), the clinical convention for QT. The median over up to three
    leads guards against one lead's mis-delineation.
    """
    per_lead: dict[str, list[float]] = {"PR": [], "QRS": [], "QT": [], "on": [], "off": []}
    for k in lead_order[:3]:
        got = _lead_intervals(x[:, k], rpeaks, rr_mean, want_pr)
        for key, v in got.items():
            per_lead[key].append(v)
    return {key: float(np.median(v)) for key, v in per_lead.items() if v}


def _lead_intervals(x: np.ndarray, rpeaks: np.ndarray, rr_mean: float, want_pr: bool) -> dict[str, float]:
    import neurokit2 as nk

    try:
        _, waves = nk.ecg_delineate(x, rpeaks, sampling_rate=int(WORK_FS), method="prominence")
    except Exception:  # delineation fails on some odd signals; this lead gives no intervals
        return {}

    def rel(key: str) -> np.ndarray:
        v = np.asarray(waves.get(key, []), dtype=np.float64)
        v = v[: rpeaks.size] if v.size >= rpeaks.size else np.full(rpeaks.size, np.nan)
        return (v - rpeaks) * 1000.0 / WORK_FS                       # ms relative to each R

    def med(v: np.ndarray, lo: float, hi: float) -> float | None:
        v = v[np.isfinite(v) & (v >= lo) & (v <= hi)]
        return float(np.median(v)) if v.size >= 2 else None

    out: dict[str, float] = {}
    on, off = med(rel("ECG_R_Onsets"), -150, -5), med(rel("ECG_R_Offsets"), 5, 150)
    if on is None or off is None or not 40 <= off - on <= 200:
        return out
    out.update(on=on, off=off, QRS=off - on)
    if want_pr:
        p_on = med(rel("ECG_P_Onsets"), -450, on - 40)
        if p_on is not None and 60 <= on - p_on <= 400:
            out["PR"] = on - p_on
    t_peak = med(rel("ECG_T_Peaks"), off + 40, 700)
    if t_peak is not None:
        t_end = _tangent_t_end(x, rpeaks, rr_mean, on, t_peak)
        if t_end is not None and 200 <= t_end - on <= 700:
            out["QT"] = t_end - on
    return out


def _tangent_t_end(x: np.ndarray, rpeaks: np.ndarray, rr_mean: float, on_ms: float, t_peak_ms: float) -> float | None:
    """T end (ms after R) on the median beat: where the tangent at the steepest slope
    after the T peak crosses the PR-segment baseline."""
    before = int(0.35 * WORK_FS)
    after = int(min(0.8, 0.98 * rr_mean) * WORK_FS)
    beats = _windows(x, rpeaks, before, after)
    if beats.shape[0] < 2:
        return None
    med = np.median(beats, axis=0)
    on = before + int(round(on_ms * WORK_FS / 1000))
    med = med - float(np.mean(med[max(on - int(0.03 * WORK_FS), 0): max(on - int(0.01 * WORK_FS), 1)]))
    centre = before + int(round(t_peak_ms * WORK_FS / 1000))
    lo, hi = max(centre - int(0.04 * WORK_FS), 0), min(centre + int(0.04 * WORK_FS), med.size - 1)
    if hi <= lo:
        return None
    peak = lo + int(np.argmax(np.abs(med[lo:hi])))
    sign = 1.0 if med[peak] >= 0 else -1.0
    tail = sign * med[peak: min(peak + int(0.25 * WORK_FS), med.size)]
    if tail.size < 5:
        return None
    slope = np.gradient(tail)
    k = int(np.argmin(slope))
    if slope[k] >= 0:
        return None
    end_idx = peak + k - tail[k] / slope[k]
    return (end_idx - before) * 1000.0 / WORK_FS


# ---------------------------------------------------------------- 5. morphology

def _qrs_bounds(intervals: dict[str, float]) -> tuple[float, float]:
    """QRS onset and J point relative to the R peak (ms), shared by all leads: from the
    delineation when it worked, else 45 ms either side (a normal QRS)."""
    on, off = intervals.get("on"), intervals.get("off")
    if on is None or off is None:
        return -45.0, 45.0
    return on, off


def _lead_measurements(x: np.ndarray, names: list[str], rpeaks: np.ndarray, rr_mean: float,
                       on_rel_ms: float, off_rel_ms: float, qt_ms: float | None) -> dict[str, LeadMeasurement]:
    """Per-lead amplitudes on R-aligned median beats."""
    before = int(0.35 * WORK_FS)
    after = int(min(0.7, 0.95 * rr_mean) * WORK_FS)
    to_idx = lambda ms: before + int(round(ms * WORK_FS / 1000))  # noqa: E731
    on, j = to_idx(on_rel_ms), to_idx(off_rel_ms)
    base_lo, base_hi = max(on - int(0.03 * WORK_FS), 0), max(on - int(0.01 * WORK_FS), 1)
    st_at = min(j + int(0.04 * WORK_FS), before + after - 1)
    t_lo = min(j + int(0.08 * WORK_FS), before + after - 2)
    t_end = on + int((qt_ms if qt_ms else 400 * math.sqrt(rr_mean)) * WORK_FS / 1000)
    t_hi = max(min(t_end, before + after), t_lo + 1)
    out: dict[str, LeadMeasurement] = {}
    for k, name in enumerate(names):
        beats = _windows(x[:, k], rpeaks, before, after)               # (beats, W)
        if beats.shape[0] < 2:
            continue
        med = np.median(beats, axis=0)
        med = med - float(np.mean(med[base_lo:base_hi]))
        qrs = med[on: j + 1]
        r_idx = int(np.argmax(qrs))
        r_mv = max(float(qrs[r_idx]), 0.0)
        s_mv = max(-float(qrs[r_idx:].min()), 0.0)
        q_mv, q_ms = _q_wave(med[max(on - int(0.02 * WORK_FS), 0): j + 1])
        t_seg = med[t_lo:t_hi]
        t_mv = float(t_seg[np.argmax(np.abs(t_seg))]) if t_seg.size else 0.0
        half = int(0.06 * WORK_FS)
        corr = [_corr(b[before - half: before + half], med[before - half: before + half]) for b in beats]
        out[name] = LeadMeasurement(
            q_mv=round(q_mv, 3), q_ms=round(q_ms, 1), r_mv=round(r_mv, 3), s_mv=round(s_mv, 3),
            st_mv=round(float(med[st_at]), 3), t_mv=round(t_mv, 3),
            beat_correlation=round(float(np.median(corr)), 3),
        )
    return out


def _q_wave(qrs: np.ndarray) -> tuple[float, float]:
    """(depth mV, width ms) of an initial negative deflection of a baseline-corrected QRS.

    `qrs` starts 20 ms before the measured QRS onset. The first deflection beyond
    0.05 mV decides: negative means a Q wave. Its width runs from where it leaves the
    baseline (last sample above -0.015 mV before the nadir) to where it comes back above
    the baseline, or to the QRS end (a QS complex); measured this way it does not
    depend on where the delineator put the QRS onset.
    """
    big = np.flatnonzero(np.abs(qrs) > 0.05)
    if big.size == 0 or qrs[big[0]] > 0:
        return 0.0, 0.0
    first = big[0]
    back = np.flatnonzero(qrs[first:] >= 0)
    end = first + (back[0] if back.size else qrs.size - first)
    nadir = int(np.argmin(qrs[:end]))
    above = np.flatnonzero(qrs[: nadir + 1] >= -0.015)
    start = above[-1] if above.size else 0
    return -float(qrs[nadir]), (end - start) * 1000.0 / WORK_FS


def _morphology_findings(m: dict[str, LeadMeasurement], sex: str | None) -> dict:
    """Flagged leads and LVH voltage from per-lead measurements."""
    st_up = _ST_ELEVATION_V2V3_MV[sex]
    elevated = [n for n, v in m.items() if n != "aVR" and v.st_mv >= (st_up if n in ("V2", "V3") else _ST_ELEVATION_MV)]
    depressed = [n for n, v in m.items() if n != "aVR" and v.st_mv <= _ST_DEPRESSION_MV]
    inverted = [n for n, v in m.items() if n not in _T_NEGATIVE_NORMAL and v.t_mv <= _T_INVERSION_MV
                and not (n == "aVL" and v.r_mv < 0.5)]
    tall = [n for n, v in m.items() if n != "aVR"
            and v.t_mv >= (_TALL_T_CHEST_MV if n in _CHEST else _TALL_T_LIMB_MV)]
    if len(tall) < _TALL_T_MIN_LEADS and len(m) > 2:
        tall = []  # hyperkalaemic T waves are diffuse; one tall T is often a normal variant
    q_leads = [n for n, v in m.items() if n not in _Q_NORMAL and v.q_mv >= _Q_MIN_MV
               and (v.q_ms >= _Q_MIN_MS or (n in ("V2", "V3") and v.q_ms >= 20) or v.r_mv < 0.05)]
    out: dict = {
        "st_elevation_leads": _contiguous(elevated),
        "st_depression_leads": depressed,
        "t_inversion_leads": inverted,
        "tall_t_leads": tall,
        "q_wave_leads": _contiguous(q_leads),
    }
    if "V1" in m and ("V5" in m or "V6" in m):
        r_lat = max(m[k].r_mv for k in ("V5", "V6") if k in m)
        sl = m["V1"].s_mv + r_lat
        out["sokolow_lyon_mv"] = round(sl, 3)
        out["sokolow_lyon_lvh"] = sl >= _SOKOLOW_MV
    if "aVL" in m and "V3" in m:
        cornell = m["aVL"].r_mv + m["V3"].s_mv
        out["cornell_mv"] = round(cornell, 3)
        out["cornell_threshold_mv"] = _CORNELL_MV[sex]
        out["cornell_lvh"] = cornell > _CORNELL_MV[sex]
    return out


def _contiguous(leads: list[str]) -> list[str]:
    """The leads that have a contiguous neighbour also in `leads` (2-lead criteria)."""
    s = set(leads)
    keep: set[str] = set()
    for group in _CONTIGUOUS.values():
        hit = [g for g in group if g in s]
        if len(hit) >= 2:
            keep.update(hit)
    return [n for n in leads if n in keep]


# ---------------------------------------------------------------- evidence

def ecg_evidence(reading: ECGReading) -> list[Evidence]:
    """The reading as `Evidence` items, each citing the lead it was measured in."""
    ev: list[Evidence] = []
    lead_src = f"ecg:lead {reading.rhythm_lead}" if reading.rhythm_lead else "ecg"
    if reading.rhythm == "unreadable":
        return [Evidence(modality="ecg", item="rhythm", value="unreadable", interpretation="unreadable",
                         abnormal=False, source=lead_src, detail={"reason": reading.reason})]
    ev.append(Evidence(
        modality="ecg", item="rhythm", value=reading.rhythm, interpretation=reading.rhythm,
        abnormal=reading.rhythm != "sinus_rhythm", source=lead_src,
        detail={"rr_cv": reading.rr_cv, "rmssd_ratio": reading.rmssd_ratio,
                "rr_successive_ratio": reading.rr_successive_ratio, "p_wave_present": reading.p_wave_present},
    ))
    hr = reading.heart_rate
    if hr is not None:
        ev.append(Evidence(modality="ecg", item="heart_rate", value=hr, unit="/min",
                           interpretation="high" if hr > _TACHY_BPM else "low" if hr < _BRADY_BPM else "normal",
                           abnormal=not (_BRADY_BPM <= hr <= _TACHY_BPM), source=lead_src,
                           detail={"n_beats": reading.n_beats}))
    if reading.p_wave_present is not None:
        present = reading.p_wave_present >= _P_PRESENT_FRACTION
        ev.append(Evidence(modality="ecg", item="P waves", value=reading.p_wave_present,
                           interpretation="present" if present else "absent", abnormal=not present,
                           source=f"ecg:lead {reading.p_lead}" if reading.p_lead else lead_src,
                           detail={"meaning": "share of beats with a repeating P wave"}))
    for item, value, lo, hi in (("PR interval", reading.pr_ms, 120, 200), ("QRS duration", reading.qrs_ms, None, 120),
                                ("QT interval", reading.qt_ms, None, None),
                                ("QTc (Bazett)", reading.qtc_bazett_ms, None, 470),
                                ("QTc (Fridericia)", reading.qtc_fridericia_ms, None, 470)):
        if value is None:
            continue
        interp = "normal"
        if lo is not None and value < lo:
            interp = "short"
        elif hi is not None and value > hi:
            interp = "prolonged"
        ev.append(Evidence(modality="ecg", item=item, value=value, unit="ms", interpretation=interp,
                           abnormal=interp != "normal", source=lead_src))
    for label, leads, attr in (("ST elevation", reading.st_elevation_leads, "st_mv"),
                               ("ST depression", reading.st_depression_leads, "st_mv"),
                               ("T inversion", reading.t_inversion_leads, "t_mv"),
                               ("tall T wave", reading.tall_t_leads, "t_mv"),
                               ("pathological Q wave", reading.q_wave_leads, "q_mv")):
        for lead in leads:
            v = getattr(reading.leads[lead], attr)
            detail = {"q_ms": reading.leads[lead].q_ms} if attr == "q_mv" else {}
            ev.append(Evidence(modality="ecg", item=f"{label} {lead}", value=v, unit="mV",
                               interpretation="present", abnormal=True, source=f"ecg:lead {lead}", detail=detail))
    if reading.leads and not (reading.st_elevation_leads or reading.st_depression_leads):
        ev.append(Evidence(modality="ecg", item="ST segment", value=None, interpretation="normal",
                           source="ecg:all leads",
                           detail={"st_mv": {k: v.st_mv for k, v in reading.leads.items()}}))
    if reading.sokolow_lyon_mv is not None:
        ev.append(Evidence(modality="ecg", item="Sokolow-Lyon voltage (S V1 + R V5/V6)", value=reading.sokolow_lyon_mv,
                           unit="mV", interpretation="LVH" if reading.sokolow_lyon_lvh else "normal",
                           abnormal=bool(reading.sokolow_lyon_lvh), source="ecg:leads V1, V5, V6",
                           detail={"threshold_mv": _SOKOLOW_MV}))
    if reading.cornell_mv is not None:
        ev.append(Evidence(modality="ecg", item="Cornell voltage (R aVL + S V3)", value=reading.cornell_mv, unit="mV",
                           interpretation="LVH" if reading.cornell_lvh else "normal", abnormal=bool(reading.cornell_lvh),
                           source="ecg:leads aVL, V3", detail={"threshold_mv": reading.cornell_threshold_mv}))
    if reading.signal_quality is not None:
        ev.append(Evidence(modality="ecg", item="signal quality", value=reading.signal_quality,
                           interpretation=reading.signal_quality, abnormal=reading.signal_quality == "poor",
                           source=lead_src, detail={"qrs_correlation": reading.qrs_correlation,
                                                    "qrs_snr": reading.qrs_snr,
                                                    "excluded_leads": reading.excluded_leads}))
    return ev
