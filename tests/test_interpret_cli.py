"""`interpret_case` and `medfuse interpret {ecg,labs,vitals,case}` on folders, records and globs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from medfuse.cli import main
from medfuse.record.case import CXRImage, Demographics, Finding, LabResult, PatientCase, Variant, VitalSigns
from medfuse.record.store import write_case
from medfuse.synth.ecg import synth_ecg


@pytest.fixture
def cohort(tmp_path):
    rng = np.random.default_rng(8)
    af = PatientCase(
        case_id="af1", demographics=Demographics(age=71, sex="F"),
        ecg=synth_ecg(rng, conditions=frozenset({"atrial_fibrillation"})),
        cxr=[CXRImage(pixels=np.zeros((32, 32), np.uint8),
                      findings=[Finding(label="cardiomegaly", boxes=[[250, 400, 750, 850]])])],
        labs=[LabResult(name="Potassium", value=6.4, unit="mmol/L", ref_low=3.5, ref_high=5.1)],
        vitals=[VitalSigns(heart_rate=118, sbp=96, dbp=60, temperature=38.6, resp_rate=24)],
        genomics=[Variant(gene="EGFR", hgvs="p.L858R", vaf=0.31)],
    )
    plain = PatientCase(case_id="n1", ecg=synth_ecg(rng))
    no_ecg = PatientCase(case_id="x1", demographics=Demographics(age=40))
    for case in (af, plain, no_ecg):
        write_case(case, tmp_path / "cohort" / case.case_id)
    return tmp_path / "cohort"


def test_interpret_case_joins_every_modality_with_sources(cohort):
    from medfuse.interpret.case import interpret_case
    from medfuse.record.store import read_case

    evidence = interpret_case(read_case(cohort / "af1"))
    by_modality = {e.modality for e in evidence}
    assert by_modality == {"demographics", "ecg", "labs", "vitals", "cxr", "genomics"}
    rhythm = next(e for e in evidence if e.modality == "ecg" and e.item == "rhythm")
    assert rhythm.value == "atrial_fibrillation"
    box = next(e for e in evidence if e.modality == "cxr")
    assert box.item == "cardiomegaly" and box.value == [250, 400, 750, 850] and box.source == "cxr[0]:finding 0"
    gene = next(e for e in evidence if e.modality == "genomics")
    assert gene.cite() == "EGFR p.L858R (oncogenic driver) [genomics[0]]"
    assert any(e.modality == "labs" and e.abnormal for e in evidence)


def test_json_lines_one_object_per_input(cohort, fixtures, capsys):
    rc = main(["interpret", "ecg", str(cohort), str(fixtures / "dicom" / "waveform_ecg.dcm"),
               str(fixtures / "ecg" / "00001_lr.hea"), "--json"])
    assert rc == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [rec["path"].rsplit("/", 1)[-1] for rec in lines] == ["af1", "n1", "x1", "waveform_ecg.dcm", "00001_lr.hea"]
    by_name = {rec["path"].rsplit("/", 1)[-1]: rec for rec in lines}
    assert by_name["af1"]["reading"]["rhythm"] == "atrial_fibrillation"
    assert by_name["n1"]["reading"]["rhythm"] == "sinus_rhythm"
    assert by_name["x1"]["reading"] is None and by_name["x1"]["note"] == "case has no ECG"
    assert by_name["waveform_ecg.dcm"]["reading"]["rhythm"] == "sinus_rhythm"
    assert by_name["00001_lr.hea"]["reading"]["fs"] == 100.0  # PTB-XL at 100 Hz is readable
    assert all(ev["source"].startswith("ecg") for ev in by_name["af1"]["evidence"])


def test_globs_and_human_output(cohort, capsys):
    rc = main(["interpret", "case", str(cohort / "a*")])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith(f"== {cohort / 'af1'} (case af1)")
    assert "! rhythm atrial_fibrillation" in out and "[cxr[0]:finding 0]" in out
    assert main(["interpret", "vitals", str(cohort / "af1"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["case_id"] == "af1" and record["evidence"]


def test_bad_inputs_are_one_line_errors(cohort, tmp_path, fixtures, capsys):
    assert main(["interpret", "ecg", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"medfuse: error: {tmp_path / 'missing'}: no such file or folder"
    # A raw recording is not a case for the lab reader.
    assert main(["interpret", "labs", str(fixtures / "ecg" / "100.hea")]) == 2
    assert "not a case folder" in capsys.readouterr().err
    # One bad input among good ones: the good ones are still read, the exit code says 2.
    broken = tmp_path / "broken"
    shutil.copytree(cohort / "n1", broken)
    (broken / "case.json").write_text("{not json")
    rc = main(["interpret", "ecg", str(cohort / "n1"), str(broken), "--json"])
    captured = capsys.readouterr()
    assert rc == 2
    lines = [json.loads(x) for x in captured.out.splitlines()]
    assert lines[0]["reading"]["rhythm"] == "sinus_rhythm"
    assert lines[1]["path"] == str(broken) and "invalid JSON" in lines[1]["error"]
    assert captured.err.count("medfuse: error:") == 1 and "Traceback" not in captured.err
