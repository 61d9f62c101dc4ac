"""The reasoning checker: invented numbers, tests, modalities and variants are removed;
faithful statements (including rounding, criteria and statements of absence) are kept."""

from __future__ import annotations

import pytest

from medfuse.interpret.case import interpret_case
from medfuse.model.faithfulness import (
    TRUNCATED_REASON,
    check_reasoning,
    evidence_in_case,
    split_sentences,
)
from medfuse.record.case import (
    ECG,
    CXRImage,
    Demographics,
    Finding,
    Labels,
    LabResult,
    Note,
    PatientCase,
    Variant,
    VitalSigns,
)
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
    ("Potassium is 6.8 mmol/L, which is critical.", "6.8 for potassium"),  # wrong value of a present test
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
            "A temperature of 38.9 does not split sentences.")
    check = check_reasoning(text, case, evidence)
    assert [d.sentence for d in check.dropped] == ["Potassium 6.8 mmol/L is critical."]
    assert check.text == "Creatinine 2.1 mg/dL is high. SpO2 93% is low. A temperature of 38.9 does not split sentences."
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


# ---------------------------------------------------------------------------- issue 10 regressions

@pytest.fixture(scope="module")
def labs_case() -> PatientCase:
    # Platelets 263 and glucose 110: a number must be the value of the test it is written with.
    return PatientCase(
        case_id="f2",
        demographics=Demographics(age=67, sex="F"),
        labs=[
            LabResult(name="Platelet count", code="platelets", value=263, unit="10*3/uL"),
            LabResult(name="Glucose", code="glucose", value=110, unit="mg/dL"),
            LabResult(name="Creatinine", code="creatinine", value=2.13, unit="mg/dL", ref_low=0.5, ref_high=1.2),
            LabResult(name="Potassium", code="potassium", value=4.1, unit="mmol/L", ref_low=3.3, ref_high=5.1),
        ],
        vitals=[VitalSigns(heart_rate=112, sbp=150, dbp=95, temperature=38.9, spo2=93)],
        notes=[Note(type="history", text="Ex-smoker (15 pack-years).")],
    )


@pytest.mark.parametrize("text, expected", [
    ("Her blood sugar of 263 mg/dL suggests diabetes.", "263 for glucose"),  # 263 is the platelet count
    ("A fever of 112 was recorded.", "112 for temperature"),  # 112 is the heart rate
    ("The value 263 is worrying.", "number 263"),  # a case value, but tied to no test
    ("A 72-year-old woman with renal failure.", "72 for age"),
    ("Pulse 38.9 bpm.", "38.9 for heart rate"),
])
def test_a_number_must_be_the_value_of_the_test_it_is_written_with(text, expected, labs_case):
    found = reasons(text, labs_case, interpret_case(labs_case))
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize("text", [
    "Platelets 263 and blood sugar 110 mg/dL are recorded.",
    "Blood sugar 6.1 mmol/L is mildly raised.",  # 110 mg/dL in mmol/L
    "A 67-year-old woman; temperature 102 °F with a heart rate of 112 bpm.",  # 38.9 °C in °F
    "Two abnormal findings [E3] were noted in 2019 and 3 of 4 criteria are met.",  # counts, citations, years
    "Creatinine 2.13 mg/dL [labs[2]] exceeds the reference range 0.5-1.2.",
    "She is an ex-smoker with 15 pack-years.",  # said by the notes in the same words
])
def test_numbers_that_are_tied_or_not_measurements_are_kept(text, labs_case):
    assert check_reasoning(text, labs_case, interpret_case(labs_case)).dropped == []


