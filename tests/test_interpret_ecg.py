"""ECG reader: synthetic patterns, real recordings (MIT-BIH 100, a DICOM ECG), bad input."""

from __future__ import annotations

import numpy as np
import pytest

from medfuse.interpret.ecg import ecg_evidence, interpret_ecg
from medfuse.record.case import ECG
from medfuse.synth.ecg import synth_ecg

SEEDS = (11, 12, 13)


def _synth(condition: str, seed: int, **kw) -> ECG:
    return synth_ecg(np.random.default_rng(seed), conditions=frozenset({condition}) if condition else frozenset(), **kw)


# ---------------------------------------------------------------- synthetic patterns

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("condition", ["", "atrial_fibrillation", "sinus_tachycardia", "sinus_bradycardia"])
def test_rhythm_is_recognised(condition, seed):
    ecg = _synth(condition, seed)
    truth = ecg.annotations["synthetic"]
    reading = interpret_ecg(ecg)
    assert reading.rhythm == truth["rhythm"]
    assert abs(reading.heart_rate - truth["heart_rate"]) < 2.0
    if condition == "atrial_fibrillation":
        assert reading.p_wave_present < 0.5 and reading.pr_ms is None
    else:
        assert reading.p_wave_present >= 0.5 and reading.pr_ms is not None


RATE_SEEDS = range(100, 150)


@pytest.mark.parametrize("condition", ["atrial_fibrillation", "peaked_t"])
def test_heart_rate_within_2_bpm_on_48_of_50_seeds(condition):
    """The rate is the mean RR of the detected beats; the truth is the mean RR of the
    synthetic beats inside the window. In AF the RRs differ, so every lost beat (a
    short RR, a beat near either end) or extra one (a T wave whose QRS lies before the
    recording) shifts the mean; a tall peaked T is easily taken for a beat. Criterion:
    at least 48 of seeds 100-149 within 2 bpm (lead II alone, 10 s; before the fix 41/50
    for AF, 33/50 for peaked T)."""
    misses = []
    for seed in RATE_SEEDS:
        ecg = synth_ecg(np.random.default_rng(seed), conditions=frozenset({condition}), leads=("II",))
        truth = ecg.annotations["synthetic"]["heart_rate"]
        rate = interpret_ecg(ecg).heart_rate
        if rate is None or abs(rate - truth) >= 2.0:
            misses.append((seed, truth, rate))
    assert len(misses) <= 2, misses


def test_normal_ecg_has_no_morphology_flags():
    for seed in SEEDS:
        reading = interpret_ecg(_synth("", seed))
        assert not (reading.st_elevation_leads or reading.st_depression_leads or reading.q_wave_leads
                    or reading.tall_t_leads or reading.t_inversion_leads)
        assert reading.sokolow_lyon_lvh is False and reading.signal_quality in ("good", "acceptable")


@pytest.mark.parametrize("seed", SEEDS)
def test_st_elevation_in_the_raised_leads(seed):
    ecg = _synth("st_elevation", seed)
    raised = set(ecg.annotations["synthetic"]["st_elevation_leads"])
    reading = interpret_ecg(ecg)
    found = set(reading.st_elevation_leads)
    assert raised & found, (raised, found)
    assert found <= raised | {"V2", "V3"} or len(found - raised) <= 1
    # Measured level in every raised lead (J + 40 ms) is clearly above baseline.
    assert all(reading.leads[lead].st_mv > 0.05 for lead in raised)


@pytest.mark.parametrize("seed", SEEDS)
def test_st_depression_t_inversion_and_q_waves(seed):
    dep = _synth("st_depression", seed)
    got = set(interpret_ecg(dep).st_depression_leads)
    assert len(got & set(dep.annotations["synthetic"]["st_depression_leads"])) >= 2

    inv = _synth("t_inversion", seed)
    want = set(inv.annotations["synthetic"]["t_inversion_leads"]) - {"aVR", "III", "V1"}
    assert len(set(interpret_ecg(inv).t_inversion_leads) & want) >= 2

    q = _synth("q_waves", seed)
    got_q = set(interpret_ecg(q).q_wave_leads)
    assert len(got_q & set(q.annotations["synthetic"]["q_wave_leads"])) >= 2


