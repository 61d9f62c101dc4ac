"""FHIR R4 import: Bundles and NDJSON into cases, with every odd item counted."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest

from medfuse.cli import main
from medfuse.io.base import ImportReport
from medfuse.io.fhir import import_fhir
from medfuse.record.store import read_case, read_index

FIX = Path(__file__).parent / "fixtures"
FHIR = FIX / "fhir"
BUNDLE = FHIR / "bundle_encounter.json"
BULK = FHIR / "bulk"
PNG = FHIR / "images" / "cxr_pa.png"
DICOM_ECG = FIX / "dicom" / "waveform_ecg.dcm"
CT_DICOM = FIX / "dicom" / "CT_small.dcm"
WFDB_HEA = FIX / "ecg" / "00001_lr.hea"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, path_part: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("medfuse: error: ") and path_part in lines[0], err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def bundle_cases():
    report = ImportReport("fhir")
    cases = {c.case_id: c for c in import_fhir([BUNDLE], report)}
    return cases, report


def write_bundle(path: Path, resources: list[dict]) -> Path:
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                "entry": [{"resource": r} for r in resources]}))
    return path


PATIENT = {"resourceType": "Patient", "id": "p", "gender": "male", "birthDate": "1960-01-01"}
ENCOUNTER = {"resourceType": "Encounter", "id": "e", "status": "finished", "class": {"code": "IMP"},
             "subject": {"reference": "Patient/p"}, "period": {"start": "2024-01-01T10:00:00Z"}}


def vital(code: str, value: float, unit: str, **extra) -> dict:
    return {"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": "Patient/p"}, "encounter": {"reference": "Encounter/e"},
            "effectiveDateTime": "2024-01-01T10:30:00Z",
            "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": unit}, **extra}


# ---------------------------------------------------------------- the Bundle fixture

def test_one_case_per_encounter_with_demographics(bundle_cases):
    cases, _ = bundle_cases
    assert sorted(cases) == ["fhir-enc-1001", "fhir-enc-1002"]
    case = cases["fhir-enc-1001"]
    assert case.patient_id == "pat-1"
    assert case.demographics.sex == "F" and case.demographics.age == 71  # born 1952-06-14, seen 2024-03-01
    assert case.time == dt.datetime(2024, 3, 1, 7, 40)  # 08:40+01:00 as UTC
    assert case.provenance["encounter_id"] == "enc-1001"


def test_lab_observations_keep_value_unit_range_flag_and_time(bundle_cases):
    cases, _ = bundle_cases
    labs = {r.code or r.name: r for r in cases["fhir-enc-1001"].labs}
    glucose = labs["glucose"]  # LOINC 15074-8 is not in the catalogue: mapped by its name
    assert glucose.loinc == "15074-8" and glucose.unit == "mg/dL" and glucose.flag == "H"
    assert glucose.value == pytest.approx(7.8 * 18.016) and glucose.source_unit == "mmol/L"
    assert glucose.ref_high == pytest.approx(5.6 * 18.016)
    assert glucose.time == dt.datetime(2024, 3, 1, 8, 15)
    pct = labs["procalcitonin"]  # valueString '<0.5'
    assert (pct.censored, pct.value, pct.value_text) == ("<", 0.5, "<0.5")
    tnt = labs["troponin_t"]  # valueQuantity.comparator '<'
    assert (tnt.censored, tnt.value, tnt.ref_high) == ("<", 0.01, 0.01)
    assert labs["wbc"].flag == "HH" and labs["wbc"].unit == "10*3/uL"
    assert labs["Ferritin"].code is None and labs["Ferritin"].unit == "ng/mL"
    assert [r.code for r in cases["fhir-enc-1001"].labs].count("creatinine") == 1
    assert not {"potassium", "sodium", "lactate", "albumin"} & set(labs)


def test_vitals_from_single_observations_and_bp_panel_components(bundle_cases):
    cases, _ = bundle_cases
    [vs] = cases["fhir-enc-1001"].vitals
    assert (vs.heart_rate, vs.sbp, vs.dbp, vs.spo2, vs.resp_rate) == (118, 152, 94, 91, 26)
    assert vs.temperature == pytest.approx((101.3 - 32) * 5 / 9, abs=0.01)  # degF -> Cel
    assert vs.time == dt.datetime(2024, 3, 1, 7, 50)
    # An Observation naming only the patient lands in the encounter covering its time.
    [later] = cases["fhir-enc-1002"].vitals
    assert later.heart_rate == 76


def test_conditions_map_to_the_panel_by_icd10_and_snomed_text(bundle_cases):
    cases, _ = bundle_cases
    labels = cases["fhir-enc-1001"].labels
    assert labels.disease_names() == ["atrial fibrillation", "pneumonia"]
    af = next(d for d in labels.diagnoses if d.name == "atrial fibrillation")
    assert af.icd10 == "I4891"
    assert any(d.name == "Hyperlipidemia, unspecified" and not d.in_panel for d in labels.diagnoses)
    assert "ICD10:I219" not in labels.source_codes  # the refuted myocardial infarction
    assert {"ICD10:I4891", "SNOMED:49436004", "SNOMED:233604007"} <= set(labels.source_codes)
    assert cases["fhir-enc-1002"].labels is None  # no Condition: unknown, not "healthy"


def test_reports_notes_and_referenced_image(bundle_cases):
    cases, _ = bundle_cases
    case = cases["fhir-enc-1001"]
    assert case.labels.report.startswith("Right lower lobe consolidation")
    [note] = case.notes
    assert note.type == "discharge" and "atrial fibrillation" in note.text
    [image] = case.cxr
    assert image.source == "cxr_pa.png" and (image.width, image.height) == (80, 96)


def test_every_unused_item_is_counted(bundle_cases):
    _, report = bundle_cases
    expected_skips = {
        "Claim resource not imported": 1,
        "unknown FHIR resource type": 1,
        "duplicate lab result (same test, time and value)": 1,
        "text lab value": 1,
        "negative value for sodium": 1,
        "NaN or infinite lab value": 1,
        "unknown unit for albumin": 1,
        "coded lab value (qualitative result)": 1,
        "Observation not a lab or vital sign (social-history)": 1,
        "vital sign other than heart rate, blood pressure, temperature, SpO2 or respiratory rate": 1,
        "Observation not linked to an encounter (no encounter covers its time)": 1,
        "Condition refuted or entered in error": 1,
        "referenced file not found": 1,
    }
    assert dict(report.skipped) == expected_skips
    assert report.notes["unit converted [degF] -> Cel (temperature)"] == 1
    assert report.notes["censored lab value kept as its bound"] == 2


# ---------------------------------------------------------------- NDJSON

def test_ndjson_bulk_export_links_across_files_one_case_per_patient():
    report = ImportReport("fhir")
    [case] = list(import_fhir([BULK], report))
    assert case.case_id == "fhir-pat-2" and case.demographics.sex == "M" and case.demographics.age == 44
    assert {r.code: r.value for r in case.labs} == {"hba1c": 7.4, "glucose": 182.0}
    assert (case.vitals[0].sbp, case.vitals[0].dbp) == (146, 92)  # 55284-4 panel components
    assert case.labels.disease_names() == ["diabetes mellitus", "hypertension"]
    assert report.skipped == {"Observation with status entered-in-error": 1}


def test_ndjson_lines_in_a_json_named_file(tmp_path):
    lines = [PATIENT, vital("8867-4", 88, "/min", encounter=None)]
    (tmp_path / "export.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    [case] = list(import_fhir([tmp_path / "export.json"], ImportReport("fhir")))
    assert case.vitals[0].heart_rate == 88


# ---------------------------------------------------------------- attachments

def test_ecg_files_dicom_waveform_and_wfdb_and_inline_media(tmp_path):
    ecg_doc = {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": "Patient/p"},
               "context": {"encounter": [{"reference": "Encounter/e"}]},
               "content": [{"attachment": {"contentType": "application/dicom", "url": DICOM_ECG.resolve().as_uri()}}]}
    wfdb_doc = {**ecg_doc, "content": [{"attachment": {"url": WFDB_HEA.resolve().as_uri()}}]}
    media = {"resourceType": "Media", "status": "completed", "subject": {"reference": "Patient/p"},
             "encounter": {"reference": "Encounter/e"},
             "content": {"contentType": "image/png", "data": base64.b64encode(PNG.read_bytes()).decode()}}
    study = {"resourceType": "ImagingStudy", "status": "available", "subject": {"reference": "Patient/p"},
             "encounter": {"reference": "Encounter/e"}, "endpoint": [{"reference": "Endpoint/ep"}]}
    endpoint = {"resourceType": "Endpoint", "id": "ep", "status": "active", "connectionType": {"code": "direct-project"},
                "payloadType": [{"text": "DICOM"}], "address": CT_DICOM.resolve().as_uri()}
    bundle = write_bundle(tmp_path / "b.json", [PATIENT, ENCOUNTER, ecg_doc, wfdb_doc, media, study, endpoint])
    report = ImportReport("fhir")
    [case] = list(import_fhir([bundle], report))
    assert case.ecg is not None and len(case.ecg.leads) == 12 and case.ecg.fs == 1000  # the DICOM waveform
    assert report.skipped["second ECG in one case"] == 1  # the WFDB record came second
    assert [(im.width, im.height) for im in case.cxr] == [(80, 96), (128, 128)]  # inline PNG, CT endpoint


def test_unreadable_referenced_file_is_skipped_not_fatal(tmp_path):
    (tmp_path / "fake.png").write_text("not an image")
    doc = {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": "Patient/p"},
           "context": {"encounter": [{"reference": "Encounter/e"}]},
           "content": [{"attachment": {"contentType": "image/png", "url": "fake.png"}},
                       {"attachment": {"contentType": "image/png", "url": "https://pacs.example.org/x.png"}}]}
    bundle = write_bundle(tmp_path / "b.json", [PATIENT, ENCOUNTER, doc, vital("8867-4", 70, "/min")])
    report = ImportReport("fhir")
    [case] = list(import_fhir([bundle], report))
    assert case.cxr == [] and case.vitals[0].heart_rate == 70
    assert report.skipped["remote attachment not fetched"] == 1
    assert sum(v for k, v in report.skipped.items() if k.startswith("referenced image file unreadable")) == 1


# ---------------------------------------------------------------- odd items

def test_odd_vitals_invalid_resources_and_naive_times(tmp_path):
    resources = [
        PATIENT, ENCOUNTER,
        vital("8310-5", 98.6, "Cel"),  # Fahrenheit number labelled Celsius
        vital("59408-5", 0.95, "1"),  # saturation as a fraction
        vital("8867-4", 72, "/min", effectiveDateTime="2024-01-01T10:30:00"),  # no offset
        vital("9279-1", 16, "kg"),
        {"resourceType": "Observation", "status": "final", "subject": {"reference": "Patient/p"}},  # no code
    ]
    report = ImportReport("fhir")
    [case] = list(import_fhir([write_bundle(tmp_path / "b.json", resources)], report))
    [vs] = case.vitals
    assert (vs.spo2, vs.heart_rate, vs.temperature, vs.resp_rate) == (95, 72, None, None)
    assert report.skipped["implausible temperature value"] == 1
    assert report.skipped["unknown unit for resp_rate"] == 1
    assert report.skipped["invalid Observation resource (fails FHIR R4 validation)"] == 1
    assert report.notes["FHIR dateTime without a timezone read as written"] == 1


# ---------------------------------------------------------------- CLI

def test_cli_writes_cohort_and_json_summary(tmp_path, capsys):
    out = tmp_path / "cohort"
    code, stdout, _ = run_cli(capsys, "import", "fhir", str(BUNDLE), str(BULK), "--out", str(out), "--json")
    assert code == 0
    summary = json.loads(stdout)
    assert summary["cases_written"] == 3
    assert summary["per_disease"] == {"atrial fibrillation": 1, "pneumonia": 1, "diabetes mellitus": 1,
                                      "hypertension": 1}
    assert sorted(read_index(out)["case_id"]) == ["fhir-enc-1001", "fhir-enc-1002", "fhir-pat-2"]
    case = read_case(out / "fhir-enc-1001")
    assert case.cxr[0].pixels.shape == (96, 80) and case.vitals[0].sbp == 152


@pytest.mark.parametrize("name, content, problem", [
    ("broken.json", '{"resourceType": "Bundle", "entry": [\n  {"resource": {"resourceType": "Patient",}}\n]}',
     "malformed JSON at line 2"),
    ("broken.ndjson", '{"resourceType": "Patient", "id": "a"}\n{"resourceType": "Observation"\n', "malformed JSON at line 2"),
    ("list.json", "[1, 2, 3]", "not a FHIR resource"),
    ("empty.json", "  \n", "empty file"),
])
def test_cli_malformed_fhir_is_one_line_error_and_writes_nothing(tmp_path, capsys, name, content, problem):
    bad = tmp_path / name
    bad.write_text(content)
    out = tmp_path / "cohort"
    # The good bundle comes first on the command line: still nothing may be written.
    code, _, err = run_cli(capsys, "import", "fhir", str(BUNDLE), str(bad), "--out", str(out))
    assert code == 2
    assert problem in one_line_error(err, name)
    assert not out.exists()
