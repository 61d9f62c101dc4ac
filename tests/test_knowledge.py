"""The disease panel and the lab catalogue are data files a user can rely on and replace."""

from __future__ import annotations

import pytest

from medfuse.errors import InputError
from medfuse.knowledge.labs import load_lab_catalogue, normalise_unit
from medfuse.knowledge.panel import load_panel


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
