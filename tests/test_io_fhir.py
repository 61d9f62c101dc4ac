"""FHIR R4 import: Bundles and NDJSON into cases, with every odd item counted."""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from medfuse.cli import main
from medfuse.io.base import ImportReport, pseudonym
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


def fid(raw_id: str) -> str:
    """The case id of the Encounter (or Patient) with FHIR id `raw_id`: a hash, never the id."""
    return pseudonym(raw_id, "fhir")


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
    assert sorted(cases) == sorted([fid("enc-1001"), fid("enc-1002")])
    case = cases[fid("enc-1001")]
    assert case.patient_id == pseudonym("pat-1", "pt")
    assert case.demographics.sex == "F" and case.demographics.age == 71  # born 1952-06-14, seen 2024-03-01
    assert case.time == dt.datetime(2024, 3, 1, 7, 40)  # 08:40+01:00 as UTC
    assert "encounter_id" not in case.provenance  # the raw id is never stored


def test_lab_observations_keep_value_unit_range_flag_and_time(bundle_cases):
    cases, _ = bundle_cases
    labs = {r.code or r.name: r for r in cases[fid("enc-1001")].labs}
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
    assert [r.code for r in cases[fid("enc-1001")].labs].count("creatinine") == 1
    assert not {"potassium", "sodium", "lactate", "albumin"} & set(labs)


def test_vitals_from_single_observations_and_bp_panel_components(bundle_cases):
    cases, _ = bundle_cases
    [vs] = cases[fid("enc-1001")].vitals
    assert (vs.heart_rate, vs.sbp, vs.dbp, vs.spo2, vs.resp_rate) == (118, 152, 94, 91, 26)
    assert vs.temperature == pytest.approx((101.3 - 32) * 5 / 9, abs=0.01)  # degF -> Cel
    assert vs.time == dt.datetime(2024, 3, 1, 7, 50)
    # An Observation naming only the patient lands in the encounter covering its time.
    [later] = cases[fid("enc-1002")].vitals
    assert later.heart_rate == 76


def test_conditions_map_to_the_panel_by_icd10_and_snomed_text(bundle_cases):
    cases, _ = bundle_cases
    labels = cases[fid("enc-1001")].labels
    assert labels.disease_names() == ["atrial fibrillation", "pneumonia"]
    af = next(d for d in labels.diagnoses if d.name == "atrial fibrillation")
    assert af.icd10 == "I4891"
    assert any(d.name == "Hyperlipidemia, unspecified" and not d.in_panel for d in labels.diagnoses)
    assert "ICD10:I219" not in labels.source_codes  # the refuted myocardial infarction
    assert {"ICD10:I4891", "SNOMED:49436004", "SNOMED:233604007"} <= set(labels.source_codes)
    assert cases[fid("enc-1002")].labels is None  # no Condition: unknown, not "healthy"


def test_reports_notes_and_referenced_image(bundle_cases):
    cases, _ = bundle_cases
    case = cases[fid("enc-1001")]
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
        "NaN lab value": 1,
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
    assert case.case_id == fid("pat-2") and case.demographics.sex == "M" and case.demographics.age == 44
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
    # Referenced files live in the bundle's folder (file:// URLs and relative paths both work).
    for src in (DICOM_ECG, CT_DICOM, WFDB_HEA, WFDB_HEA.with_suffix(".dat")):
        shutil.copy(src, tmp_path / src.name)
    ecg_doc = {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": "Patient/p"},
               "context": {"encounter": [{"reference": "Encounter/e"}]},
               "content": [{"attachment": {"contentType": "application/dicom",
                                           "url": (tmp_path / DICOM_ECG.name).as_uri()}}]}
    wfdb_doc = {**ecg_doc, "content": [{"attachment": {"url": WFDB_HEA.name}}]}
    media = {"resourceType": "Media", "status": "completed", "subject": {"reference": "Patient/p"},
             "encounter": {"reference": "Encounter/e"},
             "content": {"contentType": "image/png", "data": base64.b64encode(PNG.read_bytes()).decode()}}
    study = {"resourceType": "ImagingStudy", "status": "available", "subject": {"reference": "Patient/p"},
             "encounter": {"reference": "Encounter/e"}, "endpoint": [{"reference": "Endpoint/ep"}]}
    endpoint = {"resourceType": "Endpoint", "id": "ep", "status": "active", "connectionType": {"code": "direct-project"},
                "payloadType": [{"text": "DICOM"}], "address": (tmp_path / CT_DICOM.name).as_uri()}
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
    assert sorted(read_index(out)["case_id"]) == sorted([fid("enc-1001"), fid("enc-1002"), fid("pat-2")])
    case = read_case(out / fid("enc-1001"))
    assert case.cxr[0].pixels.shape == (96, 80) and case.vitals[0].sbp == 152


