"""`medfuse import cinc|nih-cxr|ieee8023|kermany` on small real fixtures.

Fixtures (tests/fixtures/real, each with its SOURCE.txt and licence): CinC 2017 single-lead
records with REFERENCE.csv, CPSC 2018 and Challenge 2021 12-lead records, three NIH
ChestX-ray14 images (one with its expert box), three CC BY ieee8023 images with lung boxes
(their metadata is written here: the dataset's own is CC BY-NC-SA), and four Kermany images
in the published NORMAL/PNEUMONIA layout. Expected values come from the source files and
published tables, not from the importers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io

from medfuse.cli import main
from medfuse.errors import InputError
from medfuse.io.base import ImportReport
from medfuse.io.nih_cxr import import_nih_cxr, load_nih_tables
from medfuse.knowledge.label_maps import RHYTHM_CLASSES, load_label_map, map_labels
from medfuse.record.store import read_case, read_index

REAL = Path(__file__).parent / "fixtures" / "real"


def _cli(argv: list[str], capsys) -> tuple[int, dict | None, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 and "--json" in argv else None), out.err


def _import(kind: str, args: list[str], out: Path, capsys) -> dict:
    code, summary, err = _cli(["import", kind, *args, "--out", str(out), "--json"], capsys)
    assert code == 0, err
    return summary


def _assert_one_line_error(code: int, err: str, *names: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("medfuse: error: ") and "Traceback" not in err
    for name in names:
        assert name in lines[0], lines[0]


# ---------------------------------------------------------------- ECG: CinC 2017, CPSC 2018, Challenge 2021


def test_cinc2017_classes_come_from_reference_csv_and_samples_match_the_mat(tmp_path, capsys):
    out = tmp_path / "cohort"
    summary = _import("cinc", [str(REAL / "cinc2017"), "--split", "dev"], out, capsys)
    assert summary["cases_written"] == 4 and summary["per_disease"] == {"atrial fibrillation": 1}
    rhythms = {c: read_case(out / c).provenance["rhythm"] for c in ("A00004", "A00007", "A00013", "A00205")}
    assert rhythms == {"A00004": "atrial_fibrillation", "A00007": "sinus_rhythm", "A00013": "other",
                       "A00205": "unreadable"}
    af = read_case(out / "A00004")
    assert af.labels.disease_names() == ["atrial fibrillation"] and af.labels.source_codes == ["CinC2017:A"]
    assert af.provenance["split"] == "dev" and af.provenance["dataset"] == "cinc2017"
    # 'O' and '~' are no diagnoses: a case without panel disease, not a mislabelled one.
    assert read_case(out / "A00013").labels.diagnoses == []
    # The ISO date wfdb rejects is read, and the samples are the .mat's 'val' / 1000 mV.
    assert af.time is not None and af.time.isoformat() == "2014-05-01T11:05:48"
    expected = scipy.io.loadmat(REAL / "cinc2017" / "A00004.mat")["val"][0] / 1000.0
    assert af.ecg.fs == 300 and np.allclose(af.ecg.signal[:, 0], expected, atol=1e-9)
    assert summary["notes"]["label A -> atrial_fibrillation (panel), rhythm atrial_fibrillation"] == 1


def test_cpsc_abbreviations_map_to_snomed_panel_and_findings(tmp_path, capsys):
    out = tmp_path / "cohort"
    _import("cinc", [str(REAL / "cpsc2018")], out, capsys)
    both = read_case(out / "A0079")  # '#Dx: AF,RBBB', 'Age: 77', 'Sex: Female'
    assert both.labels.disease_names() == ["atrial fibrillation"]
    assert [f.label for f in both.labels.findings] == ["right bundle branch block"]
    assert both.labels.source_codes == ["SNOMED:164889003", "SNOMED:59118001"]
    assert (both.demographics.age, both.demographics.sex) == (77.0, "F")
    assert both.ecg.signal.shape == (5000, 12) and both.ecg.leads[:2] == ["I", "II"]
    # The label must not travel inside the model's input.
    assert not any("dx" in c.lower() for c in both.ecg.annotations.get("header_comments", []))
    ste = read_case(out / "A0093")
    assert [f.label for f in ste.labels.findings] == ["ST elevation"] and ste.labels.disease_names() == []
    assert read_case(out / "A0002").provenance["rhythm"] == "sinus_rhythm"


def test_challenge_2021_snomed_codes_and_unknown_codes_kept_as_unmapped(tmp_path, capsys):
    records = tmp_path / "records"
    shutil.copytree(REAL / "cinc2021", records)
    hea = records / "E07500.hea"
    hea.write_text(hea.read_text().replace("# Dx: 67741000119109,426177001", "# Dx: 67741000119109,426177001,999000111"))
    out = tmp_path / "cohort"
    summary = _import("cinc", [str(records)], out, capsys)
    chapman = read_case(out / "JS20000")  # PAC, sinus tachycardia, NSIVCB, ST changes
    assert {f.label for f in chapman.labels.findings} == {"premature atrial contraction", "sinus tachycardia",
                                                          "nonspecific intraventricular conduction delay", "ST changes"}
    assert chapman.provenance["rhythm"] == "sinus_tachycardia" and chapman.labels.disease_names() == []
    georgia = read_case(out / "E07500")
    assert georgia.provenance["rhythm"] == "sinus_bradycardia"
    assert georgia.provenance["unmapped_labels"] == ["999000111"]
    assert any(d.name == "SNOMED:999000111" and not d.in_panel for d in georgia.labels.diagnoses)
    assert summary["notes"]["label 999000111 unmapped (kept as a non-panel diagnosis)"] == 1


def test_truncated_mat_is_one_line_error_and_skip_bad_imports_the_rest(tmp_path, capsys):
    records = tmp_path / "records"
    shutil.copytree(REAL / "cpsc2018", records)
    mat = records / "A0093.mat"
    mat.write_bytes(mat.read_bytes()[:5000])
    out = tmp_path / "cohort"
    code, _, err = _cli(["import", "cinc", str(records), "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "A0093.mat", "truncated")
    # The two records before it were written atomically and indexed; nothing half-written.
    assert sorted(read_index(out)["case_id"]) == ["A0002", "A0079"]
    summary = _import("cinc", [str(records), "--skip-bad"], tmp_path / "c2", capsys)
    assert summary["cases_written"] == 2
    assert [f["file"] for f in summary["skipped_files"]] == [str(mat)]


def test_truncated_cinc2017_mat_names_the_users_file_not_a_temporary_copy(tmp_path, capsys):
    # CinC 2017 headers are read from a rewritten copy (their ISO date); errors must still
    # name the file the user gave.
    records = tmp_path / "records"
    shutil.copytree(REAL / "cinc2017", records)
    mat = records / "A00007.mat"
    mat.write_bytes(mat.read_bytes()[:3000])
    code, _, err = _cli(["import", "cinc", str(records), "--out", str(tmp_path / "c")], capsys)
    _assert_one_line_error(code, err, str(mat), "truncated")
    assert "medfuse-cinc-" not in err


def test_header_without_dx_and_no_labels_csv_names_the_header(tmp_path, capsys):
    records = tmp_path / "records"
    shutil.copytree(REAL / "cinc2017", records)
    (records / "REFERENCE.csv").unlink()
    code, _, err = _cli(["import", "cinc", str(records / "A00004.hea"), "--out", str(tmp_path / "c")], capsys)
    _assert_one_line_error(code, err, "A00004.hea", "#Dx")
    assert not (tmp_path / "c").exists()
    # A class outside N/A/O/~ and a CSV without a record column are errors naming the CSV.
    (records / "bad.csv").write_text("record,label\nA00004,X\n")
    code, _, err = _cli(["import", "cinc", str(records), "--labels", str(records / "bad.csv"),
                         "--out", str(tmp_path / "c")], capsys)
    _assert_one_line_error(code, err, "bad.csv", "N, A, O, ~")
    (records / "cols.csv").write_text("name,label,split\nA00004,A,dev\n")
    code, _, err = _cli(["import", "cinc", str(records), "--labels", str(records / "cols.csv"),
                         "--out", str(tmp_path / "c")], capsys)
    _assert_one_line_error(code, err, "cols.csv", "'record'")


# ---------------------------------------------------------------- NIH ChestX-ray14


def test_nih_box_from_1024px_coordinates_lands_on_the_grid_of_the_512px_image(tmp_path, capsys):
    out = tmp_path / "cohort"
    summary = _import("nih-cxr", [str(REAL / "nih_cxr")], out, capsys)
    assert summary["cases_written"] == 3
    case = read_case(out / "00001369_000")
    assert (case.cxr[0].width, case.cxr[0].height) == (512, 512)
    # BBox_List_2017.csv: Cardiomegaly x=336.998941798942 y=276.31746031746 w=553.718518518519
    # h=386.844444444444 on the 1024-px PNG -> x/1024*999, rounded half up.
    x, y, w, h = 336.998941798942, 276.31746031746, 553.718518518519, 386.844444444444
    expected = [int(np.floor(v / 1024 * 999 + 0.5)) for v in (x, y, x + w, y + h)]
    assert expected == [329, 270, 869, 647]
    assert [(f.label, f.boxes) for f in case.labels.findings] == [("cardiomegaly", [expected])]
    # The same box given in the stored 512-px image's pixels lands within a grid step.
    (tmp_path / "b512.csv").write_text("image,label,x,y,w,h\n00001369_000.png,Cardiomegaly,168.5,138.2,276.9,193.4\n")
    report = ImportReport("nih-cxr")
    tables = load_nih_tables(REAL / "nih_cxr" / "labels.csv", tmp_path / "b512.csv", report)
    (again,) = [c for c in import_nih_cxr([REAL / "nih_cxr"], tables, report) if c.case_id == "00001369_000"]
    assert np.abs(np.array(again.labels.findings[0].boxes[0]) - expected).max() <= 1
    # ... and so does the official BBox_List_2017.csv layout.
    (tmp_path / "official.csv").write_text(f"Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                                           f"00001369_000.png,Cardiomegaly,{x},{y},{w},{h},,,\n")
    tables = load_nih_tables(REAL / "nih_cxr" / "labels.csv", tmp_path / "official.csv", report)
    (official,) = [c for c in import_nih_cxr([REAL / "nih_cxr"], tables, report) if c.case_id == "00001369_000"]
    assert official.labels.findings[0].boxes == [expected]


def test_nih_labels_become_findings_pneumonia_the_panel_disease_no_finding_a_negative(tmp_path, capsys):
    out = tmp_path / "cohort"
    summary = _import("nih-cxr", [str(REAL / "nih_cxr")], out, capsys)
    assert summary["per_disease"] == {"pneumonia": 1}
    pneumonia = read_case(out / "00001962_000")  # 'Atelectasis|Pneumonia'
    assert {f.label for f in pneumonia.labels.findings} == {"atelectasis", "pneumonia"}
    assert pneumonia.labels.disease_names() == ["pneumonia"]
    assert pneumonia.patient_id == "nih-00001962" and pneumonia.provenance["split"] == "dev"
    normal = read_case(out / "00028351_000")  # 'No Finding': labelled, and negative
    assert normal.labels is not None and normal.labels.findings == [] and normal.labels.diagnoses == []
    # Ground truth stays off the image the model sees.
    assert all(not img.findings for c in (pneumonia, normal) for img in c.cxr)


def test_nih_missing_image_or_labels_column_is_one_line_error(tmp_path, capsys):
    data = tmp_path / "nih"
    shutil.copytree(REAL / "nih_cxr", data)
    (data / "images" / "00028351_000.png").unlink()
    code, _, err = _cli(["import", "nih-cxr", str(data), "--out", str(tmp_path / "c")], capsys)
    _assert_one_line_error(code, err, "00028351_000.png", "not found")
    summary = _import("nih-cxr", [str(data), "--skip-bad"], tmp_path / "c2", capsys)
    assert summary["cases_written"] == 2 and summary["skipped_files"][0]["file"] == "00028351_000.png"
    df = pd.read_csv(data / "labels.csv").drop(columns="finding_labels")
    df.to_csv(data / "labels.csv", index=False)
    code, _, err = _cli(["import", "nih-cxr", str(data), "--out", str(tmp_path / "c3")], capsys)
    _assert_one_line_error(code, err, "labels.csv", "Finding Labels")
    assert not (tmp_path / "c3").exists()


# ---------------------------------------------------------------- ieee8023


def _ieee_dataset(tmp_path: Path, rows: list[dict] | None = None) -> Path:
    """The fixture images with a metadata table written here (the real one is CC BY-NC-SA)."""
    data = tmp_path / "ieee8023"
    shutil.copytree(REAL / "ieee8023", data)
    rows = rows if rows is not None else [
        {"patientid": "103", "filename": "X-ray_of_cyst_in_pneumocystis_pneumonia_1.jpg", "finding": "Pneumocystis",
         "view": "PA", "sex": "", "age": "", "modality": "X-ray", "license": "CC BY", "temperature": "",
         "lymphocyte_count": "", "split": "dev"},
        {"patientid": "223", "filename": "cae2c0a9.jpg", "finding": "No Finding", "view": "PA", "sex": "M",
         "age": "61", "modality": "X-ray", "license": "CC BY 3.0", "temperature": "", "lymphocyte_count": "",
         "split": "dev"},
        {"patientid": "223", "filename": "5f619d7e.jpg", "finding": "COVID-19, ARDS", "view": "AP Supine", "sex": "M",
         "age": "61", "modality": "X-ray", "license": "CC BY-NC-SA 4.0", "temperature": "38.5",
         "lymphocyte_count": "1.8", "split": "dev"},
        {"patientid": "300", "filename": "ct-slice.jpg", "finding": "COVID-19", "view": "Axial", "sex": "F",
         "age": "40", "modality": "CT", "license": "CC BY", "temperature": "", "lymphocyte_count": "", "split": "dev"},
    ]
    pd.DataFrame(rows).to_csv(data / "metadata.csv", index=False)
    return data


def test_ieee8023_findings_patients_labs_and_lung_boxes_kept_apart(tmp_path, capsys):
    data = _ieee_dataset(tmp_path)
    out = tmp_path / "cohort"
    summary = _import("ieee8023", [str(data)], out, capsys)
    assert summary["cases_written"] == 3 and summary["skipped"]["not an X-ray (CT)"] == 1
    covid = read_case(out / "5f619d7e")
    assert covid.labels.disease_names() == ["pneumonia"]
    assert {d.name for d in covid.labels.diagnoses if not d.in_panel} == {"COVID-19", "acute respiratory distress syndrome"}
    assert (covid.demographics.sex, covid.demographics.age, covid.cxr[0].view) == ("M", 61.0, "AP")
    assert [(lab.loinc, lab.value) for lab in covid.labs] == [("731-0", 1.8)] and covid.vitals[0].temperature == 38.5
    normal = read_case(out / "cae2c0a9")
    assert normal.labels.diagnoses == [] and normal.patient_id == covid.patient_id == "ieee8023-223"
    # Lung fields are anatomy: on the grid in provenance, never among the findings.
    cyst = read_case(out / "X-ray_of_cyst_in_pneumocystis_pneumonia_1")
    assert cyst.labels.findings == [] and cyst.labels.disease_names() == ["pneumonia"]
    w, h = 943, 751  # lung_boxes.csv: Right Lung x=45 y=22 w=387 h=648 on the stored 943x751 image
    right = [int(np.floor(v + 0.5)) for v in (45 / w * 999, 22 / h * 999, 432 / w * 999, 670 / h * 999)]
    assert cyst.provenance["anatomy"]["boxes"]["right lung"] == [right]
    assert cyst.provenance["license"] == "CC BY" and cyst.provenance["split"] == "dev"
    # Only commercially usable images, when asked.
    summary = _import("ieee8023", [str(data), "--exclude-noncommercial"], tmp_path / "c2", capsys)
    assert summary["cases_written"] == 2


def test_ieee8023_missing_image_and_missing_finding_column(tmp_path, capsys):
    data = _ieee_dataset(tmp_path)
    (data / "images" / "cae2c0a9.jpg").unlink()
    code, _, err = _cli(["import", "ieee8023", str(data), "--out", str(tmp_path / "c")], capsys)
    _assert_one_line_error(code, err, "cae2c0a9.jpg", "not found")
    summary = _import("ieee8023", [str(data), "--skip-bad"], tmp_path / "c2", capsys)
    assert summary["cases_written"] == 2
    pd.read_csv(data / "metadata.csv").drop(columns="finding").to_csv(data / "metadata.csv", index=False)
    code, _, err = _cli(["import", "ieee8023", str(data), "--out", str(tmp_path / "c3")], capsys)
    _assert_one_line_error(code, err, "metadata.csv", "'finding'")


def test_library_entry_point_reads_a_set_lazily_and_checks_inputs_first(tmp_path):
    """`open_real_set` is what the CLI verbs and the benchmarks use: it finds the side files,
    checks the input before any case is read, and yields the same cases the CLI writes."""
    from medfuse.io.real_sets import open_real_set

    opened = open_real_set("cinc", [REAL / "cinc2017"])
    assert opened.total == 4 and opened.report.cases_written == 0
    cases = list(opened.cases)
    assert len(cases) == 4 and {c.provenance["rhythm"] for c in cases} >= {"atrial_fibrillation", "sinus_rhythm"}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no WFDB records"):
        open_real_set("cinc", [empty])
    with pytest.raises(InputError, match="no images in NORMAL/ or PNEUMONIA/"):
        open_real_set("kermany", [empty])
    with pytest.raises(ValueError, match="unknown research set"):
        open_real_set("mnist", [empty])


# ---------------------------------------------------------------- Kermany


def test_kermany_folder_layout_gives_class_type_patient_and_split(tmp_path, capsys):
    out = tmp_path / "cohort"
    summary = _import("kermany", [str(REAL / "kermany")], out, capsys)
    assert summary["cases_written"] == 4 and summary["per_disease"] == {"pneumonia": 3}
    a, b = read_case(out / "person101_bacteria_483"), read_case(out / "person101_bacteria_484")
    assert a.patient_id == b.patient_id == "kermany-person101" and a.provenance["split"] == "test"
    assert {d.name for d in a.labels.diagnoses} == {"pneumonia", "bacterial pneumonia"}
    assert {d.name for d in read_case(out / "person11_virus_38").labels.diagnoses} == {"pneumonia", "viral pneumonia"}
    normal = read_case(out / "IM-0003-0001")
    assert normal.patient_id == "kermany-N-IM-0003" and normal.labels.diagnoses == []


def test_kermany_labels_csv_with_a_bad_label_or_missing_image(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for p in (REAL / "kermany").rglob("*.jpeg"):
        shutil.copy(p, images / p.name)
    csv = tmp_path / "labels.csv"
    csv.write_text("image,label,split\nIM-0003-0001.jpeg,NORMAL,dev\nperson11_virus_38.jpeg,PNEUMONIA,heldout\n")
    summary = _import("kermany", [str(images), "--labels", str(csv)], tmp_path / "c", capsys)
    # Listed images only; the type and patient still come from the file name.
    assert summary["cases_written"] == 2 and summary["skipped"]["image not in the labels CSV (not imported)"] == 2
    virus = read_case(tmp_path / "c" / "person11_virus_38")
    assert virus.provenance["split"] == "heldout" and virus.patient_id == "kermany-person11"
    csv.write_text("image,label\nIM-0003-0001.jpeg,COVID\n")
    code, _, err = _cli(["import", "kermany", str(images), "--labels", str(csv), "--out", str(tmp_path / "d")], capsys)
    _assert_one_line_error(code, err, "labels.csv", "NORMAL")
    csv.write_text("image,label\nnot-there.jpeg,NORMAL\n")
    code, _, err = _cli(["import", "kermany", str(images), "--labels", str(csv), "--out", str(tmp_path / "d")], capsys)
    _assert_one_line_error(code, err, "not-there.jpeg")


# ---------------------------------------------------------------- label maps


def test_rhythm_classes_are_the_ecg_readers_and_maps_name_real_panel_diseases():
    from medfuse.interpret.ecg import RHYTHMS

    assert RHYTHM_CLASSES == RHYTHMS
    snomed = load_label_map("snomed")
    assert snomed.lookup("164889003").panel == "atrial_fibrillation"
    # Findings that are no panel disease stay findings.
    for code in ("164931005", "429622005", "59118001", "164909002", "164873001"):
        assert snomed.lookup(code).panel is None and snomed.lookup(code).finding
    nih = load_label_map("nih_chestxray14")
    assert [k for k, t in nih.targets.items() if t.panel] == ["pneumonia"]
    assert nih.lookup("Cardiomegaly").panel is None and nih.lookup("Mass").panel is None


def test_most_specific_rhythm_wins_and_a_bad_map_is_one_clear_error(tmp_path):
    m = map_labels(["426783006", "427084000"], load_label_map("snomed"))  # NSR + sinus tachycardia
    assert m.rhythm == "sinus_tachycardia"
    assert map_labels(["426783006", "164889003"], load_label_map("snomed")).rhythm == "atrial_fibrillation"
    bad = tmp_path / "map.yaml"
    bad.write_text("kermany:\n  NORMAL: {normal: true}\n  PNEUMONIA: {panel: lung_infection}\n")
    with pytest.raises(InputError, match="lung_infection"):
        load_label_map("kermany", bad)