@pytest.mark.parametrize("seed", SEEDS)
def test_peaked_t_amplitude(seed):
    ecg = _synth("peaked_t", seed)
    reading = interpret_ecg(ecg)
    assert len(reading.tall_t_leads) >= 2
    tallest_true = max(ecg.annotations["synthetic"]["t_peak_mv"].values())
    tallest_read = max(m.t_mv for m in reading.leads.values())
    assert tallest_read >= 1.0
    assert abs(tallest_read - tallest_true) < 0.2  # mV


@pytest.mark.parametrize("seed", SEEDS)
def test_lvh_voltage_criteria(seed):
    ecg = _synth("lvh", seed)
    reading = interpret_ecg(ecg)
    assert reading.sokolow_lyon_lvh is True
    assert abs(reading.sokolow_lyon_mv - ecg.annotations["synthetic"]["sokolow_lyon_mv"]) < 0.4
    assert reading.cornell_mv is not None and reading.cornell_threshold_mv == 2.8
    assert interpret_ecg(ecg, sex="F").cornell_threshold_mv == 2.0


def test_one_lead_low_sampling_rate_and_long_recordings():
    from scipy.signal import resample_poly

    ecg = _synth("atrial_fibrillation", 21)
    truth = ecg.annotations["synthetic"]
    one = ECG(signal=ecg.signal[:, [1]], fs=ecg.fs, leads=["II"])
    assert interpret_ecg(one).rhythm == "atrial_fibrillation"
    low = ECG(signal=resample_poly(ecg.signal, 1, 5, axis=0), fs=100.0, leads=ecg.leads)   # (1000, 12)
    reading = interpret_ecg(low)
    assert reading.rhythm == "atrial_fibrillation" and abs(reading.heart_rate - truth["heart_rate"]) < 2
    long = _synth("sinus_bradycardia", 22, duration_s=60.0, fs=250.0)
    assert interpret_ecg(long).rhythm == "sinus_bradycardia"


# ---------------------------------------------------------------- real recordings

def test_mitbih_100_heart_rate_matches_reference_annotations(fixtures):
    """Record 100 (MLII + V5, 360 Hz): 10 s windows every 3 min, HR vs the .atr beats."""
    import wfdb

    from medfuse.io.wfdb import read_wfdb

    ecg, _ = read_wfdb(fixtures / "ecg" / "100.hea")
    ann = wfdb.rdann(str(fixtures / "ecg" / "100"), "atr")
    beats = np.array([s for s, sym in zip(ann.sample, ann.symbol) if sym in set("NLRBAaJSVrFejnE/fQ?")])
    fs = ecg.fs
    for start_s in range(0, 1790, 180):
        a, b = int(start_s * fs), int((start_s + 10) * fs)
        window = ECG(signal=ecg.signal[a:b], fs=fs, leads=ecg.leads)
        inside = beats[(beats >= a) & (beats < b)]
        reference_bpm = 60.0 / np.mean(np.diff(inside) / fs)
        reading = interpret_ecg(window)
        assert abs(reading.heart_rate - reference_bpm) <= 2.0, start_s
        assert reading.rhythm == "sinus_rhythm", start_s


