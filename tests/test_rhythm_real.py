"""Rhythm reading on real recordings (CinC-2017 AliveCor single lead, CPSC-2018 12-lead),
the bundled rhythm model file, and upside-down leads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medfuse.errors import InputError
from medfuse.interpret.ecg import interpret_ecg
from medfuse.interpret.rhythm import (
    FEATURES,
    MODEL_FILE,
    RhythmModel,
    beat_quality,
    fit_rhythm_model,
    load_rhythm_model,
    rr_irregularity,
)
from medfuse.io.cinc import read_challenge_ecg
from medfuse.record.case import ECG
from medfuse.synth.ecg import synth_ecg

REAL = Path(__file__).parent / "fixtures" / "real" / "ecg_rhythm"


def _read(record: str) -> ECG:
    return read_challenge_ecg(REAL / record)


def _labels() -> dict[str, str]:
    rows = (REAL / "labels.csv").read_text().splitlines()[1:]  # record,label,set,meaning
    return dict(tuple(r.split(",")[:2]) for r in rows)  # type: ignore[misc]


def _records(label: str) -> list[str]:
    return sorted(r for r, lab in _labels().items() if lab == label)


# ---------------------------------------------------------------- real recordings

@pytest.mark.parametrize("record", _records("A"))
def test_real_af_recordings_read_as_af(record):
    reading = interpret_ecg(_read(record))
    assert reading.rhythm == "atrial_fibrillation", reading.rhythm_probabilities
    assert reading.rhythm_probabilities["A"] >= load_rhythm_model().af_threshold
    assert 40 <= reading.heart_rate <= 200


@pytest.mark.parametrize("record", _records("N"))
def test_real_sinus_recordings_read_as_sinus(record):
    reading = interpret_ecg(_read(record))
    assert reading.rhythm.startswith("sinus"), (reading.rhythm, reading.rhythm_probabilities)
    assert reading.rhythm_probabilities["A"] < 0.2


@pytest.mark.parametrize("record", _records("~"))
def test_real_noisy_recording_is_flagged_not_given_a_rhythm(record):
    reading = interpret_ecg(_read(record))
    assert reading.rhythm == "unreadable" and "nois" in reading.reason
    assert reading.heart_rate is None


def test_the_rule_alone_is_still_available():
    """`rhythm_model=False` reads with the rule (no model output), for comparison."""
    reading = interpret_ecg(_read(_records("A")[0]), rhythm_model=False)
    assert reading.rhythm_probabilities is None and reading.rhythm_features is not None


# ---------------------------------------------------------------- upside-down leads

@pytest.mark.parametrize("record", ["A00225", "A00057"])
def test_an_upside_down_lead_reads_like_the_upright_one(record):
    """A handheld device held the other way round records the lead negated: it is
    recognised as upside down, and the beats, the rate and the rhythm do not change.
    (Not every recording: an upright lead is kept unless its negative gives clearly more
    consistent beats, see `medfuse.interpret.ecg._best_beats`.)"""
    ecg = _read(record)
    upright = interpret_ecg(ecg)
    flipped = interpret_ecg(ECG(signal=-ecg.signal, fs=ecg.fs, leads=ecg.leads))
    assert flipped.rhythm == upright.rhythm
    assert flipped.rhythm_lead_inverted != upright.rhythm_lead_inverted
    assert abs(flipped.heart_rate - upright.heart_rate) < 1.0
    assert abs(flipped.n_beats - upright.n_beats) <= 1


# ---------------------------------------------------------------- the model file

def test_bundled_model_gives_the_probabilities_it_was_trained_with():
    """The JSON file, evaluated with numpy, reproduces scikit-learn's own probabilities
    for the rows stored at training time."""
    model = load_rhythm_model()
    assert model.features == FEATURES and set(model.classes) == {"N", "A", "O", "~"}
    check = model.spec["check"]
    for row, want in zip(check["x"], check["probabilities"], strict=True):
        got = model.probabilities(dict(zip(model.features, row)))
        assert np.allclose([got[c] for c in model.classes], want, atol=1e-9)


def test_fitted_model_round_trips_through_json(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, len(FEATURES)))
    y = ["A" if v > 0.3 else "N" if v < -0.3 else "O" for v in x[:, 1] + 0.3 * rng.normal(size=80)]
    spec = fit_rhythm_model(x, y, af_threshold=0.5)
    path = tmp_path / MODEL_FILE
    path.write_text(json.dumps(spec))
    model = load_rhythm_model(path)
    for row, want in zip(spec["check"]["x"], spec["check"]["probabilities"], strict=True):
        got = model.probabilities(dict(zip(FEATURES, row)))
        assert np.allclose([got[c] for c in model.classes], want, atol=1e-9)
    # The AF decision follows the stored threshold.
    label, probs = model.predict(dict(zip(FEATURES, x[0])))
    assert (label == "A") == (probs["A"] >= 0.5)


def test_bad_model_files_are_one_clear_error(tmp_path):
    missing = tmp_path / "none.json"
    with pytest.raises(InputError, match="no such rhythm model file"):
        load_rhythm_model(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(InputError, match="invalid JSON"):
        load_rhythm_model(broken)
    spec = json.loads(json.dumps(load_rhythm_model().spec))
    spec["coef"] = spec["coef"][:-1]
    with pytest.raises(InputError, match="do not match"):
        RhythmModel(spec, "x.json")


# ---------------------------------------------------------------- features

def test_rr_irregularity_separates_regular_from_random_intervals():
    regular = rr_irregularity(np.full(30, 0.8) + 0.005 * np.sin(np.arange(30) / 3))
    random = rr_irregularity(np.random.default_rng(1).uniform(0.4, 1.0, 200))
    assert regular["rr_cv"] < 0.01 and random["rr_cv"] > 0.2
    assert regular["turning_point_ratio"] < 0.3
    assert abs(random["turning_point_ratio"] - 2 / 3) < 0.08   # expected for an i.i.d. sequence
    assert random["cosen"] > regular["cosen"]
    with pytest.raises(ValueError):
        rr_irregularity(np.array([0.8, 0.8]))


def test_isolated_ectopic_beats_keep_the_rhythm_regular_where_af_does_not():
    """Sinus rhythm with a premature beat and its pause every 8 beats is as variable as AF
    by the coefficient of variation, but most of its intervals stay near the median and
    most successive-difference pairs at the Lorenz plot's origin; in AF neither holds."""
    ectopic = np.tile([0.8] * 6 + [0.5, 1.1], 5)
    af = np.random.default_rng(2).uniform(0.45, 1.05, 40)
    sinus_with_ectopy, fibrillation = rr_irregularity(ectopic), rr_irregularity(af)
    assert sinus_with_ectopy["rr_cv"] > 0.15 and fibrillation["rr_cv"] > 0.15
    assert sinus_with_ectopy["regular_fraction"] >= 0.7 and fibrillation["regular_fraction"] <= 0.35
    assert sinus_with_ectopy["lorenz_origin"] >= 0.5 and fibrillation["lorenz_origin"] <= 0.1


