"""Synthetic ECG generator: determinism, lead physiology, WFDB round trip, ground truth, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from medfuse.synth.ecg import ECG_CONDITIONS, STANDARD_12, synth_ecg


def test_same_seed_gives_identical_signal_and_truth():
    a = synth_ecg(np.random.default_rng(42), conditions=frozenset({"lvh", "st_elevation"}), age=60)
    b = synth_ecg(np.random.default_rng(42), conditions=frozenset({"lvh", "st_elevation"}), age=60)
    c = synth_ecg(np.random.default_rng(43), conditions=frozenset({"lvh", "st_elevation"}), age=60)
    assert np.array_equal(a.signal, b.signal)
    assert a.annotations == b.annotations
    assert not np.array_equal(a.signal, c.signal)


def test_shape_leads_and_microvolt_grid():
    ecg = synth_ecg(np.random.default_rng(0))
    assert ecg.signal.shape == (5000, 12)  # (samples, leads): 10 s at 500 Hz
    assert ecg.leads == list(STANDARD_12) and ecg.fs == 500.0 and ecg.adc_gain == 1000.0
    # On the 1 uV grid: what WFDB stores (round(mV * gain)) and reads back (/ gain) is the same.
    assert np.array_equal(np.round(ecg.signal * ecg.adc_gain) / ecg.adc_gain, ecg.signal)


def test_limb_leads_obey_einthoven_and_goldberger():
    ecg = synth_ecg(np.random.default_rng(1), conditions=frozenset({"atrial_fibrillation"}), noise=0.8)
    lead = {name: np.round(ecg.signal[:, k] * 1000) for k, name in enumerate(ecg.leads)}  # integer uV
    assert np.array_equal(lead["III"], lead["II"] - lead["I"])                 # exact, noise included
    assert np.max(np.abs(lead["aVR"] + (lead["I"] + lead["II"]) / 2)) <= 0.5   # rounding only
    assert np.max(np.abs(lead["aVL"] - (lead["I"] - lead["II"] / 2))) <= 0.5
    assert np.max(np.abs(lead["aVF"] - (lead["II"] - lead["I"] / 2))) <= 0.5


def test_round_trips_exactly_through_a_case_folder(tmp_path):
    from medfuse.record.case import PatientCase
    from medfuse.record.store import read_case, write_case

    ecg = synth_ecg(np.random.default_rng(5), conditions=frozenset({"peaked_t"}))
    write_case(PatientCase(case_id="s1", ecg=ecg), tmp_path / "s1")
    back = read_case(tmp_path / "s1")
    assert np.array_equal(back.ecg.signal, ecg.signal)
    assert back.ecg.annotations["synthetic"]["conditions"] == ["peaked_t"]


def test_lead_subset_any_rate_and_length():
    ecg = synth_ecg(np.random.default_rng(2), leads=("V1", "II"), fs=250.0, duration_s=30.0)
    full = synth_ecg(np.random.default_rng(2), fs=250.0, duration_s=30.0)
    assert ecg.signal.shape == (7500, 2) and ecg.leads == ["V1", "II"]
    # Same generator state: the subset is the same recording, by name.
    assert np.array_equal(ecg.signal[:, 1], full.lead("II"))


def test_bad_arguments_are_rejected():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown ECG condition"):
        synth_ecg(rng, conditions=frozenset({"stemi"}))
    with pytest.raises(ValueError, match="contradict"):
        synth_ecg(rng, conditions=frozenset({"sinus_tachycardia", "sinus_bradycardia"}))
    with pytest.raises(ValueError, match="heart_rate > 100"):
        synth_ecg(rng, conditions=frozenset({"sinus_tachycardia"}), heart_rate=80)
    with pytest.raises(ValueError, match="unknown lead"):
        synth_ecg(rng, leads=("I", "V7x"))


def test_ground_truth_follows_the_conditions():
    rng = np.random.default_rng(9)
    for _ in range(5):
        normal = synth_ecg(rng).annotations["synthetic"]
        assert normal["rhythm"] == "sinus_rhythm" and 60 <= normal["heart_rate"] <= 100
        assert normal["sokolow_lyon_mv"] < 3.5
        assert not normal["st_elevation_leads"]
        lvh = synth_ecg(rng, conditions=frozenset({"lvh"})).annotations["synthetic"]
        assert lvh["sokolow_lyon_mv"] > 3.5
        af = synth_ecg(rng, conditions=frozenset({"atrial_fibrillation"})).annotations["synthetic"]
        assert af["rhythm"] == "atrial_fibrillation" and af["intervals_ms"]["PR"] is None
        brady = synth_ecg(rng, conditions=frozenset({"sinus_bradycardia"})).annotations["synthetic"]
        assert brady["heart_rate"] < 60
        ste = synth_ecg(rng, conditions=frozenset({"st_elevation"})).annotations["synthetic"]
        assert len(ste["st_elevation_leads"]) >= 2


def test_every_condition_generates():
    rng = np.random.default_rng(3)
    for condition in sorted(ECG_CONDITIONS):
        ecg = synth_ecg(rng, conditions=frozenset({condition}))
        assert np.all(np.isfinite(ecg.signal))
        assert 0.3 < np.ptp(ecg.lead("II")) < 10  # mV: a plausible ECG, not silence or garbage


def test_intervals_agree_with_neurokit2_delineation():
    """The model's PR/QRS/QT and heart rate against neurokit2's delineation (via the reader)."""
    from medfuse.interpret.ecg import interpret_ecg

    for seed in range(4):
        ecg = synth_ecg(np.random.default_rng(100 + seed), noise=0.2)
        truth = ecg.annotations["synthetic"]
        reading = interpret_ecg(ecg)
        assert abs(reading.heart_rate - truth["heart_rate"]) < 1.0
        assert abs(reading.pr_ms - truth["intervals_ms"]["PR"]) <= 30
        assert abs(reading.qrs_ms - truth["intervals_ms"]["QRS"]) <= 35
        assert abs(reading.qt_ms - truth["intervals_ms"]["QT"]) <= 30


def test_generation_is_fast_enough_for_the_cohort_generator():
    rng = np.random.default_rng(0)
    synth_ecg(rng)  # warm-up
    n = 40
    start = time.perf_counter()
    for i in range(n):
        synth_ecg(rng, conditions=frozenset({"atrial_fibrillation", "lvh"}) if i % 2 else frozenset())
    per_ecg = (time.perf_counter() - start) / n
    # ~5-10 ms on an idle core; the bound leaves room for a shared CI machine.
    assert per_ecg < 0.04, f"{per_ecg * 1000:.1f} ms per 12-lead 10 s ECG"
