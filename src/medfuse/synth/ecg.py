"""Synthetic 12-lead ECGs from a vectorised beat-template model of the heart vector.

Why a model of our own: `neurokit2.ecg_simulate` takes ~200 ms for one 10 s lead, and
the cohort generator needs a full 12-lead case in a few milliseconds. Here every wave
of every beat is a Gaussian (the T wave an asymmetric one, the ST segment a flat-topped
one) added into a 3-D heart vector; the leads are projections of that vector, so they
are physiologically consistent by construction:

- axes: x = patient's left, y = inferior (feet), z = anterior;
- limb leads I and II are projections onto the Einthoven directions (0 deg and 60 deg);
  III, aVR, aVL and aVF are *derived* from the recorded I and II as an ECG cart does
  (III = II - I exactly, aVR = -(I + II) / 2, aVL = I - II / 2, aVF = II - I / 2), so the
  identities hold for noise too;
- the QRS is three dipoles (septal, left-ventricular free wall, basal) with different
  directions, which gives the rS -> qR progression from V1 to V6 without per-lead tables;
- noise is generated per electrode (RA, LA, LL, C1..C6: baseline wander, mains
  interference, muscle EMG) and reaches the leads through the same lead equations
  (chest leads are referred to Wilson's central terminal).

Conditions change the model the way the pathophysiology does: atrial fibrillation
replaces P waves by a fibrillatory atrial vector and draws RR intervals independently;
an injury current (ST elevation, a territory) is a vector pointing at the territory;
a pathological Q wave is an early vector pointing away from an old infarct; LVH scales
the free-wall dipole until Sokolow-Lyon (S V1 + R V5) exceeds 3.5 mV, with strain.

The ground truth the model used (rhythm, mean heart rate, intervals, the leads whose ST
was raised or lowered, Q-wave and T-inversion leads, LVH voltage) is returned in
`ecg.annotations["synthetic"]`, so tests and the cohort generator can check a reader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from medfuse.record.case import ECG

STANDARD_12: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

ECG_CONDITIONS: frozenset[str] = frozenset({
    "atrial_fibrillation",
    "sinus_tachycardia",
    "sinus_bradycardia",
    "st_elevation",
    "st_depression",
    "q_waves",
    "t_inversion",
    "peaked_t",
    "lvh",
})

# Digital units per mV: signals are quantised to 1 uV so they round-trip through WFDB.
ADC_GAIN = 1000.0

# ---------------------------------------------------------------- geometry

def _unit(v: tuple[float, float, float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


# Lead vectors of the recorded leads: I, II (frontal plane, Einthoven) and V1..V6
# (mostly horizontal plane, anterior-right to left-lateral). V4-V6 sit in the 5th
# intercostal space below the heart's centre and see some inferior forces. The chest
# leads are longer (closer to the heart), which is why precordial voltages are higher.
_I = np.array([1.0, 0.0, 0.0])
_II = np.array([math.cos(math.radians(60)), math.sin(math.radians(60)), 0.0])
_CHEST_ANGLE_DEG = (115.0, 90.0, 70.0, 45.0, 20.0, 0.0)  # from +x towards +z (anterior)
_CHEST_INFERIOR = (0.0, 0.05, 0.15, 0.3, 0.35, 0.35)
_CHEST_GAIN = (1.3, 1.6, 1.6, 1.5, 1.35, 1.1)
_CHEST = np.stack([
    g * np.array([math.cos(math.radians(a)), y, math.sin(math.radians(a))])
    for a, y, g in zip(_CHEST_ANGLE_DEG, _CHEST_INFERIOR, _CHEST_GAIN)
])  # (6, 3)
# All 12 lead vectors (the derived limb leads follow from I and II linearly).
_LEAD_VECTORS = np.stack([
    _I, _II, _II - _I, -(_I + _II) / 2, _I - _II / 2, _II - _I / 2, *_CHEST,
])  # (12, 3)
_LEAD_INDEX = {name.upper(): i for i, name in enumerate(STANDARD_12)}

# Where injury, necrosis or ischaemia points for each coronary territory, and the leads
# a reader looks at for it (used to scale the effect, not to decide the ground truth).
_TERRITORIES: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {
    "inferior": (_unit((0.05, 1.0, 0.05)), ("II", "III", "aVF")),
    "anterior": (_unit((0.25, -0.05, 1.0)), ("V1", "V2", "V3", "V4")),
    "lateral": (_unit((1.0, -0.35, 0.15)), ("I", "aVL", "V5", "V6")),
}
# Diffuse subendocardial ischaemia: the ST vector points towards aVR (ST depression in
# I, II, V4-V6 and elevation in aVR).
_SUBENDOCARDIAL = _unit((-0.7, -0.6, -0.35))


@dataclass(frozen=True)
class _Wave:
    """One wave of the beat template: a scalar time course times a fixed 3-D vector."""

    offset_s: np.ndarray   # (beats,) centre relative to each R peak
    sigma_left_s: float
    sigma_right_s: float
    vector: np.ndarray     # (3,) mV
    shape_power: float = 2.0  # 2 = Gaussian; larger = flat-topped (ST plateau)


def _wave_sum(n: int, fs: float, centres_s: np.ndarray, amplitudes: np.ndarray, sigma_left: float,
              sigma_right: float, power: float = 2.0) -> np.ndarray:
    """Sum of one wave over all beats: (n,) samples.

    Each beat contributes only inside +-4.5 sigma of its centre, so the work is
    beats x window, not beats x samples; `np.bincount` does the scatter-add.
    """
    half = int(math.ceil(4.5 * max(sigma_left, sigma_right) * fs)) + 1
    centre_idx = np.round(centres_s * fs).astype(np.int64)              # (B,)
    idx = centre_idx[:, None] + np.arange(-half, half + 1)[None, :]      # (B, W)
    dt = idx / fs - centres_s[:, None]                                   # (B, W) s
    sigma = np.where(dt < 0, sigma_left, sigma_right)
    z = np.abs(dt) / sigma
    vals = amplitudes[:, None] * np.exp(-0.5 * z**power)                 # (B, W)
    ok = (idx >= 0) & (idx < n)
    return np.bincount(idx[ok], weights=vals[ok], minlength=n)


# ---------------------------------------------------------------- rhythm

def _age_sinus_rate(rng: np.random.Generator, age: float | None) -> float:
    """A resting sinus rate inside 60-99/min, faster in children, slightly slower with age."""
    mean = 74.0
    if age is not None:
        if age < 12:
            mean = 90.0
        elif age < 18:
            mean = 80.0
        elif age > 65:
            mean = 70.0
    return float(np.clip(rng.normal(mean, 8.0), 61.0, 97.0))


def _beat_times(rng: np.random.Generator, mean_rr: float, duration_s: float, af: bool) -> np.ndarray:
    """R-peak times (s) covering [-1 s, duration + 1 s) so edge beats are cut, not missing."""
    n_max = int((duration_s + 2.5) / max(mean_rr * 0.5, 0.2)) + 4
    if af:
        # Irregularly irregular: independent RR intervals, no serial correlation; a
        # log-normal spread of ~12-25 % is typical, with a refractory floor.
        spread = rng.uniform(0.12, 0.25)
        rr = mean_rr * np.exp(rng.normal(-spread**2 / 2, spread, n_max))
        rr = np.maximum(rr, 0.28)
    else:
        # Sinus: respiratory sinus arrhythmia (a few %) plus small beat-to-beat jitter.
        resp_hz = rng.uniform(0.15, 0.33)
        depth = rng.uniform(0.01, 0.05)
        t_approx = np.arange(n_max) * mean_rr
        rr = mean_rr * (1 + depth * np.sin(2 * np.pi * resp_hz * t_approx + rng.uniform(0, 2 * np.pi))
                        + rng.normal(0, 0.008, n_max))
    times = -rng.uniform(0.2, 1.0) * mean_rr - 0.5 + np.cumsum(rr)
    return times[times < duration_s + 1.0]


# ---------------------------------------------------------------- noise

def _electrode_noise(rng: np.random.Generator, n: int, fs: float, level: float) -> np.ndarray:
    """Noise at the 9 electrodes (RA, LA, LL, C1..C6): (n, 9) mV.

    `level` 0 is a clean signal, ~0.3 a typical bedside recording, 1 a poor one.
    """
    out = np.zeros((n, 9))
    if level <= 0:
        return out
    t = (np.arange(n) / fs).astype(np.float32)
    # Noise needs no double precision (it is quantised to 1 uV); float32 sin is ~4x faster.
    # Sinusoids are built as shared sin/cos columns mixed per electrode (a phase shift is
    # a sin/cos mix), which is several times faster than one sin per electrode.
    f_resp = rng.uniform(0.15, 0.4)
    f_drift = rng.uniform(0.02, 0.1, 2)
    mains = float(rng.choice((50.0, 60.0)))
    freqs = np.array([f_resp, *f_drift, mains], dtype=np.float32)       # (4,)
    phase = np.float32(2 * np.pi) * t[:, None] * freqs[None, :]         # (n, 4)
    basis = np.concatenate([np.sin(phase), np.cos(phase)], axis=1)      # (n, 8)
    # Baseline wander: respiration (0.15-0.4 Hz) and slow electrode drift (< 0.1 Hz);
    # mains interference at 50 or 60 Hz with unequal pick-up per electrode (skin
    # impedance), absent in a good share of recordings.
    amp = np.stack([
        level * rng.uniform(0.02, 0.25, 9),
        level * rng.uniform(0.0, 0.2, 9),
        level * rng.uniform(0.0, 0.2, 9),
        level * rng.uniform(0.0, 0.04, 9) * (rng.random() < 0.6) * (mains < fs / 2),
    ])                                                                  # (4, 9)
    phi = rng.uniform(0, 2 * np.pi, (4, 9))
    phi[3] = rng.uniform(0, 0.3, 9)  # mains reaches all electrodes nearly in phase
    mix = np.concatenate([amp * np.cos(phi), amp * np.sin(phi)], axis=0).astype(np.float32)  # (8, 9)
    out += basis @ mix
    # Muscle (EMG): broadband noise (first difference of white noise, i.e. high-pass),
    # in bursts under a slow random envelope, strongest at the limb electrodes.
    white = rng.standard_normal((n + 1, 9), dtype=np.float32)
    emg = white[1:] - white[:-1]                                        # (n, 9)
    n_knots = max(int(n / fs) + 2, 3)
    # One burst envelope (the patient tensing) shared by all electrodes, each with its
    # own pick-up: cheaper than nine envelopes and what a recording looks like.
    envelope = np.interp(np.linspace(0.0, n_knots - 1.0, n), np.arange(n_knots), rng.gamma(1.5, 1.0, n_knots))
    emg_amp = level * rng.uniform(0.003, 0.03, 9) * _EMG_SITE / math.sqrt(2)
    out += emg * (envelope[:, None] * emg_amp[None, :])
    return out


# Relative muscle noise per electrode (RA, LA, LL, C1..C6): arm tremor dominates.
_EMG_SITE = np.array([1.5, 1.5, 1.0, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6])


# ---------------------------------------------------------------- the generator

def synth_ecg(
    rng: np.random.Generator,
    *,
    conditions: frozenset[str] = frozenset(),
    heart_rate: float | None = None,
    age: float | None = None,
    fs: float = 500.0,
    duration_s: float = 10.0,
    leads: tuple[str, ...] = STANDARD_12,
    noise: float | None = None,
) -> ECG:
    """A synthetic resting ECG with the given `conditions` (see `ECG_CONDITIONS`).

    - `conditions`: any of 'atrial_fibrillation', 'sinus_tachycardia',
      'sinus_bradycardia', 'st_elevation', 'st_depression', 'q_waves', 't_inversion',
      'peaked_t' (hyperkalaemia), 'lvh'. None: sinus rhythm at an age-plausible rate.
    - `heart_rate`: mean rate in /min (drawn from the rhythm when None).
    - `noise`: 0 clean; about 0.3 typical; 1 poor. None draws a realistic level.
    - `leads`: any subset/order of the standard 12 (names as in `STANDARD_12`).

    Returns an `ECG` with `signal` (samples, leads) in mV on a 1 uV grid (`adc_gain`
    1000), and the ground truth in `annotations["synthetic"]`. The same generator state
    gives the identical array. Raises `ValueError` for unknown conditions or leads,
    contradictory rhythms, or a heart rate that contradicts the rhythm asked for.
    """
    conditions = frozenset(conditions)
    unknown = sorted(conditions - ECG_CONDITIONS)
    if unknown:
        raise ValueError(f"unknown ECG condition(s) {unknown}; known: {sorted(ECG_CONDITIONS)}")
    if {"sinus_tachycardia", "sinus_bradycardia"} <= conditions:
        raise ValueError("sinus_tachycardia and sinus_bradycardia contradict each other")
    if fs < 100 or duration_s <= 0:
        raise ValueError("fs must be >= 100 Hz and duration_s > 0")
    lead_idx = []
    for name in leads:
        if name.upper() not in _LEAD_INDEX:
            raise ValueError(f"unknown lead {name!r}; use names from STANDARD_12")
        lead_idx.append(_LEAD_INDEX[name.upper()])

    af = "atrial_fibrillation" in conditions
    # ---- rate and rhythm
    if heart_rate is None:
        if af:
            heart_rate = rng.uniform(100, 150) if rng.random() < 0.6 else rng.uniform(65, 100)
        elif "sinus_tachycardia" in conditions:
            heart_rate = rng.uniform(105, 145)
        elif "sinus_bradycardia" in conditions:
            heart_rate = rng.uniform(42, 55)
        else:
            heart_rate = _age_sinus_rate(rng, age)
    heart_rate = float(heart_rate)
    if not 20 <= heart_rate <= 250:
        raise ValueError(f"heart_rate {heart_rate:g}/min is outside 20-250")
    if "sinus_tachycardia" in conditions and not af and heart_rate <= 100:
        raise ValueError(f"sinus_tachycardia needs heart_rate > 100, got {heart_rate:g}")
    if "sinus_bradycardia" in conditions and not af and heart_rate >= 60:
        raise ValueError(f"sinus_bradycardia needs heart_rate < 60, got {heart_rate:g}")
    mean_rr = 60.0 / heart_rate
    r_times = _beat_times(rng, mean_rr, duration_s, af)                  # (B,) s
    n_beats = r_times.size
    prev_rr = np.diff(r_times, prepend=r_times[0] - mean_rr)            # (B,) s

    n = int(round(duration_s * fs))
    # Per-beat amplitude modulation by respiration (the heart moves with the diaphragm).
    resp_mod = 1 + rng.uniform(0.0, 0.08) * np.sin(2 * np.pi * rng.uniform(0.15, 0.33) * r_times
                                                    + rng.uniform(0, 2 * np.pi))  # (B,)

    # ---- morphology of this patient
    older = 0.0 if age is None else float(np.clip((age - 40) / 40, -0.5, 1.0))
    qrs_s = float(np.clip(rng.normal(0.090, 0.008), 0.072, 0.108))       # QRS duration
    pr_s = float(np.clip(rng.normal(0.155 + 0.012 * older, 0.018), 0.12, 0.20))
    qtc_s = float(np.clip(rng.normal(0.405, 0.018), 0.37, 0.445))        # Fridericia
    axis = math.radians(float(np.clip(rng.normal(50 - 15 * older, 20), -25, 90)))
    size = float(np.clip(rng.normal(1.0 - 0.12 * older, 0.15), 0.6, 1.4))  # body habitus x age

    # QRS: septal (left->right, anterior), free wall (left, inferior, posterior), basal.
    septal = 0.25 * size * _unit((-0.6, 0.15, 0.75))
    free_wall = 1.35 * size * _unit((math.cos(axis), math.sin(axis), -0.25))
    basal = 0.45 * size * _unit((-0.3, -0.45, -0.8))
    t_vec = 0.33 * size * _unit((math.cos(axis - 0.15), math.sin(axis - 0.15), 0.35))
    p_vec = 0.16 * _unit((0.5, 0.85, 0.1))
    st_vec = np.zeros(3)

    truth: dict[str, object] = {"conditions": sorted(conditions)}

    if "lvh" in conditions:
        # Leftward, posterior free-wall forces; strain (ST down, T opposite to QRS).
        free_wall = 1.35 * size * _unit((math.cos(axis - 0.35), math.sin(axis - 0.35), -0.45))
        basal = basal * 1.3
    # Scale the ventricular forces so Sokolow-Lyon lands where the condition says
    # (the septal dipole is fixed, so a few multiplicative steps converge).
    sokolow_target = rng.uniform(3.8, 5.5) if "lvh" in conditions else rng.uniform(1.6, 3.1)
    for _ in range(3):
        k = sokolow_target / _sokolow(septal, free_wall, basal, qrs_s)
        free_wall, basal = free_wall * k, basal * k
    if "lvh" in conditions and rng.random() < 0.6:
        lateral = _TERRITORIES["lateral"][0]
        st_vec = st_vec - rng.uniform(0.05, 0.12) * lateral
        t_vec = t_vec - (t_vec @ lateral + rng.uniform(0.1, 0.25)) * lateral
    truth["sokolow_lyon_mv"] = round(_sokolow(septal, free_wall, basal, qrs_s), 3)

    q_extra = np.zeros(3)
    if "q_waves" in conditions:
        territory = str(rng.choice(list(_TERRITORIES)))
        u, _ = _TERRITORIES[territory]
        # Necrosis removes forces towards the territory: early vector pointing away.
        q_extra = -rng.uniform(0.6, 1.0) * size * u
        # ... and the surviving free wall gives less R towards the territory.
        free_wall = free_wall - 0.6 * (free_wall @ u) * u * (free_wall @ u > 0)
        truth["q_wave_territory"] = territory

    if "st_elevation" in conditions:
        territory = str(rng.choice(list(_TERRITORIES)))
        u, key_leads = _TERRITORIES[territory]
        target = rng.uniform(0.2, 0.45)   # mV of ST elevation in the most affected lead
        proj = _LEAD_VECTORS[[_LEAD_INDEX[k.upper()] for k in key_leads]] @ u
        st_vec = st_vec + u * (target / float(np.max(proj)))
        t_vec = t_vec + rng.uniform(0.1, 0.3) * u   # hyperacute T in the same territory
        truth["st_elevation_territory"] = territory
    if "st_depression" in conditions:
        target = rng.uniform(0.12, 0.3)
        proj = _LEAD_VECTORS @ _SUBENDOCARDIAL
        key = [_LEAD_INDEX[k] for k in ("I", "II", "V4", "V5", "V6")]
        st_vec = st_vec + _SUBENDOCARDIAL * (target / float(np.max(-proj[key])))
    if "t_inversion" in conditions:
        territory = str(rng.choice(list(_TERRITORIES)))
        u, key_leads = _TERRITORIES[territory]
        rows = _LEAD_VECTORS[[_LEAD_INDEX[k.upper()] for k in key_leads]]
        depth = rng.uniform(0.2, 0.5)    # mV of T inversion in the typical key lead
        # Move T against the territory until the median key lead reads -depth.
        now = float(np.median(rows @ t_vec))
        t_vec = t_vec - u * ((now + depth) / float(np.median(rows @ u)))
        truth["t_inversion_territory"] = territory
    peaked = "peaked_t" in conditions
    t_sigma_left, t_sigma_right = rng.uniform(0.045, 0.06), rng.uniform(0.03, 0.038)
    if peaked:
        # Hyperkalaemia: tall, narrow-based, symmetric ("tented") T waves.
        t_sigma_left = t_sigma_right = rng.uniform(0.026, 0.034)
        target = rng.uniform(1.15, 1.8)  # mV in the tallest precordial lead
        t_vec = t_vec * (target / float(np.max(_CHEST @ t_vec)))
    else:
        # Keep a normal T below the "tall T" thresholds (1.0 mV chest, 0.5 mV limb).
        tall = max(float(np.max(_CHEST @ t_vec)) / 0.8, float(np.max(_LEAD_VECTORS[:6] @ t_vec)) / 0.45, 1.0)
        t_vec = t_vec / tall

    # ---- timing per beat, relative to the R peak
    qrs_on = -0.5 * qrs_s
    qt = qtc_s * np.cbrt(np.clip(prev_rr, 0.25, 2.0))                    # (B,) s
    t_end = qrs_on + qt
    # T end as the tangent method finds it: the steepest downslope of a Gaussian (at
    # peak + sigma) extrapolated to the baseline lands at peak + 2 sigma.
    t_peak = t_end - 2.0 * t_sigma_right                                 # (B,)
    j_point = qrs_on + qrs_s
    p_dur = float(np.clip(rng.normal(0.10, 0.01), 0.08, 0.115))
    p_centre = qrs_on - pr_s + p_dur / 2
    ones = np.ones(n_beats)
    amp = resp_mod

    waves = [
        _Wave(ones * (-0.26 * qrs_s), 0.075 * qrs_s, 0.075 * qrs_s, septal),
        _Wave(ones * 0.0, 0.115 * qrs_s, 0.115 * qrs_s, free_wall),
        _Wave(ones * (0.27 * qrs_s), 0.1 * qrs_s, 0.1 * qrs_s, basal),
        _Wave(t_peak, t_sigma_left, t_sigma_right, t_vec),
    ]
    if np.any(q_extra):
        # Wide (>= 40 ms) and early: the infarct Q wave.
        waves.append(_Wave(ones * (-0.2 * qrs_s), 0.17 * qrs_s, 0.12 * qrs_s, q_extra))
    # The ST plateau runs flat-topped from the J point into the T wave (injury current).
    st_mid = (j_point + t_peak) / 2                                      # (B,) s
    st_half = max(float(np.mean(t_peak - j_point)) / 2, 0.03) * 1.05
    if np.any(st_vec):
        waves.append(_Wave(st_mid, st_half, st_half, st_vec, 6.0))
    if not af:
        waves.append(_Wave(ones * p_centre, p_dur / 5, p_dur / 5, p_vec))

    heart = np.zeros((n, 3))                                             # (samples, xyz) mV
    for w in waves:
        scalar = _wave_sum(n, fs, r_times + w.offset_s, amp, w.sigma_left_s, w.sigma_right_s, w.shape_power)
        heart += scalar[:, None] * w.vector[None, :]
    if af:
        heart += _fibrillatory_waves(rng, n, fs)

    # ---- leads: recorded I, II, V1-V6 + electrode noise, quantised, then derived leads
    level = float(np.clip(rng.gamma(2.0, 0.12), 0.02, 1.0)) if noise is None else float(noise)
    if level < 0:
        raise ValueError("noise must be >= 0")
    elec = _electrode_noise(rng, n, fs, level)                          # (n, 9)
    wct = elec[:, :3].mean(axis=1, keepdims=True)
    lead_i = heart @ _I + (elec[:, 1] - elec[:, 0])
    lead_ii = heart @ _II + (elec[:, 2] - elec[:, 0])
    chest = heart @ _CHEST.T + (elec[:, 3:] - wct)                      # (n, 6)
    d_i = np.round(lead_i * ADC_GAIN)
    d_ii = np.round(lead_ii * ADC_GAIN)
    digital = np.empty((n, 12))
    digital[:, 0] = d_i
    digital[:, 1] = d_ii
    digital[:, 2] = d_ii - d_i
    digital[:, 3] = np.round(-(d_i + d_ii) / 2)
    digital[:, 4] = np.round(d_i - d_ii / 2)
    digital[:, 5] = np.round(d_ii - d_i / 2)
    digital[:, 6:] = np.round(chest * ADC_GAIN)
    signal = digital[:, lead_idx] / ADC_GAIN                            # (samples, leads) mV

    # ---- ground truth a reader can be checked against
    in_window = (r_times >= 0) & (r_times < duration_s)
    rr_in = np.diff(r_times[in_window])
    truth["rhythm"] = _rhythm_label(af, 60.0 / float(np.mean(rr_in)) if rr_in.size else heart_rate)
    truth["heart_rate"] = round(60.0 / float(np.mean(rr_in)), 2) if rr_in.size else round(heart_rate, 2)
    truth["r_peaks"] = [int(round(t * fs)) for t in r_times[in_window]]
    truth["intervals_ms"] = {
        "PR": None if af else round(1000 * pr_s, 1),
        "QRS": round(1000 * qrs_s, 1),
        "QT": round(1000 * qtc_s * float(np.cbrt(mean_rr)), 1),
        "QTc_fridericia": round(1000 * qtc_s, 1),
    }
    truth["noise_level"] = round(level, 3)
    # Per-lead ST at J+40 ms and T peak amplitude of the model (no noise), for the leads
    # generated; a reader measures the same things.
    st_shape = math.exp(-0.5 * (abs(j_point + 0.04 - float(np.mean(st_mid))) / st_half) ** 6)
    st_per_lead = _LEAD_VECTORS @ st_vec * st_shape
    t_per_lead = _LEAD_VECTORS @ t_vec
    names = [STANDARD_12[i] for i in lead_idx]
    truth["st_elevation_leads"] = [STANDARD_12[i] for i in lead_idx if st_per_lead[i] >= 0.1]
    truth["st_depression_leads"] = [STANDARD_12[i] for i in lead_idx if st_per_lead[i] <= -0.05]
    truth["t_inversion_leads"] = [STANDARD_12[i] for i in lead_idx if t_per_lead[i] <= -0.1]
    truth["t_peak_mv"] = {nm: round(float(t_per_lead[i]), 3) for nm, i in zip(names, lead_idx)}
    if np.any(q_extra):
        q_proj = _LEAD_VECTORS @ q_extra
        truth["q_wave_leads"] = [STANDARD_12[i] for i in lead_idx if q_proj[i] <= -0.3]
    return ECG(
        signal=signal,
        fs=float(fs),
        leads=names,
        adc_gain=ADC_GAIN,
        source="synthetic",
        annotations={"synthetic": truth},
    )


def _rhythm_label(af: bool, rate: float) -> str:
    if af:
        return "atrial_fibrillation"
    if rate > 100:
        return "sinus_tachycardia"
    if rate < 60:
        return "sinus_bradycardia"
    return "sinus_rhythm"


def _qrs_template(septal: np.ndarray, free_wall: np.ndarray, basal: np.ndarray, qrs_s: float) -> np.ndarray:
    """One noiseless QRS at 1 kHz projected on all 12 leads: (samples, 12) mV."""
    t = np.arange(-0.08, 0.08, 0.001)[:, None]
    hv = (np.exp(-0.5 * ((t + 0.26 * qrs_s) / (0.075 * qrs_s)) ** 2) * septal
          + np.exp(-0.5 * (t / (0.115 * qrs_s)) ** 2) * free_wall
          + np.exp(-0.5 * ((t - 0.27 * qrs_s) / (0.1 * qrs_s)) ** 2) * basal)   # (T, 3)
    return hv @ _LEAD_VECTORS.T


def _sokolow(septal: np.ndarray, free_wall: np.ndarray, basal: np.ndarray, qrs_s: float) -> float:
    """Sokolow-Lyon voltage of the noiseless QRS: S in V1 + the larger R in V5 or V6 (mV)."""
    qrs = _qrs_template(septal, free_wall, basal, qrs_s)
    v1, v5, v6 = (_LEAD_INDEX[k] for k in ("V1", "V5", "V6"))
    return float(max(0.0, -qrs[:, v1].min()) + max(qrs[:, v5].max(), qrs[:, v6].max(), 0.0))


def _fibrillatory_waves(rng: np.random.Generator, n: int, fs: float) -> np.ndarray:
    """Atrial fibrillatory activity (4-9 Hz, varying amplitude) as a heart vector: (n, 3) mV.

    Two independent sources with different directions, both best seen in V1 and the
    inferior leads, so no lead shows a repeating P wave.
    """
    t = np.arange(n) / fs
    out = np.zeros((n, 3))
    amp = rng.uniform(0.03, 0.1)
    for direction in (_unit((-0.2, 0.6, 0.8)), _unit((0.4, 0.9, 0.2))):
        s = np.zeros(n)
        for _ in range(3):
            f = rng.uniform(4.0, 9.0)
            # A slow random walk of the frequency makes the waves non-periodic.
            drift = np.cumsum(rng.normal(0, 0.02, n)) / fs * 2 * np.pi
            s += np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi) + drift * f)
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.uniform(0, 2 * np.pi))
        out += (amp / 3) * (s * envelope)[:, None] * direction[None, :]
    return out
