"""From raw files to cases in the library: the importer registry, discovery of mixed
folders, the merge of one encounter's files, case/cohort collection and cohort writing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from medfuse.errors import InputError
from medfuse.io import sources
from medfuse.io.base import ImportReport, read_or_skip
from medfuse.io.cohort import import_summary, write_cohort
from medfuse.io.sources import (
    CASE,
    FileImporter,
    SourceInput,
    cases_from_files,
    collect_cases,
    discover_files,
    discover_inputs,
    importer_for,
    register_importer,
)
from medfuse.record import PatientCase, read_case, write_case

FIX = Path(__file__).parent / "fixtures"
RG1 = FIX / "dicom" / "RG1_UNCI.dcm"
PNG = FIX / "cxr" / "nih" / "00000001_000.png"
ECG = FIX / "ecg"

LOINC = "http://loinc.org"


def one_encounter_bundle() -> dict:
    """A FHIR Bundle of one patient, one encounter, one creatinine result and one heart rate."""
    def observation(oid: str, category: str, code: str, value: float, unit: str) -> dict:
        return {"resource": {
            "resourceType": "Observation", "id": oid, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": category}]}],
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e1"},
            "effectiveDateTime": "2024-03-01T09:00:00+00:00",
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}}}

    return {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1950-01-01"}},
        {"resource": {"resourceType": "Encounter", "id": "e1", "status": "finished",
                      "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                      "subject": {"reference": "Patient/p1"},
                      "period": {"start": "2024-03-01T08:00:00+00:00", "end": "2024-03-02T08:00:00+00:00"}}},
        observation("creat", "laboratory", "2160-0", 1.9, "mg/dL"),
        observation("hr", "vital-signs", "8867-4", 88, "/min"),
    ]}


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """One encounter's files side by side: DICOM, WFDB, FHIR, PNG and a stray text file."""
    folder = tmp_path / "encounter"
    folder.mkdir()
    shutil.copy(RG1, folder / "chest.dcm")
    shutil.copy(PNG, folder / "chest.png")
    for suffix in (".hea", ".dat"):
        shutil.copy(ECG / f"00001_lr{suffix}", folder / f"00001_lr{suffix}")
    (folder / "bundle.json").write_text(json.dumps(one_encounter_bundle()))
    (folder / "README.txt").write_text("exported from the ward system\n")
    return folder


def test_a_mixed_folder_becomes_one_case_with_every_modality(mixed_folder):
    report = ImportReport("test")
    found = discover_files([mixed_folder], report=report)
    assert sorted(f.kind for f in found) == ["dicom", "fhir", "image", "wfdb"]  # .hea and .dat are one record
    [case] = cases_from_files(found, report)
    assert set(case.modalities()) >= {"cxr", "ecg", "labs", "vitals"}
    assert len(case.cxr) == 2 and case.ecg.signal.shape == (1000, 12)
    assert [r.loinc for r in case.labs] == ["2160-0"]
    assert report.skipped["file in folder of no known kind"] == 1  # README.txt is counted, not read


def test_the_registry_recognises_dicom_by_its_preamble_not_only_its_name(tmp_path):
    unnamed = tmp_path / "IM000001"
    shutil.copy(RG1, unnamed)
    assert importer_for(unnamed).kind == "dicom"
    assert importer_for(ECG / "00001_lr.dat").kind == "wfdb"
    not_dicom = tmp_path / "IM000002"
    not_dicom.write_bytes(b"\0" * 200)
    assert importer_for(not_dicom) is None
    assert importer_for(unnamed, kinds=["image"]) is None


