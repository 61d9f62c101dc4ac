"""The reasoning checker: invented numbers, tests, modalities and variants are removed;
faithful statements (including rounding, criteria and statements of absence) are kept."""

from __future__ import annotations

import pytest

from medfuse.interpret.case import interpret_case
from medfuse.model.faithfulness import check_reasoning, evidence_in_case, split_sentences
from medfuse.record.case import CXRImage, Demographics, Finding, LabResult, PatientCase, Variant, VitalSigns
from medfuse.record.evidence import Evidence


@pytest.fixture(scope="module")
def case() -> PatientCase:
    # Labs, vitals and a variant; no ECG and no chest X-ray.
    return PatientCase(
        case_id="f1",
        demographics=Demographics(age=67, sex="M"),
        labs=[
            LabResult(name="Creatinine", code="creatinine", value=2.13, unit="mg/dL", ref_low=0.5, ref_high=1.2, flag="H"),
            LabResult(name="Potassium", code="potassium", value=4.1, unit="mmol/L", ref_low=3.3, ref_high=5.1),
            LabResult(name="Hemoglobin A1c", code="hba1c", value=7.2, unit="%"),
        ],
        vitals=[VitalSigns(heart_rate=112, sbp=150, dbp=95, temperature=38.9, spo2=93)],
        genomics=[Variant(gene="KRAS", hgvs="p.G12C", vaf=0.31)],
    )


@pytest.fixture(scope="module")
def evidence(case):
    return interpret_case(case)


def reasons(text, case, evidence):
    return [d.reason for d in check_reasoning(text, case, evidence).dropped]


@pytest.mark.parametrize("text", [
    "Creatinine is 2.1 mg/dL, above the reference range.",  # rounding of 2.13
    "Creatinine 2.13 mg/dL exceeds the upper limit of 1.2.",  # a reference bound as a criterion
    "Blood pressure 150/95 mmHg meets the threshold of 140/90.",  # panel criterion after a comparison word
    "HbA1c of 7.2% is above 6.5%, consistent with diabetes.",
    "A 67-year-old man with heart rate 112 and temperature 38.9.",
    "No chest X-ray is available, so consolidation cannot be assessed.",  # absence of a modality
    "Troponin was not measured.",  # absence of a test
    "KRAS p.G12C at VAF 31% supports lung cancer.",  # VAF as a percentage
    "The 12-lead tracing is absent; type 2 diabetes is suggested by HbA1c.",  # numbers that are not measurements
])
def test_faithful_statements_are_kept(text, case, evidence):
    check = check_reasoning(text, case, evidence)
    assert check.dropped == [], check.dropped
    assert check.text == " ".join(split_sentences(text))


@pytest.mark.parametrize("text, expected", [
    ("Potassium is 6.8 mmol/L, explaining peaked T waves.", "6.8 for potassium"),  # wrong value of a present test
    ("Troponin is elevated at 0.9 ng/mL.", "troponin"),  # a test the case does not have
    ("The chest X-ray shows right lower lobe consolidation.", "no cxr"),  # an absent modality
    ("The ECG shows atrial fibrillation.", "no ecg"),
    ("An EGFR L858R mutation is present.", "EGFR"),  # a variant the case does not list
    ("Heart rate 145 suggests sepsis.", "145 for heart rate"),
    ("Lactate 4.2 mmol/L indicates hypoperfusion.", "lactate"),
    ("Glucose was 301 mg/dL.", "glucose"),
    ("The patient has had symptoms for 14 days.", "number 14"),  # unbound invented number
])
def test_unsupported_claims_are_dropped_with_a_reason(text, expected, case, evidence):
    found = reasons(text, case, evidence)
    assert len(found) == 1 and expected in found[0], found
    assert check_reasoning(text, case, evidence).text == ""


def test_only_the_unsupported_sentence_goes(case, evidence):
    text = ("Creatinine 2.1 mg/dL is high. Potassium 6.8 mmol/L is critical. SpO2 93% is low. "
            "Decimal points like 38.9 do not split sentences.")
    check = check_reasoning(text, case, evidence)
    assert [d.sentence for d in check.dropped] == ["Potassium 6.8 mmol/L is critical."]
    assert check.text == "Creatinine 2.1 mg/dL is high. SpO2 93% is low. Decimal points like 38.9 do not split sentences."
    assert check.n_sentences == 4


def test_chinese_reasoning_is_checked(case, evidence):
    text = "肌酐 2.13 mg/dL 升高。胸片显示右下肺实变。心率 112 次/分。"
    check = check_reasoning(text, case, evidence)
    assert [d.sentence for d in check.dropped] == ["胸片显示右下肺实变。"]
    assert check.text == "肌酐 2.13 mg/dL 升高。心率 112 次/分。"


def test_box_markup_is_not_read_as_numbers(case, evidence):
    text = "<think>Creatinine 2.1 is high.</think><ref>nodule</ref><box>[[10, 20, 300, 400]]</box>"
    assert check_reasoning(text, case, evidence).dropped == []


def test_evidence_values_must_be_found_where_they_cite(case, evidence):
    assert evidence and all(evidence_in_case(ev, case) for ev in evidence)
    forged_lab = Evidence(modality="labs", item="creatinine", value=3.5, unit="mg/dL", interpretation="high",
                          source="labs[0]")
    wrong_index = Evidence(modality="labs", item="creatinine", value=2.13, interpretation="high", source="labs[9]")
    forged_bp = Evidence(modality="vitals", item="blood_pressure", value="180/110", unit="mm[Hg]",
                         interpretation="stage 2", source="vitals[0]")
    no_ecg = Evidence(modality="ecg", item="rhythm", value="atrial_fibrillation", interpretation="af",
                      source="ecg:lead II")
    for ev in (forged_lab, wrong_index, forged_bp, no_ecg):
        assert not evidence_in_case(ev, case), ev.source


def test_image_findings_cite_their_box():
    case = PatientCase(case_id="img", cxr=[CXRImage(file="cxr_0.png", findings=[Finding(label="nodule", boxes=[[10, 20, 30, 40]])])])
    (ev,) = interpret_case(case)
    assert evidence_in_case(ev, case)
    assert not evidence_in_case(ev.model_copy(update={"value": [11, 20, 30, 40]}), case)


def test_numbered_lists_keep_their_markers_with_their_sentence(case, evidence):
    text = "1. Creatinine 2.1 mg/dL is high.\n2. Potassium 6.8 mmol/L is critical.\n3) SpO2 93% is low."
    check = check_reasoning(text, case, evidence)
    assert check.text == "1. Creatinine 2.1 mg/dL is high. 3) SpO2 93% is low."
    assert [d.sentence for d in check.dropped] == ["2. Potassium 6.8 mmol/L is critical."]