def test_findings_need_an_image_and_must_be_among_its_findings(case, evidence):
    # No chest X-ray in `case`: a findings word is a claim about an image it does not have.
    for text in ("Right lower lobe consolidation supports pneumonia.", "A pleural effusion is present.",
                 "Cardiomegaly suggests heart failure."):
        found = reasons(text, case, evidence)
        assert len(found) == 1 and "no chest X-ray" in found[0], (text, found)
    assert reasons("No consolidation or effusion.", case, evidence) == []
    assert reasons("Ankle edema and a raised body mass index.", case, evidence) == []  # not image findings

    labelled = PatientCase(case_id="img2", cxr=[CXRImage(file="cxr_0.png")],
                           labels=Labels(findings=[Finding(label="nodule", boxes=[[10, 20, 30, 40]])]))
    ev = interpret_case(labelled)
    assert reasons("A nodule in the right upper zone; no consolidation.", labelled, ev) == []
    assert "do not include" in reasons("Consolidation supports pneumonia.", labelled, ev)[0]
    assert "denies nodule" in reasons("There is no nodule.", labelled, ev)[0]
    # The finding head's located findings back a claim too.
    assert check_reasoning("Consolidation is seen.", labelled, ev, findings=["consolidation"]).dropped == []
    # An unlabelled image with no findings source: only the image's presence is checked.
    bare = PatientCase(case_id="img3", cxr=[CXRImage(file="cxr_0.png")])
    assert reasons("Consolidation is seen.", bare, interpret_case(bare)) == []


@pytest.mark.parametrize("text, expected", [
    ("No measured item is abnormal.", "no item is abnormal"),
    ("All labs are within normal limits.", "calls labs normal"),
    ("Vital signs are unremarkable.", "calls vitals normal"),
    ("Creatinine is normal.", "calls creatinine normal"),
    ("没有异常的测量项目。", "no item is abnormal"),
])
def test_normal_claims_are_checked_against_the_abnormal_items(text, expected, labs_case):
    found = reasons(text, labs_case, interpret_case(labs_case))
    assert len(found) == 1 and expected in found[0], found


def test_true_normal_claims_and_reference_statements_are_kept(labs_case):
    ev = interpret_case(labs_case)
    for text in ("Potassium is within the normal range.", "Creatinine exceeds the upper limit of normal.",
                 "Creatinine 2.13 mg/dL is above the normal range."):
        assert reasons(text, labs_case, ev) == [], text
    healthy = PatientCase(case_id="ok", labs=[LabResult(name="Potassium", code="potassium", value=4.1, unit="mmol/L")])
    assert reasons("No measured item is abnormal. All labs are normal.", healthy, interpret_case(healthy)) == []


@pytest.fixture(scope="module")
def ecg_case() -> tuple[PatientCase, list[Evidence]]:
    # The reader's evidence as `interpret.ecg.ecg_evidence` writes it: one item per lead.
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    case = PatientCase(case_id="e1", ecg=ECG(fs=500, leads=leads))
    evidence = [
        Evidence(modality="ecg", item="QTc (Bazett)", value=452.0, unit="ms", interpretation="normal",
                 source="ecg:lead II"),
        *(Evidence(modality="ecg", item=f"T inversion {lead}", value=-0.2, unit="mV", interpretation="present",
                   abnormal=True, source=f"ecg:lead {lead}") for lead in ("V5", "V6")),
    ]
    return case, evidence


@pytest.mark.parametrize("text, expected", [
    ("T inversion in V4-V6 suggests ischaemia.", "T inversion in V4"),  # the reader reports V5, V6
    ("T-wave inversion in II, III and aVF.", "T inversion in II, III, aVF"),
    ("ST elevation in V2 and V3.", "ST elevation in V2, V3"),
    ("Inverted T waves are seen in V1.", "T inversion in V1"),
    ("No T inversion is present.", "denies T inversion"),
    ("Lead V9 shows a tall R wave.", "lead V9"),
])
def test_ecg_leads_must_be_those_the_reading_reported(text, expected, ecg_case):
    found = reasons(text, *ecg_case)
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize("text", [
    "T inversion in V5 and V6 suggests lateral ischaemia.",
    "T-wave inversion (V5, V6); no ST elevation in V1-V3.",
    "QTc 452 ms in lead II; type II diabetes is unrelated.",
])
def test_ecg_leads_the_reading_reported_are_kept(text, ecg_case):
    assert reasons(text, *ecg_case) == []


def test_ecg_findings_without_an_ecg_are_dropped(case, evidence):
    found = reasons("ST elevation in V2 and V3 suggests infarction.", case, evidence)
    assert len(found) == 1 and "no ECG" in found[0], found