@pytest.mark.parametrize("name, content, problem", [
    ("broken.json", '{"resourceType": "Bundle", "entry": [\n  {"resource": {"resourceType": "Patient",}}\n]}',
     "invalid JSON at line 2"),
    ("broken.ndjson", '{"resourceType": "Patient", "id": "a"}\n{"resourceType": "Observation"\n', "invalid JSON at line 2"),
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


# ---------------------------------------------------------------- safety of inputs

def _doc(url: str) -> dict:
    return {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": "Patient/p"},
            "context": {"encounter": [{"reference": "Encounter/e"}]},
            "content": [{"attachment": {"contentType": "text/plain", "url": url}}]}


def _study(address: str) -> list[dict]:
    endpoint = {"resourceType": "Endpoint", "id": "ep", "status": "active", "connectionType": {"code": "direct-project"},
                "payloadType": [{"text": "DICOM"}], "address": address}
    study = {"resourceType": "ImagingStudy", "status": "available", "subject": {"reference": "Patient/p"},
             "encounter": {"reference": "Encounter/e"}, "endpoint": [{"reference": "Endpoint/ep"}]}
    return [endpoint, study]


SECRET = "SECRET-OUTSIDE-THE-INPUT"


def _outside_references(tmp_path: Path) -> dict[str, list[dict]]:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "link.txt").symlink_to(secret)
    return {
        "parent": [_doc("../secret.txt")],
        "absolute": [_doc(str(secret))],
        "file-url": [_doc(secret.as_uri())],
        "link-out": [_doc("link.txt")],
        "endpoint-parent": _study("../secret.txt"),
        "endpoint-file-url": _study(secret.as_uri()),
    }


@pytest.mark.parametrize("kind", ["parent", "absolute", "file-url", "link-out", "endpoint-parent", "endpoint-file-url"])
def test_file_reference_outside_the_bundle_folder_is_refused(tmp_path, capsys, kind):
    # Before the fix the attachment was read: /etc/passwd ended up in a note.
    resources = _outside_references(tmp_path)[kind]
    bundle = write_bundle(tmp_path / "in" / "b.json", [PATIENT, ENCOUNTER, vital("8867-4", 70, "/min"), *resources])
    out = tmp_path / "cohort"
    code, stdout, err = run_cli(capsys, "import", "fhir", str(bundle), "--out", str(out))
    assert code == 2 and "outside the folder of this FHIR file" in one_line_error(err, str(bundle))
    assert not out.exists() and SECRET not in stdout + err
    # --skip-bad: the reference is skipped and listed by the bundle's path, the rest imported.
    code, stdout, err = run_cli(capsys, "import", "fhir", str(bundle), "--out", str(out), "--skip-bad", "--json")
    summary = json.loads(stdout)
    assert code == 0 and summary["cases_written"] == 1
    assert summary["skipped"]["file reference outside the input folder"] == 1
    assert summary["skipped_files"][0]["file"] == str(bundle)
    for path in out.rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes()


def test_file_inside_the_bundle_folder_is_still_read(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "n.txt").write_text("Cough for three days.")
    bundle = write_bundle(tmp_path / "b.json", [PATIENT, ENCOUNTER, _doc("notes/n.txt"),
                                                _doc((tmp_path / "notes" / "n.txt").as_uri())])
    report = ImportReport("fhir")
    [case] = list(import_fhir([bundle], report))
    assert [n.text for n in case.notes] == ["Cough for three days."] * 2


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000])
@pytest.mark.parametrize("name", ["deep.json", "deep.ndjson"])
def test_deeply_nested_json_is_one_line_not_a_recursion_traceback(tmp_path, capsys, text, name):
    bad = tmp_path / name
    bad.write_text(text)
    code, _, err = run_cli(capsys, "import", "fhir", str(bad), "--out", str(tmp_path / "cohort"))
    assert code == 2 and "nested too deep" in one_line_error(err, name)