def test_a_noise_burst_shows_in_per_beat_quality():
    """Beats alike give a per-beat template correlation near 1; noise over a third of the
    recording drags its 10th percentile down and marks those beats bad."""
    fs = 250.0
    t = np.arange(int(30 * fs)) / fs
    rpeaks = np.arange(int(0.5 * fs), t.size - int(0.5 * fs), int(0.8 * fs))
    clean = sum(np.exp(-0.5 * ((t - r / fs) / 0.012) ** 2) - 0.3 * np.exp(-0.5 * ((t - r / fs - 0.25) / 0.05) ** 2)
                for r in rpeaks)
    noisy = clean + np.where(t < 10, np.random.default_rng(0).normal(0, 0.6, t.size), 0.0)
    good, bad = beat_quality(clean, rpeaks, fs), beat_quality(noisy, rpeaks, fs)
    assert good["beat_correlation_p10"] > 0.99 and good["bad_beat_fraction"] == 0.0
    assert bad["beat_correlation_p10"] < 0.7 and 0.2 < bad["bad_beat_fraction"] < 0.5


def _bigeminy(ecg: ECG) -> ECG:
    """`ecg` (synthetic sinus) with 200 ms of baseline before every other P wave: RR
    alternating long and short, every beat keeping its P wave (like atrial bigeminy)."""
    fs, sig = ecg.fs, np.asarray(ecg.signal)
    cut = [r - int(0.27 * fs) for r in ecg.annotations["synthetic"]["r_peaks"][1::2]]
    pieces, last = [], 0
    for c in cut:
        pieces += [sig[last:c], np.repeat(sig[c:c + 1], int(0.2 * fs), axis=0)]
        last = c
    return ECG(signal=np.concatenate(pieces + [sig[last:]]), fs=fs, leads=ecg.leads)


def test_other_with_p_waves_is_other_when_irregular_and_sinus_when_regular():
    """The model's 'other' stands for an irregular rhythm with P waves (ectopic beats keep
    theirs: the reader used to call every such recording sinus); a regular rhythm with a
    repeating P wave is sinus whatever the model says about its morphology."""
    spec = json.loads(json.dumps(load_rhythm_model().spec))
    spec["coef"] = [[0.0] * len(spec["features"]) for _ in spec["classes"]]
    spec["intercept"] = [5.0 if c == "O" else 0.0 for c in spec["classes"]]
    always_other = RhythmModel(spec, "always_other.json")
    regular = synth_ecg(np.random.default_rng(11), conditions=frozenset())
    irregular = interpret_ecg(_bigeminy(regular), rhythm_model=always_other)
    assert irregular.p_wave_present >= 0.5 and irregular.rr_successive_ratio > 0.1
    assert irregular.rhythm == "other" and irregular.rhythm_probabilities["O"] > 0.9
    assert interpret_ecg(regular, rhythm_model=always_other).rhythm == "sinus_rhythm"


def test_bundled_model_is_fitted_without_class_reweighting():
    """Its probabilities are meant as calibrated to the training mix, not re-balanced."""
    spec = load_rhythm_model().spec
    assert spec["class_weight"] == "none" and spec["features"] == list(FEATURES)
