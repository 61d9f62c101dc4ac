"""The synthetic cohort: determinism, comorbidity, missingness, boxes, labels vs evidence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medfuse.knowledge.labs import load_lab_catalogue
from medfuse.knowledge.panel import load_panel
from medfuse.record.boxes import grid_to_pixel
from medfuse.record.store import read_case, read_index
from medfuse.synth.cohort import SynthConfig, ecg_conditions, synth_case, synth_cohort
from medfuse.synth.cxr import FINDING_LABELS, CXRRequest, render_cxr
from medfuse.synth.diseases import draw_patient
from medfuse.synth.genomics import is_driver

# Cheap cases for tests that do not look at the ECG or the image.
NO_BULK = {"p_cxr": 0.0, "p_ecg": 0.0}


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cases() -> list:
    """200 cases with every modality likely, generated in memory once for several tests."""
    cfg = SynthConfig(p_cxr=0.0, p_ecg=0.0, p_labs=1.0, p_vitals=1.0, p_notes=1.0, zh_share=0.3)
    return [synth_case(11, i, cfg) for i in range(200)]


def test_same_seed_gives_byte_identical_cohort_across_worker_counts(tmp_path):
    cfg = SynthConfig(p_cxr=1.0, p_ecg=1.0)
    s1 = synth_cohort(n=10, seed=5, out=tmp_path / "a", config=cfg, workers=1, progress=False)
    synth_cohort(n=10, seed=5, out=tmp_path / "b", config=cfg, workers=2, progress=False)
    synth_cohort(n=10, seed=6, out=tmp_path / "c", config=cfg, workers=1, progress=False)
    a, b, c = (_tree_bytes(tmp_path / x) for x in "abc")
    assert set(a) >= {"DATASHEET.md", "index.parquet", "synth-000000/case.json", "synth-000000/cxr_0.png",
                      "synth-000000/ecg.hea", "synth-000000/ecg.dat"}
    assert a == b
    assert a["synth-000003/case.json"] != c["synth-000003/case.json"]  # the seed matters
    assert s1["n"] == 10 and s1["cases_per_s"] > 0
    # Every case reads back, and the index lists them all.
    assert len(read_index(tmp_path / "a")) == 10
    case = read_case(tmp_path / "a" / "synth-000004")
    assert case.ecg.signal.shape == (5000, 12) and case.cxr[0].pixels.shape == (256, 256)


def test_a_case_depends_only_on_seed_and_index_and_modalities_are_independent():
    full = synth_case(3, 17, SynthConfig())
    again = synth_case(3, 17, SynthConfig())
    assert full.model_dump_json() == again.model_dump_json()
    # Switching images and ECGs off changes nothing else about the case.
    lean = synth_case(3, 17, SynthConfig(**NO_BULK))
    assert lean.cxr == [] and lean.ecg is None
    assert [r.model_dump() for r in lean.labs] == [r.model_dump() for r in full.labs]
    assert lean.notes == full.notes and lean.vitals == full.vitals
    assert lean.labels.disease_names() == full.labels.disease_names()


def test_comorbidity_is_correlated_as_the_rules_say():
    patients = [draw_patient(np.random.default_rng(np.random.SeedSequence([1, i]))) for i in range(3000)]

    def lift(a: str, b: str) -> tuple[float, float]:
        with_a = [p for p in patients if a in p.diseases]
        without = [p for p in patients if a not in p.diseases]
        return (np.mean([b in p.diseases for p in with_a]), np.mean([b in p.diseases for p in without]))

    for a, b in [("heart_failure", "atrial_fibrillation"), ("pneumonia", "sepsis"), ("sepsis", "acute_renal_failure"),
                 ("diabetes_mellitus", "hypertension"), ("diabetes_mellitus", "coronary_artery_disease")]:
        p_given, p_not = lift(a, b)
        assert p_given > 2 * p_not, (a, b, p_given, p_not)
    healthy = np.mean([not p.diseases for p in patients])
    assert 0.2 < healthy < 0.6
    # Every panel disease occurs often enough to learn (at least 5 %).
    for key in load_panel().keys:
        assert np.mean([key in p.diseases for p in patients]) > 0.05, key
    # Lung cancer is a smokers' disease here, as in life.
    smokers = [p for p in patients if p.smoking != "never"]
    never = [p for p in patients if p.smoking == "never"]
    assert np.mean(["lung_cancer" in p.diseases for p in smokers]) > 3 * np.mean(["lung_cancer" in p.diseases for p in never])


def test_modality_probabilities_are_honoured():
    cfg = SynthConfig(p_cxr=0.0, p_ecg=0.0, p_labs=0.5, p_vitals=1.0, p_notes=0.0, p_genomics_other=0.0,
                      p_genomics_lung_cancer=1.0)
    batch = [synth_case(2, i, cfg) for i in range(300)]
    assert all(not c.cxr and c.ecg is None and not c.notes for c in batch)
    assert all(c.vitals for c in batch)
    assert 0.4 < np.mean([bool(c.labs) for c in batch]) < 0.6
    # Genomics: every lung-cancer case and no other.
    for c in batch:
        assert bool(c.genomics) == ("lung cancer" in c.labels.disease_names())


def test_image_findings_have_valid_boxes_and_follow_the_diseases():
    cfg = SynthConfig(p_cxr=1.0, p_ecg=0.0, p_labs=0.0, p_vitals=0.0, p_notes=0.0)
    batch = [synth_case(8, i, cfg) for i in range(150)]
    seen = set()
    for c in batch:
        diseases = set(c.labels.disease_names())
        ctr = c.provenance["synthetic"]["ctr"]
        labels = [f.label for f in c.labels.findings]
        assert len(labels) == len(set(labels))
        for f in c.labels.findings:
            seen.add(f.label)
            assert f.label in FINDING_LABELS and f.boxes
            for x1, y1, x2, y2 in f.boxes:
                assert 0 <= x1 < x2 <= 999 and 0 <= y1 < y2 <= 999
        # Cardiomegaly is exactly a cardiothoracic ratio above 0.5.
        assert ("cardiomegaly" in labels) == (ctr > 0.5)
        if "consolidation" in labels:
            assert "pneumonia" in diseases
        if "mass" in labels:
            assert "lung cancer" in diseases
        assert c.labels.report and "IMPRESSION" in c.labels.report or "印象" in c.labels.report
        if "pleural effusion" in labels:
            assert "effusion" in c.labels.report or "积液" in c.labels.report
    assert seen == set(FINDING_LABELS) - ({"mass"} - seen)  # every finding kind shows up (mass is rarer)
    assert {"consolidation", "cardiomegaly", "pleural effusion", "pulmonary edema"} <= seen


def test_findings_are_visible_inside_their_boxes():
    # The same patient drawn with and without the finding: the box gets brighter.
    for request, label in [(CXRRequest(consolidation="right"), "consolidation"),
                           (CXRRequest(effusion=("left",)), "pleural effusion"),
                           (CXRRequest(nodule_cm=2.5), "nodule"),
                           (CXRRequest(edema=True), "pulmonary edema")]:
        gains = []
        for seed in range(6):
            with_f = render_cxr(np.random.default_rng(seed), request)
            without = render_cxr(np.random.default_rng(seed), CXRRequest())
            (finding,) = [f for f in with_f.findings if f.label == label]
            x1, y1, x2, y2 = (int(round(v)) for v in grid_to_pixel(finding.boxes[0], 256, 256))
            gains.append(with_f.pixels[y1:y2, x1:x2].mean() - without.pixels[y1:y2, x1:x2].mean())
        assert np.median(gains) > 8, (label, gains)


def test_no_finding_is_given_away_by_mean_intensity():
    rng = np.random.default_rng(123)
    present: dict[str, list[bool]] = {k: [] for k in ("consolidation", "cardiomegaly", "effusion", "edema", "nodule")}
    means = []
    for i in range(240):
        f = {k: bool(rng.random() < 0.5) for k in present}
        request = CXRRequest(
            consolidation=("right" if rng.random() < 0.5 else "left") if f["consolidation"] else None,
            cardiomegaly=f["cardiomegaly"], effusion=("right", "left") if f["effusion"] else (), edema=f["edema"],
            nodule_cm=float(rng.uniform(1, 6)) if f["nodule"] else None)
        means.append(render_cxr(np.random.default_rng(np.random.SeedSequence([9, i])), request).pixels.mean())
        for k in present:
            present[k].append(f[k])
    for k, y in present.items():
        auroc = roc_auc_score(y, means)
        assert 0.35 < auroc < 0.65, (k, auroc)


def test_labels_agree_with_the_evidence(cases):
    catalogue = load_lab_catalogue()
    panel = load_panel()
    by_disease: dict[str, list] = {}
    for c in cases:
        for name in c.labels.disease_names():
            by_disease.setdefault(name, []).append(c)
        for d in c.labels.diagnoses:
            assert panel.match_icd(d.icd10, 10) is panel.lookup(d.name), d
        for r in c.labs:
            # Every result is complete and its reference range is the catalogue's, in its own unit.
            assert r.name and r.loinc and r.code and r.value is not None and r.unit and r.time is not None
            entry = catalogue.get(r.code)
            assert r.loinc in entry.loinc
            assert entry.to_canonical(r.ref_high, r.unit) == pytest.approx(entry.ref[1], rel=0.02, abs=0.01)

    def canonical(case, code):
        for r in case.labs:
            if r.code == code:
                return catalogue.get(code).to_canonical(r.value, r.unit)
        return None

    for c in by_disease["diabetes mellitus"]:
        a1c, glucose = canonical(c, "hba1c"), canonical(c, "glucose")
        if a1c is not None or glucose is not None:
            assert (a1c or 0) >= 6.5 or (glucose or 0) > 100
        if a1c is not None:
            assert a1c >= 6.5
    for c in by_disease["sepsis"]:
        lactate = canonical(c, "lactate")
        assert lactate is None or lactate > 2.0
    for c in by_disease["acute renal failure"]:
        creat = canonical(c, "creatinine")
        assert creat is None or creat > 1.2
    healthy = [c for c in cases if not c.labels.disease_names()]
    # Hypertension raises blood pressure; fever in pneumonia and sepsis.
    sbp = lambda group: np.nanmean([c.first_vitals().sbp or np.nan for c in group])  # noqa: E731
    temp = lambda group: np.nanmean([c.first_vitals().temperature or np.nan for c in group])  # noqa: E731
    assert sbp(by_disease["hypertension"]) > sbp(healthy) + 12
    assert np.mean([(c.first_vitals().sbp or 0) >= 140 for c in by_disease["hypertension"]]) > 0.5
    assert temp(by_disease["pneumonia"]) > temp(healthy) + 0.7
    # Shared confounders: troponin is raised by sepsis and renal failure too, not only by CAD.
    def trop_high(c):
        for code in ("troponin_t", "troponin_i"):
            v = canonical(c, code)
            if v is not None:
                return v > catalogue.get(code).ref[1]
        return None
    non_cad = [trop_high(c) for c in by_disease["sepsis"] + by_disease["acute renal failure"]
               if "coronary artery disease" not in c.labels.disease_names()]
    assert any(x for x in non_cad if x is not None)
    # Some results come in alternative units, and they convert.
    alt = [r for c in cases for r in c.labs if r.unit != catalogue.get(r.code).unit]
    assert {r.code for r in alt} >= {"glucose", "creatinine"}


def test_ecg_follows_heart_rate_potassium_and_diseases():
    cfg = SynthConfig(p_cxr=0.0, p_ecg=1.0, p_labs=0.0, p_notes=0.0)
    for i in range(40):
        c = synth_case(21, i, cfg)
        syn = c.provenance["synthetic"]
        cond = set(syn["ecg"]["conditions"])
        diseases = set(c.labels.disease_names())
        assert ("atrial_fibrillation" in cond) == ("atrial fibrillation" in diseases)
        if "atrial fibrillation" not in diseases:
            assert ("sinus_tachycardia" in cond) == (syn["heart_rate"] > 100)
        assert "synthetic" not in c.ecg.annotations  # ground truth stays out of the model's input
        if "atrial fibrillation" not in diseases:
            assert abs(syn["ecg"]["heart_rate"] - syn["heart_rate"]) < 8  # ECG and vitals agree
    # Peaked T waves follow the true potassium (85 % from 5.8 mmol/L), whatever the diagnoses.
    patient = draw_patient(np.random.default_rng(0), healthy_share=1.0)
    rng = np.random.default_rng(1)
    high = np.mean(["peaked_t" in ecg_conditions(rng, patient, 75.0, 6.4) for _ in range(200)])
    normal = np.mean(["peaked_t" in ecg_conditions(rng, patient, 75.0, 4.3) for _ in range(200)])
    assert high > 0.75 and normal == 0.0


def test_notes_are_bilingual_with_negations_and_smoking(cases):
    notes = [n for c in cases for n in c.notes]
    langs = {n.lang for n in notes}
    assert langs == {"en", "zh"}
    en = [n.text for n in notes if n.lang == "en" and n.type == "history"]
    zh = [n.text for n in notes if n.lang == "zh" and n.type == "history"]
    assert any(t in x for x in en for t in ("denies", "No ", "Negative for", "Without"))
    assert any(t in x for x in zh for t in ("无", "否认", "未诉"))
    assert any("pack-year" in x for x in en) and any("包年" in x for x in zh)
    # Many phrasings: the history notes are nearly all different.
    assert len(set(en)) > 0.9 * len(en)
    # A history never prints the patient's acute diagnosis by panel name; an indication may
    # ask about pneumonia, and it does so for patients without pneumonia too.
    for c in cases:
        for n in c.notes:
            for acute in ("sepsis", "pneumonia", "acute renal failure"):
                if acute in c.labels.disease_names() and n.type == "history":
                    assert acute not in n.text.lower()
    asked = [c for c in cases for n in c.notes if n.type == "indication" and "pneumonia" in n.text]
    assert any("pneumonia" not in c.labels.disease_names() for c in asked)


def test_drivers_only_in_lung_cancer():
    cfg = SynthConfig(p_cxr=0.0, p_ecg=0.0, p_genomics_other=0.5, p_genomics_lung_cancer=1.0)
    drivers = 0
    for i in range(300):
        c = synth_case(4, i, cfg)
        has_cancer = "lung cancer" in c.labels.disease_names()
        for v in c.genomics:
            assert v.vaf is not None and 0 < v.vaf <= 1
            if is_driver(v):
                assert has_cancer
                drivers += 1
    assert drivers >= 3


def test_config_errors_name_the_key(tmp_path):
    from medfuse.errors import ConfigError

    with pytest.raises(ConfigError, match="p_cxr"):
        SynthConfig(p_cxr=1.5)
    with pytest.raises(ConfigError, match="image_size"):
        SynthConfig(image_size=100)
    with pytest.raises(ConfigError, match="disease_rules.sepsis.given.acute_renal_failure"):
        SynthConfig(disease_rules={"sepsis": {"given": {"acute_renal_failure": 2.0}}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("n: 5\np_xray: 0.5\n")
    proc = subprocess.run([str(Path(sys.executable).parent / "medfuse"), "synth", "--out", str(tmp_path / "o"), "--config", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "p_xray" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_cli_writes_cohort_and_datasheet(tmp_path):
    from typer.testing import CliRunner

    from medfuse.cli.app import app

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("p_cxr: 0.0\np_ecg: 0.0\nzh_share: 0.0\n")
    result = CliRunner().invoke(app, ["synth", "--n", "6", "--seed", "2", "--out", str(tmp_path / "c"),
                                      "--config", str(cfg), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "6 case(s) written" in result.output
    sheet = (tmp_path / "c" / "DATASHEET.md").read_text()
    assert "| hypertension |" in sheet and "Modality availability" in sheet and "## Limits" in sheet
    assert "| cxr | 0 (0.0 %) |" in sheet
    assert len(read_index(tmp_path / "c")) == 6


def test_fast_wfdb_writer_matches_wfdb(tmp_path):
    import wfdb

    from medfuse.record.case import ECG
    from medfuse.record.store import write_wfdb

    rng = np.random.default_rng(0)
    for fs, n, leads in [(500.0, 5000, 12), (360.0, 700, 2), (250.0, 3, 1)]:
        sig = np.round(rng.normal(0, 1.5, (n, leads)) * 1000) / 1000
        ecg = ECG(signal=sig, fs=fs, leads=[f"L{i}" for i in range(leads)])
        ours, ref = tmp_path / f"o{n}", tmp_path / f"r{n}"
        ours.mkdir(), ref.mkdir()
        write_wfdb(ecg, ours, "ecg")
        wfdb.wrsamp("ecg", fs=fs, units=["mV"] * leads, sig_name=ecg.leads, d_signal=np.round(sig * 1000).astype(np.int16),
                    fmt=["16"] * leads, adc_gain=[1000.0] * leads, baseline=[0] * leads, write_dir=str(ref))
        for f in ("ecg.hea", "ecg.dat"):
            assert (ours / f).read_bytes() == (ref / f).read_bytes()


def test_every_symptom_a_note_can_name_has_english_and_chinese_wording():
    from medfuse.synth import notes

    named = {s for by_disease in notes.SYMPTOMS.values() for s in by_disease}
    named |= {*notes.ACUTE_CAD_SYMPTOMS, *notes.SEPSIS_SOURCE_SYMPTOMS.values(), *notes.BACKGROUND_SYMPTOMS,
              *notes.MINOR_COMPLAINTS, *notes.NEGATABLE}
    for lang in ("en", "zh"):
        phrases = notes.symptom_phrases(lang)
        assert named <= set(phrases) and all(phrases[s] for s in named), lang


# ---------------------------------------------------------------- interrupted and repeated runs

def test_ctrl_c_keeps_the_finished_cases_as_the_cohort_of_that_size(tmp_path, monkeypatch, capsys):
    from medfuse.cli import main
    from medfuse.synth import cohort as cohort_module

    real = cohort_module.synth_case

    def interrupted_at_4(seed, index, config=None):
        if index == 4:
            raise KeyboardInterrupt  # Ctrl-C while case 4 is being generated
        return real(seed, index, config)

    monkeypatch.setattr(cohort_module, "synth_case", interrupted_at_4)
    out = tmp_path / "c"
    assert main(["synth", "--n", "9", "--seed", "3", "--out", str(out), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted after 4 of 9 case(s)" in err and "Traceback" not in err
    monkeypatch.setattr(cohort_module, "synth_case", real)
    synth_cohort(n=4, seed=3, out=tmp_path / "ref", progress=False)
    # No temporary folder, an index and a datasheet: the very cohort `--n 4` writes.
    assert _tree_bytes(out) == _tree_bytes(tmp_path / "ref")
    assert list(read_index(out)["case_id"]) == [f"synth-{i:06d}" for i in range(4)]

    # Nothing finished: nothing is left, not even the folder the run created.
    monkeypatch.setattr(cohort_module, "synth_case", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(["synth", "--n", "3", "--out", str(tmp_path / "none"), "--quiet"]) == 130
    assert "interrupted after 0 of 3 case(s): no case was complete" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_ctrl_c_with_workers_removes_cases_written_ahead_and_temporary_folders(tmp_path):
    from medfuse.synth.cohort import SynthInterrupted

    out = tmp_path / "c"

    def ctrl_c_after_3(done: int) -> None:
        if done == 3:
            # What a worker stopped in the middle of `write_case` leaves behind.
            (out / ".synth-000007.k2j3h4").mkdir()
            (out / ".synth-000007.k2j3h4" / "case.json").write_text("{")
            raise KeyboardInterrupt

    cfg = SynthConfig(p_cxr=0.0, p_ecg=0.0)
    with pytest.raises(SynthInterrupted) as stop:
        synth_cohort(n=16, seed=2, out=out, config=cfg, workers=2, progress=False, on_case=ctrl_c_after_3)
    assert stop.value.summary["n"] == 3 and stop.value.requested == 16
    # The temporary folder and the cases the workers wrote past case 2 are gone.
    assert [p.name for p in sorted(out.iterdir())] == [
        "DATASHEET.md", "index.parquet", "synth-000000", "synth-000001", "synth-000002"]
    assert "with seed 2: 3 cases" in (out / "DATASHEET.md").read_text()
    assert len(read_index(out)) == 3


def test_a_non_empty_folder_is_refused_and_overwrite_indexes_every_case_folder(tmp_path, capsys):
    from medfuse.cli import main
    from medfuse.record.store import write_case

    from test_record import full_case

    out = tmp_path / "c"
    write_case(full_case("imported-1"), out / "imported-1")
    (out / "notes.txt").write_text("mine")
    before = _tree_bytes(out)
    assert main(["synth", "--n", "3", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err and "--overwrite" in err
    assert _tree_bytes(out) == before

    assert main(["synth", "--n", "3", "--seed", "1", "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert sorted(read_index(out)["case_id"]) == ["imported-1", "synth-000000", "synth-000001", "synth-000002"]
    assert (out / "notes.txt").read_text() == "mine"
    sheet = (out / "DATASHEET.md").read_text()
    assert "with seed 1: 3 cases" in sheet and "also holds 1 case folder(s) this run did not write" in sheet
    # A smaller rerun replaces its own ids and keeps (and indexes) everything else.
    assert main(["synth", "--n", "2", "--seed", "4", "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert sorted(read_index(out)["case_id"]) == ["imported-1", "synth-000000", "synth-000001", "synth-000002"]
    assert read_case(out / "synth-000001", load_bulk=False).provenance["synthetic"]["seed"] == 4
