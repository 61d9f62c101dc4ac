"""The disease panel and the lab catalogue are data files a user can rely on and replace."""

from __future__ import annotations

import pytest

from medfuse.errors import InputError
from medfuse.knowledge.labs import lab_entries, load_lab_catalogue, normalise_unit
from medfuse.knowledge.panel import load_panel
from medfuse.record.case import LabResult, PatientCase


def test_default_panel_has_the_nine_diseases():
    panel = load_panel()
    assert panel.names == [
        "atrial fibrillation", "coronary artery disease", "hypertension", "acute renal failure", "pneumonia",
        "diabetes mellitus", "sepsis", "heart failure", "lung cancer",
    ]


@pytest.mark.parametrize(
    "term, key",
    [("AFib", "atrial_fibrillation"), ("  Heart-Failure ", "heart_failure"), ("房颤", "atrial_fibrillation"),
     ("糖尿病", "diabetes_mellitus"), ("CHF", "heart_failure"), ("acute kidney injury", "acute_renal_failure"),
     ("ＣＡＤ", "coronary_artery_disease"), ("脓毒症", "sepsis")],
)
def test_panel_lookup_synonyms(term, key):
    assert load_panel().lookup(term).key == key


@pytest.mark.parametrize(
    "code, version, key",
    [("I4891", 10, "atrial_fibrillation"), ("I48.0", 10, "atrial_fibrillation"), ("42731", 9, "atrial_fibrillation"),
     ("4280", 9, "heart_failure"), ("I130", 10, "heart_failure"), ("I129", 10, "hypertension"),
     ("J189", 10, "pneumonia"), ("R6521", 10, "sepsis"), ("99592", 9, "sepsis"), ("E119", 10, "diabetes_mellitus"),
     ("25000", 9, "diabetes_mellitus"), ("C3411", 10, "lung_cancer"), ("N179", 10, "acute_renal_failure")],
)
def test_panel_icd_mapping(code, version, key):
    assert load_panel().match_icd(code, version).key == key


def test_panel_icd_unrelated_codes_do_not_map():
    panel = load_panel()
    assert panel.match_icd("Z000", 10) is None
    assert panel.match_icd("4019", 10) is None  # an ICD-9 hypertension code is not ICD-10


def test_user_panel_replaces_default(tmp_path):
    p = tmp_path / "panel.yaml"
    p.write_text("name: mine\ndiseases:\n  - {key: gout, name: gout, icd10: [M10], icd9: ['274']}\n")
    panel = load_panel(p)
    assert panel.names == ["gout"] and panel.match_icd("M109", 10).key == "gout"
    bad = tmp_path / "bad.yaml"
    bad.write_text("diseases: []\n")
    with pytest.raises(InputError, match="non-empty 'diseases'"):
        load_panel(bad)


def test_lab_catalogue_lookup_and_units():
    cat = load_lab_catalogue()
    assert cat.lookup("Creatinine", fluid="Blood").key == "creatinine"
    assert cat.lookup("Glucose", fluid="Urine") is None  # urine glucose is another test
    assert cat.lookup(loinc="4548-4").key == "hba1c"
    assert cat.lookup("% Hemoglobin A1c").key == "hba1c"
    glucose = cat.get("glucose")
    assert glucose.to_canonical(5.5, "mmol/l") == pytest.approx(99.09, abs=0.01)
    assert cat.get("creatinine").to_canonical(88.4, "µmol/L") == pytest.approx(1.0, abs=0.001)
    assert cat.get("hba1c").to_canonical(48, "mmol/mol") == pytest.approx(6.54, abs=0.01)
    assert glucose.to_canonical(5.5, "furlongs") is None
    assert normalise_unit("K/uL") == "10*3/uL" and normalise_unit("mEq/L") == "meq/L"


def test_lab_entries_trust_the_importer_and_match_hand_built_results_by_name():
    labs = [
        LabResult(name="Creatinine", code="creatinine", value=1.0, unit="mg/dL"),
        LabResult(name="whatever", loinc="2823-3", value=4.1, unit="mmol/L"),  # LOINC maps anywhere
        LabResult(name="肌酐", value=88.4, unit="umol/L"),  # Chinese name, alternative unit
        LabResult(name="Glucose", value=300, unit="mg/dL"),  # an importer left it unmapped (urine)
    ]
    hand = lab_entries(PatientCase(case_id="h", labs=labs))
    assert [e and e.key for e in hand] == ["creatinine", "potassium", "creatinine", "glucose"]
    imported = lab_entries(PatientCase(case_id="i", labs=labs, provenance={"importer": "mimic_iv"}))
    assert [e and e.key for e in imported] == ["creatinine", "potassium", None, None]
    assert hand[2].to_canonical(labs[2].value, labs[2].unit) == pytest.approx(1.0, abs=0.001)


def test_abnormal_evidence_supports_its_diseases_and_normal_evidence_none():
    from medfuse.knowledge.evidence_support import finding_supports, supported_diseases
    from medfuse.record.evidence import Evidence

    raised = Evidence(modality="labs", item="troponin_t", value=0.5, interpretation="high", abnormal=True, source="labs[0]")
    normal = Evidence(modality="labs", item="troponin_t", value=0.0, interpretation="normal", abnormal=False, source="labs[0]")
    st = Evidence(modality="ecg", item="ST elevation V2", value=0.3, interpretation="present", abnormal=True, source="ecg:lead V2")
    assert supported_diseases(raised) == {"coronary_artery_disease"} == supported_diseases(st)
    assert supported_diseases(normal) == set()
    assert finding_supports("Consolidation") == {"pneumonia", "sepsis"}