def test_a_named_file_of_no_known_kind_is_an_error_naming_it(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(InputError) as e:
        discover_files([notes])
    assert str(notes) in str(e.value) and "not a FHIR bundle, DICOM, WFDB or image file" in str(e.value)
    with pytest.raises(InputError, match="no such file or folder"):
        discover_files([tmp_path / "missing.dcm"])


def test_a_registered_importer_is_found_and_read(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "_IMPORTERS", dict(sources._IMPORTERS))
    register_importer(FileImporter(
        "note", "clinical note", (".note",),
        read_cases=lambda files, report: [PatientCase(case_id=f.stem) for f in files], whole_cases=True))
    (tmp_path / "a.note").write_text("cough")
    found = discover_files([tmp_path])
    assert found == [SourceInput("note", tmp_path / "a.note")]
    assert [c.case_id for c in cases_from_files(found, ImportReport("test"))] == ["a"]


def test_ecg_inputs_take_record_names_headers_and_case_folders(tmp_path):
    assert discover_inputs([str(ECG / "100")], ecg_recordings=True) == [SourceInput("wfdb", ECG / "100.hea")]
    assert discover_inputs([str(ECG / "100.dat")], ecg_recordings=True) == [SourceInput("wfdb", ECG / "100.hea")]
    write_case(PatientCase(case_id="c1"), tmp_path / "cohort" / "site" / "c1")
    assert discover_inputs([tmp_path / "cohort"]) == [SourceInput(CASE, tmp_path / "cohort" / "site" / "c1")]
    with pytest.raises(InputError, match="not a case folder"):
        discover_inputs([ECG / "100.hea"])


def test_collect_cases_reads_a_cohort_lazily_and_counts_unreadable_case_folders(tmp_path):
    cohort = tmp_path / "cohort"
    write_case(PatientCase(case_id="a"), cohort / "a")
    write_case(PatientCase(case_id="b"), cohort / "b")
    (cohort / "b" / "case.json").write_text("{not json")
    report = ImportReport("test")
    cases, total, batch = collect_cases([cohort], report)
    assert (total, batch) == (2, True)
    assert [c.case_id for c in cases] == ["a"]
    [reason] = report.skipped
    assert reason.startswith("unreadable case folder (invalid JSON")


def test_collect_cases_merges_the_files_of_one_encounter():
    report = ImportReport("test")
    cases, total, batch = collect_cases([ECG / "00001_lr.hea", PNG], report)
    [case] = list(cases)
    assert (total, batch) == (1, False) and case.ecg is not None and len(case.cxr) == 1


def test_write_cohort_skips_cases_already_there_and_the_summary_says_so(tmp_path):
    report = ImportReport("test")
    write_cohort([PatientCase(case_id="a")], tmp_path / "c", report, quiet=True)
    again = ImportReport("test")
    write_cohort([PatientCase(case_id="a"), PatientCase(case_id="a")], tmp_path / "c", again, quiet=True)
    assert read_case(tmp_path / "c" / "a").case_id == "a" and again.cases_written == 0
    console = Console(record=True, width=100)
    console.print(import_summary(again))
    text = console.export_text()
    assert "test: 0 case(s) written" in text
    assert "case already in the cohort (use --overwrite)" in text and "duplicate case id in this import" in text


def test_read_or_skip_counts_with_skip_bad_and_raises_without(tmp_path):
    def unreadable(path: Path) -> None:
        raise InputError(path, "cut short")

    report = ImportReport("test")
    assert read_or_skip(report, True, "unreadable file", unreadable, tmp_path) is None
    assert report.skipped == {"unreadable file": 1}
    with pytest.raises(InputError, match="cut short"):
        read_or_skip(report, False, "unreadable file", unreadable, tmp_path)


# ---------------------------------------------------------------- every importer: --skip-bad, Ctrl-C

@pytest.mark.parametrize("command", ["dicom", "image", "wfdb", "ecg-array", "fhir", "labs-csv", "mimic-iv"])
def test_every_importer_offers_skip_bad(command):
    # The README promises --skip-bad on every importer; fhir, labs-csv and mimic-iv lacked it.
    import typer.main

    from medfuse.cli.app import app

    group = typer.main.get_command(app)
    cmd = group.commands["import"].commands[command]
    assert any("--skip-bad" in getattr(p, "opts", ()) for p in cmd.params)


def test_ctrl_c_during_an_import_leaves_only_whole_cases(tmp_path, monkeypatch):
    import medfuse.record.store as store

    real = store._write_case_files
    calls = []

    def interrupted(case, folder):
        calls.append(case.case_id)
        if len(calls) == 2:
            (folder / "partial.png").write_bytes(b"half")
            raise KeyboardInterrupt
        return real(case, folder)

    monkeypatch.setattr(store, "_write_case_files", interrupted)
    cases = (PatientCase(case_id=f"c{i}") for i in range(3))
    with pytest.raises(KeyboardInterrupt):
        write_cohort(cases, tmp_path / "cohort", ImportReport("t"), quiet=True)
    names = sorted(p.name for p in (tmp_path / "cohort").iterdir())
    assert names == ["c0", "index.parquet"]  # no temporary folder, the first case whole and indexed