def test_dicom_ecg_reads_as_sinus_with_device_intervals(fixtures):
    """Tolerance against the device's own measurements: PR and QRS +-20 ms, QT +-25 ms.

    (Measured: PR 149 vs 161, QRS 91 vs 75, QT 366 vs 368 ms.)
    """
    from medfuse.io.ecg_dicom import read_dicom_ecg

    ecg = read_dicom_ecg(fixtures / "dicom" / "waveform_ecg.dcm")
    device = ecg.annotations["intervals_ms"]
    reading = interpret_ecg(ecg)
    assert reading.rhythm == "sinus_rhythm"
    assert abs(reading.heart_rate - 60000 / device["RR"]) < 1.5
    assert abs(reading.pr_ms - device["PR"]) <= 20
    assert abs(reading.qrs_ms - device["QRS"]) <= 20
    assert abs(reading.qt_ms - device["QT"]) <= 25
    # "ECG NORMALE": no morphology flag.
    assert not (reading.st_elevation_leads or reading.q_wave_leads or reading.tall_t_leads)
    assert reading.sokolow_lyon_lvh is False


# ---------------------------------------------------------------- bad input

def _ecg(signal: np.ndarray, fs: float = 500.0) -> ECG:
    return ECG(signal=signal, fs=fs, leads=["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"][: signal.shape[1]])


def _band_noise(rng, lo, hi, shape):
    from scipy.signal import butter, sosfiltfilt

    return sosfiltfilt(butter(4, [lo, hi], btype="band", fs=500, output="sos"), rng.standard_normal(shape), axis=0)


@pytest.mark.parametrize("name, make, reason", [
    ("flat", lambda rng: np.zeros((5000, 12)), "flat line"),
    ("clipped", lambda rng: np.clip(_synth("", 3).signal, -0.1, 0.1), "clipped"),
    ("white noise", lambda rng: rng.normal(0, 0.3, (5000, 12)), "noise"),
    ("muscle noise", lambda rng: 0.2 * _band_noise(rng, 20, 150, (5000, 12)), "noise"),
    ("too short", lambda rng: _synth("", 3).signal[:2000], "too short"),
])
def test_unreadable_recordings_say_why(name, make, reason):
    reading = interpret_ecg(_ecg(make(np.random.default_rng(7))))
    assert reading.rhythm == "unreadable", name
    assert reason in reading.reason
    assert reading.heart_rate is None  # never a made-up rate
    evidence = ecg_evidence(reading)
    assert len(evidence) == 1 and evidence[0].interpretation == "unreadable"


def test_low_sampling_rate_and_missing_signal_are_unreadable():
    ecg = _synth("", 4)
    assert "below 100 Hz" in interpret_ecg(ECG(signal=ecg.signal[::6], fs=500 / 6, leads=ecg.leads)).reason
    assert interpret_ecg(ECG(fs=500.0, leads=["II"])).reason == "no signal loaded"


def test_bad_leads_are_excluded_and_gaps_do_not_bias_the_rate():
    ecg = _synth("", 5)
    truth = ecg.annotations["synthetic"]["heart_rate"]
    sig = ecg.signal.copy()
    sig[:, 0] = 0.0                 # lead I disconnected
    sig[1000:1400, :] = np.nan      # 0.8 s dropout in every lead
    reading = interpret_ecg(ECG(signal=sig, fs=ecg.fs, leads=ecg.leads))
    assert reading.excluded_leads["I"] == "flat line"
    assert reading.rhythm == "sinus_rhythm"
    assert abs(reading.heart_rate - truth) < 2.0


# ---------------------------------------------------------------- evidence

def test_evidence_cites_leads_and_flags_abnormal_items():
    ecg = synth_ecg(np.random.default_rng(31), conditions=frozenset({"atrial_fibrillation", "st_elevation"}))
    reading = interpret_ecg(ecg)
    evidence = ecg_evidence(reading)
    rhythm = next(e for e in evidence if e.item == "rhythm")
    assert rhythm.value == "atrial_fibrillation" and rhythm.abnormal
    assert rhythm.source == f"ecg:lead {reading.rhythm_lead}"
    st = [e for e in evidence if e.item.startswith("ST elevation")]
    assert st and all(e.source == f"ecg:lead {e.item.split()[-1]}" and e.unit == "mV" and e.value >= 0.1 for e in st)
    assert any(e.item == "heart_rate" and e.unit == "/min" for e in evidence)
