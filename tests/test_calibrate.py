"""`medfuse calibrate`: site recalibration of the disease head (issue 12), on a tiny model
and a tiny labelled labs-only cohort whose score scale and prevalence differ from the
checkpoint's calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_model_diagnose import TINY

from medfuse.cli import main
from medfuse.model import MedFuse
from medfuse.model.config import ModelConfig
from medfuse.model.diagnosis import diagnose_many
from medfuse.record.case import Diagnosis, Labels, LabResult, PatientCase
from medfuse.record.store import write_case, write_index
from medfuse.train.encoders import EncoderData, predict
from medfuse.train.recalibrate import recalibrate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABS = (("creatinine", "mg/dL", 0.5, 6.0), ("glucose", "mg/dL", 70.0, 400.0), ("wbc", "10*3/uL", 3.0, 25.0),
        ("lactate", "mmol/L", 0.5, 6.0), ("bnp", "pg/mL", 20.0, 2000.0), ("crp", "mg/L", 1.0, 200.0))
N_PATIENTS, CASES_PER_PATIENT = 24, 2


def _lab_cases() -> list[PatientCase]:
    rng = np.random.default_rng(7)
    return [PatientCase(case_id=f"site-{p:02d}-{k}", patient_id=f"pt{p:02d}",
                        labs=[LabResult(name=code, code=code, value=round(float(rng.uniform(lo, hi)), 2), unit=unit)
                              for code, unit, lo, hi in LABS])
            for p in range(N_PATIENTS) for k in range(CASES_PER_PATIENT)]


@pytest.fixture(scope="module")
def site(one_torch_thread, tmp_path_factory):
    """(checkpoint, cohort, model): a checkpoint whose stored calibration is far too sharp
    (T = 0.05, thresholds 0.5) and a labs-only cohort labelled from the model's own scores
    (so a good operating point exists): diabetes in the top 40 % of its logit, acute renal
    failure in the bottom 30 % (the other way round), sepsis in 2 cases (too few to refit)."""
    root = tmp_path_factory.mktemp("site")
    model = MedFuse.build(ModelConfig.from_dict(TINY), tiny_llm=True)
    model.head.temperature[:] = 0.05
    model.head.thresholds[:] = 0.5
    model.card["trained"] = True
    checkpoint = model.save(root / "ckpt")
    cases = _lab_cases()
    logits = predict(model.fusion, EncoderData.build(cases, model, with_texts=False))["logits"]  # (n, D)
    keys = model.panel.keys
    dm, arf = logits[:, keys.index("diabetes_mellitus")], logits[:, keys.index("acute_renal_failure")]
    cohort = root / "cohort"
    for i, case in enumerate(cases):
        names = ["diabetes mellitus"] * bool(dm[i] >= np.quantile(dm, 0.6))
        names += ["acute renal failure"] * bool(arf[i] <= np.quantile(arf, 0.3))
        names += ["sepsis"] * (i in (3, 17))
        case.labels = Labels(diagnoses=[Diagnosis(name=n) for n in names])
        write_case(case, cohort / case.case_id)
    write_index(cohort)
    return checkpoint, cohort, model


@pytest.fixture(scope="module")
def refit(site, tmp_path_factory):
    checkpoint, cohort, _ = site
    out = tmp_path_factory.mktemp("refit") / "ckpt2"
    return recalibrate(checkpoint, cohort, out, min_positives=5), out


def test_refit_changes_thresholds_and_improves_held_out_ece(refit):
    report, _ = refit
    assert report["n_cases"] == N_PATIENTS * CASES_PER_PATIENT and report["n_patients"] == N_PATIENTS
    assert report["after"]["scored_on"] == "held out: 2-fold cross-fit by patient"
    assert {"diabetes_mellitus", "acute_renal_failure"} <= set(report["refit"])
    for key in ("diabetes_mellitus", "acute_renal_failure"):
        d = report["per_disease"][key]
        assert d["refit"] and d["threshold"][0] != d["threshold"][1] and d["temperature"][1] > 0.05
        assert d["ece"][1] < d["ece"][0]
    assert report["after"]["ece"] < report["before"]["ece"]
    assert set(report["before"]) == set(report["after"]) >= {"macro_f1", "jaccard", "ece", "scored_on"}


def test_diseases_with_too_few_positives_keep_their_calibration(refit):
    report, _ = refit
    sepsis = report["per_disease"]["sepsis"]
    assert sepsis["support"] == 2 and not sepsis["refit"]
    assert sepsis["temperature"] == [0.05, 0.05] and sepsis["threshold"] == [0.5, 0.5]
    assert "fewer than 5" in report["kept"]["sepsis"]
    # Labs-only cases never let the model assess atrial fibrillation (ECG/notes evidence).
    assert "not assessable" in report["kept"]["atrial_fibrillation"]


def test_written_checkpoint_loads_and_decides_at_the_new_thresholds(site, refit):
    old = site[2]
    report, out = refit
    model = MedFuse.load(out)
    keys = model.panel.keys
    expected = [report["per_disease"][k]["threshold"][1] for k in keys]
    np.testing.assert_allclose(model.head.thresholds, expected, atol=1e-4)
    cases = _lab_cases()[:6]
    fused = model.fuse(cases)
    np.testing.assert_allclose(fused.thresholds, model.head.thresholds)
    logits = predict(model.fusion, EncoderData.build(cases, model, with_texts=False))["logits"]  # (6, D)
    np.testing.assert_allclose(fused.probabilities, model.head.predict_proba(logits))
    j = keys.index("diabetes_mellitus")
    new_calls = fused.probabilities[:, j] >= model.head.thresholds[j]
    assert (new_calls != old.head.predict(logits)[:, j]).any()  # the refit changes decisions here
    for i, diagnosed in enumerate(diagnose_many(model, cases, max_new_tokens=2)):
        entry = next(d for d in diagnosed.result.diagnoses if d.name == model.panel.diseases[j].name)
        assert entry.present == bool(new_calls[i])
    card = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    entry = card["recalibration"]
    assert entry["cohort"] == "cohort" and entry["n_cases"] == len(_lab_cases())
    assert set(entry["refit"]) == set(report["refit"]) and entry["before"] and entry["after"] and entry["date"]
    text = (out / "metadata.json").read_text(encoding="utf-8")
    assert "pt0" not in text and "site-" not in text  # no patient or case ids in the model card


def test_cli_prints_a_table_or_json(site, tmp_path, capsys):
    checkpoint, cohort, _ = site
    out = tmp_path / "ckpt2"
    assert main(["calibrate", str(checkpoint), "--cohort", str(cohort), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["out"] == str(out) and (out / "calibration.json").is_file()
    # An existing --out is refused without --overwrite, and replaced with it.
    assert main(["calibrate", str(checkpoint), "--cohort", str(cohort), "--out", str(out)]) != 0
    assert "already exists" in capsys.readouterr().err
    assert main(["calibrate", str(checkpoint), "--cohort", str(cohort), "--out", str(out), "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "diabetes_mellitus" in printed and "macro-F1" in printed and "cross-fit by patient" in printed


def _unlabelled_cohort(folder):
    for case in _lab_cases()[:4]:
        write_case(case, folder / case.case_id)
    write_index(folder)
    return folder


@pytest.mark.parametrize("problem", ["missing cohort", "unlabelled cohort", "out is the checkpoint",
                                     "out inside the cohort", "missing checkpoint"])
def test_bad_input_is_one_line_and_writes_nothing(site, tmp_path, capsys, problem):
    checkpoint, cohort, _ = site
    out = tmp_path / "ckpt2"
    before = sorted(p.name for p in checkpoint.iterdir())
    mtime = (checkpoint / "calibration.json").stat().st_mtime_ns
    args = {"missing cohort": [str(checkpoint), "--cohort", str(tmp_path / "nope"), "--out", str(out)],
            "unlabelled cohort": [str(checkpoint), "--cohort", str(_unlabelled_cohort(tmp_path / "plain")),
                                  "--out", str(out)],
            "out is the checkpoint": [str(checkpoint), "--cohort", str(cohort), "--out", str(checkpoint), "--overwrite"],
            "out inside the cohort": [str(checkpoint), "--cohort", str(cohort), "--out", str(cohort / "ckpt2")],
            "missing checkpoint": [str(tmp_path / "no-ckpt"), "--cohort", str(cohort), "--out", str(out)]}[problem]
    assert main(["calibrate", *args]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("medfuse: error: ") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not (cohort / "ckpt2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary checkpoint left
    assert sorted(p.name for p in checkpoint.iterdir()) == before
    assert (checkpoint / "calibration.json").stat().st_mtime_ns == mtime


def test_library_call_refuses_an_output_inside_its_inputs(site):
    # The guard is the library's, not only the CLI's: a Python caller gets it too.
    from medfuse.errors import InputError

    checkpoint, cohort, _ = site
    for out in (cohort / "recalibrated", checkpoint):
        with pytest.raises(InputError, match="input"):
            recalibrate(checkpoint, cohort, out, overwrite=True)
    assert not (cohort / "recalibrated").exists()