def test_a_reasoning_cut_off_mid_sentence_is_counted(case, evidence):
    check = check_reasoning("<think>Creatinine 2.1 mg/dL is high. Potassium is", case, evidence)
    assert check.truncated
    assert check.n_sentences == 2
    assert [(d.sentence, d.reason) for d in check.dropped] == [("Potassium is", TRUNCATED_REASON)]
    assert check.text == "Creatinine 2.1 mg/dL is high."
    # Cut off right after a full stop: truncated, but no partial sentence to count.
    check = check_reasoning("<think>Creatinine 2.1 mg/dL is high.", case, evidence)
    assert check.truncated and check.dropped == [] and check.n_sentences == 1
    # A finished reasoning is not truncated.
    check = check_reasoning("<think>Creatinine 2.1 mg/dL is high.</think><answer>none</answer>", case, evidence)
    assert not check.truncated


# ------------------------------------------------------------------ evidence ids and consistency

def test_citations_must_exist_and_concern_the_disease_of_their_line(case, evidence):
    from medfuse.model.prompt import numbered_evidence

    listed = numbered_evidence(evidence)
    creatinine = next(k for k, ev in enumerate(listed, 1) if ev.item == "creatinine")
    kras = next(k for k, ev in enumerate(listed, 1) if ev.modality == "genomics")
    text = (f"acute renal failure: creatinine is raised. Evidence: [E{creatinine}].\n"
            f"lung cancer: a KRAS driver variant. Evidence: [E{creatinine}].\n"
            f"lung cancer: a KRAS driver variant [E{kras}].\n"
            f"acute renal failure: see [E{len(listed) + 4}].")
    check = check_reasoning(text, case, evidence, cited=listed)
    assert [s.split(":")[0] for s in split_sentences(check.text)] == ["acute renal failure", "Evidence",
                                                                      "lung cancer", "lung cancer"]
    reasons = [c.reason for c in check.dropped]
    assert reasons == [f"cites [E{creatinine}] (creatinine) for lung cancer, which the panel does not tie to it",
                       f"cites [E{len(listed) + 4}], which is not in the evidence list"]
    # Without the list, ids are pointers the checker cannot judge: nothing is removed for them.
    assert not check_reasoning(text, case, evidence).dropped


def test_consistency_needs_a_rationale_per_reported_disease_and_nothing_for_others():
    from medfuse.model.faithfulness import check_consistency

    good = ("<think>sepsis: lactate is raised.\npneumonia: consolidation.\n"
            "Considered, not reported (below threshold): heart failure.</think>")
    assert check_consistency(good, ["sepsis", "pneumonia"]).consistent
    missing = check_consistency("<think>sepsis: lactate is raised.</think>", ["sepsis", "pneumonia"])
    assert missing.missing == ["pneumonia"] and missing.problems == ["no rationale for reported pneumonia"]
    argued = check_consistency("<think>sepsis: raised lactate, and atrial fibrillation on the ECG.</think>", ["sepsis"])
    assert argued.argued_unreported == ["atrial_fibrillation"]
    # An empty header is no rationale; a denial is no argument.
    assert check_consistency("<think>sepsis:</think>", ["sepsis"]).missing == ["sepsis"]
    assert check_consistency("<think>sepsis: fever, no pneumonia.</think>", ["sepsis"]).consistent


def test_a_rationale_names_only_items_tied_to_its_disease_and_names_them_whole(case, evidence):
    from medfuse.model.prompt import numbered_evidence, rationale_options

    listed = numbered_evidence(evidence)
    assert "creatinine (high)" in rationale_options(listed, "acute_renal_failure")
    assert "creatinine (high)" not in rationale_options(listed, "hypertension")
    text = ("acute renal failure: supported by creatinine (high).\n"
            "hypertension: supported by creatinine (high).\n"  # a listed item, but not tied to it
            "acute renal failure: supported by Creatininemiax (high).\n"  # a name grown out of a test's name
            "acute renal failure: no listed evidence item shows hypertension.\n"
            "hypertension: no potassium result argues against it.")  # a denial names nothing as support
    check = check_reasoning(text, case, evidence, cited=listed)
    assert [c.reason.split(",")[0] for c in check.dropped] == [
        "names creatinine for hypertension",
        "names 'Creatininemiax'",
    ]
    assert "acute renal failure: supported by creatinine (high)." in check.text
    # Without the evidence list, the rule has nothing to tie names to.
    assert not check_reasoning(text.split("\n")[1], case, evidence).dropped