def test_raw_fhir_ids_and_names_never_reach_the_cohort(tmp_path, capsys):
    # A Synthea-style file name holds the patient's name and id; both must stay out.
    named = tmp_path / "Fixture_Test_pat-1.json"
    shutil.copy(BUNDLE, named)
    shutil.copytree(FHIR / "images", tmp_path / "images")
    out = tmp_path / "cohort"
    code, _, _ = run_cli(capsys, "import", "fhir", str(named), str(BULK), "--out", str(out), "--json")
    assert code == 0
    written = [p for p in out.rglob("*") if p.is_file()]
    assert written
    for raw in ("enc-1001", "enc-1002", "pat-1", "pat-2", "MRN-TEST-0001", "Fixture_Test"):
        for path in written:
            assert raw not in path.name and raw.encode() not in path.read_bytes(), (raw, path.name)


def test_implausible_lab_value_stops_the_import_or_is_skipped(tmp_path, capsys):
    glucose = {"resourceType": "Observation", "status": "final",
               "category": [{"coding": [{"code": "laboratory"}]}],
               "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
               "subject": {"reference": "Patient/p"}, "encounter": {"reference": "Encounter/e"},
               "valueQuantity": {"value": 1e308, "system": "http://unitsofmeasure.org", "code": "mg/dL"}}
    bundle = write_bundle(tmp_path / "b.json", [PATIENT, ENCOUNTER, glucose, vital("8867-4", 70, "/min")])
    code, _, err = run_cli(capsys, "import", "fhir", str(bundle), "--out", str(tmp_path / "cohort"))
    assert code == 2 and "glucose value above the plausible maximum" in one_line_error(err, "b.json")
    code, stdout, _ = run_cli(capsys, "import", "fhir", str(bundle), "--out", str(tmp_path / "cohort"), "--skip-bad",
                              "--json")
    assert code == 0 and json.loads(stdout)["skipped"]["implausible lab value"] == 1


def test_import_with_nothing_usable_is_an_error(tmp_path, capsys):
    bad = tmp_path / "b.json"
    bad.write_text(json.dumps({"resourceType": "NotAThing", "id": "x"}))
    code, _, err = run_cli(capsys, "import", "fhir", str(bad), "--out", str(tmp_path / "cohort"))
    assert code == 2 and "no case imported" in one_line_error(err, "b.json")
    assert not (tmp_path / "cohort").exists()


def test_skip_bad_skips_unreadable_files_and_names_them(tmp_path, capsys):
    bad = tmp_path / "broken.json"
    bad.write_text("{oops")
    code, stdout, _ = run_cli(capsys, "import", "fhir", str(BUNDLE), str(bad), "--out", str(tmp_path / "c"),
                              "--skip-bad", "--json")
    summary = json.loads(stdout)
    assert code == 0 and summary["cases_written"] == 2
    assert summary["skipped_files"] == [{"file": str(bad), "reason": "invalid JSON at line 1 column 2: "
                                                                    "Expecting property name enclosed in double quotes"}]
