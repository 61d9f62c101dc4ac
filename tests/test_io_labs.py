"""Lab results from any source (`make_lab_result`) and the long-format lab CSV importer."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import pytest

from medfuse.cli import main
from medfuse.io.base import ImportReport
from medfuse.io.labs_common import dedupe_labs, make_lab_result, map_flag, parse_number
from medfuse.io.labs_csv import LabsCsvMapping, import_labs_csv, parse_range
from medfuse.record.store import read_case, read_index

LABS = Path(__file__).parent / "fixtures" / "labs"
LONG = LABS / "labs_long.csv"
EXPORT = LABS / "lab_export.tsv"
EXPORT_MAP = LABS / "lab_export_mapping.yaml"


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


# ---------------------------------------------------------------- make_lab_result

def test_glucose_in_mmol_is_converted_with_its_range_and_source_kept():
    report = ImportReport("t")
    r = make_lab_result("Glucose", "5.5", "mmol/l", ref_low=3.9, ref_high=5.6, report=report)
    assert r.code == "glucose" and r.loinc == "2345-7" and r.unit == "mg/dL"
    assert r.value == pytest.approx(5.5 * 18.016)
    assert (r.ref_low, r.ref_high) == (pytest.approx(3.9 * 18.016), pytest.approx(5.6 * 18.016))
    assert (r.source_value, r.source_unit) == (5.5, "mmol/L")
    assert report.notes["unit converted mmol/L -> mg/dL (glucose)"] == 1


def test_canonical_unit_is_not_marked_as_converted():
    r = make_lab_result("Creatinine", 1.1, "MG/DL")
    assert r.value == 1.1 and r.unit == "mg/dL" and r.source_value is None and r.source_unit is None


@pytest.mark.parametrize("text, comparator, bound", [("<0.5", "<", 0.5), (">= 1000", ">=", 1000.0),
                                                     ("≤0.01", "<=", 0.01), ("> 35,5", ">", 35.5)])
def test_censored_text_values_are_kept_as_their_bound(text, comparator, bound):
    report = ImportReport("t")
    r = make_lab_result("Troponin T", text, "ng/mL", report=report)
    assert (r.censored, r.value, r.value_text) == (comparator, pytest.approx(bound), text)
    assert report.notes["censored lab value kept as its bound"] == 1


def test_censored_bound_is_converted_too():
    r = make_lab_result("hs-troponin T", "<14", "ng/L")
    assert r.censored == "<" and r.value == pytest.approx(0.014) and r.source_value == 14.0


@pytest.mark.parametrize("raw, reason", [
    ("see note", "text lab value"), ("hemolysed", "text lab value"), ("", "empty lab value"),
    (None, "empty lab value"), ("NaN", "NaN lab value"), (float("nan"), "NaN lab value"),
    ("1,200", "ambiguous decimal comma in lab value"),
])
def test_unusable_values_are_skipped_and_counted(raw, reason):
    report = ImportReport("t")
    assert make_lab_result("Potassium", raw, "mmol/L", report=report) is None
    assert report.skipped == {reason: 1}


def test_numbers_with_separators():
    assert parse_number("1,2") == (1.2, True)
    assert parse_number("1.234,5") == (1234.5, True)
    assert parse_number("1,234.5") == (1234.5, False)
    assert parse_number("−3") == (-3.0, False)  # Unicode minus sign from word processors
    with pytest.raises(ValueError):
        parse_number("1,200")  # 1.2 in Europe, 1200 in the US: never guessed


def test_negative_value_of_a_catalogue_lab_is_skipped_but_unmapped_test_kept():
    report = ImportReport("t")
    assert make_lab_result("Sodium", -140, "mmol/L", report=report) is None
    assert report.skipped == {"negative value for sodium": 1}
    base_excess = make_lab_result("Base Excess", "-3", "mEq/L", report=report)
    assert base_excess.value == -3.0 and base_excess.code is None and base_excess.unit == "meq/L"


def test_unknown_or_impossible_unit_for_a_mapped_test_is_skipped():
    report = ImportReport("t")
    assert make_lab_result("Glucose", 100, "U/L", report=report) is None
    assert make_lab_result("Hemoglobin", 13, "furlongs", report=report) is None
    assert report.skipped == {"unknown unit for glucose": 1, "unknown unit for hemoglobin": 1}


def test_loinc_wins_and_fluid_keeps_urine_glucose_unmapped():
    assert make_lab_result("GLU", 99, "mg/dL", loinc="2345-7").code == "glucose"
    urine = make_lab_result("Glucose", 1.4, "g/dL", fluid="Urine")
    assert urine.code is None and urine.unit == "g/dL" and urine.value == 1.4


def test_missing_unit_is_taken_as_canonical_and_noted():
    report = ImportReport("t")
    r = make_lab_result("INR(PT)", "1.3", None, report=report)
    assert r.unit == "{INR}" and r.value == 1.3
    assert report.notes["no unit given, {INR} assumed for inr"] == 1


@pytest.mark.parametrize("flag, code", [("abnormal", "A"), ("high", "H"), ("critical high", "HH"), ("L", "L"),
                                        ("Critical Low", "LL"), ("normal", "N"), ("panic", "AA"), ("", None)])
def test_flags_map_to_hl7_codes(flag, code):
    assert map_flag(flag) == code


def test_unknown_flag_is_dropped_but_result_kept():
    report = ImportReport("t")
    r = make_lab_result("Sodium", 150, "mmol/L", flag="delta", report=report)
    assert r is not None and r.flag is None and report.notes["unknown lab flag dropped"] == 1


def test_times_with_offsets_become_naive_utc():
    r = make_lab_result("Sodium", 140, None, time="2024-01-02T03:04:05+02:00")
    assert r.time == dt.datetime(2024, 1, 2, 1, 4, 5)


@pytest.mark.parametrize("text, expected", [
    ("2024-03-01 08:10", dt.datetime(2024, 3, 1, 8, 10)),
    ("13/03/2024 08:10", dt.datetime(2024, 3, 13, 8, 10)),  # day first: 13 cannot be a month
    ("03/13/2024", dt.datetime(2024, 3, 13)),  # month first
    ("01.03.2024", dt.datetime(2024, 3, 1)),  # dotted dates are day first
    ("01/03/2024", None),  # 1 March or 3 January: never guessed
])
def test_local_date_spellings_are_read_only_when_unambiguous(text, expected):
    report = ImportReport("t")
    r = make_lab_result("Sodium", 140, "mmol/L", time=text, report=report)
    assert r.time == expected
    assert report.notes.get("unreadable or ambiguous lab time dropped", 0) == (expected is None)


def test_dedupe_drops_exact_duplicates_only():
    report = ImportReport("t")
    t = dt.datetime(2024, 1, 1, 8)
    a = make_lab_result("Creatinine", 1.0, "mg/dL", time=t)
    same_in_other_unit = make_lab_result("creat", 88.4, "umol/L", time=t)  # also 1.0 mg/dL after conversion
    later = make_lab_result("Creatinine", 1.0, "mg/dL", time=t + dt.timedelta(hours=6))
    kept = dedupe_labs([a, a.model_copy(), later], report)
    assert kept == [a, later] and report.skipped["duplicate lab result (same test, time and value)"] == 1
    assert math.isclose(same_in_other_unit.value, 1.0, rel_tol=1e-3)


def test_parse_range():
    assert parse_range("3.5-5.1") == (3.5, 5.1)
    assert parse_range("<125") == (None, 125.0)
    assert parse_range("negative") == (None, None)


# ---------------------------------------------------------------- CSV importer

def test_csv_groups_rows_into_cases_and_counts_every_odd_item():
    report = ImportReport("labs-csv")
    cases = {c.case_id: c for c in import_labs_csv([LONG], report)}
    assert sorted(cases) == ["enc-001", "enc-002"]  # enc-003 has only a pending text value
    enc1 = cases["enc-001"]
    assert enc1.patient_id == "pt-01" and enc1.demographics.age == 67 and enc1.demographics.sex == "F"
    assert enc1.time == dt.datetime(2024, 3, 1, 8, 10)
    by_name = {(r.name, r.code): r for r in enc1.labs}
    assert by_name[("Glucose", "glucose")].value == pytest.approx(7.8 * 18.016)
    assert by_name[("Troponin T", "troponin_t")].censored == "<"
    assert by_name[("Ferritin", None)].unit == "ng/mL"  # unmapped test kept as given
    assert ("Glucose", None) in by_name  # urine glucose: fluid keeps it off the blood test
    assert [r.code for r in enc1.labs].count("creatinine") == 1
    enc2 = {r.code: r for r in cases["enc-002"].labs}
    assert enc2["wbc"].flag == "HH" and enc2["crp"].value == 12.5
    assert report.skipped == {
        "text lab value": 3, "NaN lab value": 1, "negative value for sodium": 1,
        "unknown unit for hemoglobin": 1, "duplicate lab result (same test, time and value)": 1,
        "case with no usable lab result": 1,
    }


def test_csv_with_mapping_file_and_combined_range():
    report = ImportReport("labs-csv")
    mapping = LabsCsvMapping.from_options([], EXPORT_MAP)
    cases = {c.case_id: c for c in import_labs_csv([EXPORT], report, mapping)}
    a17 = {r.code: r for r in cases["A-17"].labs}
    assert a17["creatinine"].source_unit == "umol/L"  # 'µmol/L' spelled with the micro sign
    assert a17["creatinine"].value == pytest.approx(97 * 0.011312)
    assert a17["creatinine"].ref_high == pytest.approx(90 * 0.011312)
    assert a17["hba1c"].value == pytest.approx(48 * 0.09148 + 2.152)
    assert a17["nt_probnp"].censored == ">" and a17["nt_probnp"].ref_high == 125 and a17["nt_probnp"].ref_low is None
    k = cases["B-02"].labs[0]
    assert (k.code, k.value, k.ref_low, k.ref_high) == ("potassium", 4.1, 3.5, 5.1)


def test_cli_imports_with_map_options_and_prints_counts(tmp_path, capsys):
    out = tmp_path / "cohort"
    code, stdout, _ = run_cli(capsys, "import", "labs-csv", str(EXPORT), "--out", str(out), "--json",
                              "--map", "case_id=Encounter", "--map", "name=Test", "--map", "value=Result",
                              "--map", "unit=Units", "--map", "ref_range=Reference", "--map", "time=Collected")
    assert code == 0
    summary = json.loads(stdout)
    assert summary["cases_written"] == 2
    assert summary["notes"]["unit converted umol/L -> mg/dL (creatinine)"] == 1
    assert sorted(read_index(out)["case_id"]) == ["A-17", "B-02"]
    case = read_case(out / "A-17")
    assert {r.code for r in case.labs} == {"hba1c", "creatinine", "nt_probnp"}


def test_cli_missing_column_is_one_line_error_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "cohort"
    code, _, err = run_cli(capsys, "import", "labs-csv", str(EXPORT), "--out", str(out))
    assert code == 2
    line = one_line_error(err, "lab_export.tsv")
    assert "case_id" in line and "--map" in line
    assert not out.exists()


def test_cli_mapped_column_that_does_not_exist_is_an_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "import", "labs-csv", str(LONG), "--out", str(tmp_path / "c"),
                           "--map", "unit=Units")
    assert code == 2 and "'Units'" in one_line_error(err, "labs_long.csv")


def test_cli_unknown_map_field_names_the_key(tmp_path, capsys):
    code, _, err = run_cli(capsys, "import", "labs-csv", str(LONG), "--out", str(tmp_path / "c"),
                           "--map", "result=Value")
    assert code == 2 and "'result'" in one_line_error(err, "--map")


@pytest.mark.parametrize("content, problem", [(b"", "empty file"), (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "binary"),
                                              (b'case_id,name,value\n"enc-1,Glucose,5\n', "malformed CSV")])
def test_cli_bad_csv_files(tmp_path, capsys, content, problem):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    code, _, err = run_cli(capsys, "import", "labs-csv", str(bad), "--out", str(tmp_path / "c"))
    assert code == 2 and problem in one_line_error(err, "bad.csv")
    assert not (tmp_path / "c").exists()


# ---------------------------------------------------------------- implausible values and malformed files

HEADER = "case_id,name,value,unit,loinc\n"


@pytest.mark.parametrize("row, problem", [
    ("c1,Glucose,1e308,mg/dL,2345-7", "line 3: glucose value above the plausible maximum of 5000 mg/dL"),
    ("c1,Glucose,600,mmol/L,2345-7", "line 3: glucose value above the plausible maximum"),  # checked after conversion
    ("c1,Potassium,inf,mmol/L,2823-3", "line 3: infinite value for lab test potassium"),
    ("c1,Ferritin,1e300,ng/mL,", "line 3: lab value beyond 1e+15"),  # not in the catalogue
])
def test_implausible_lab_value_stops_the_import_naming_file_and_line(tmp_path, capsys, row, problem):
    # Before: silently kept (glucose 1e308 reached the model) or skipped as if it were text.
    path = tmp_path / "labs.csv"
    path.write_text(HEADER + "c1,Sodium,140,mmol/L,2951-2\n" + row + "\n")
    code, _, err = run_cli(capsys, "import", "labs-csv", str(path), "--out", str(tmp_path / "out"))
    assert code == 2 and problem in one_line_error(err, str(path))
    assert not (tmp_path / "out").exists()
    code, stdout, _ = run_cli(capsys, "import", "labs-csv", str(path), "--out", str(tmp_path / "out"), "--skip-bad",
                              "--json")
    summary = json.loads(stdout)
    assert code == 0 and summary["skipped"]["implausible lab value"] == 1
    [skipped] = summary["skipped_files"]
    assert skipped["file"] == str(path) and problem in skipped["reason"]
    [case] = [read_case(f) for f in (tmp_path / "out").iterdir() if f.is_dir()]
    assert [r.code for r in case.labs] == ["sodium"]


def test_every_catalogue_test_has_a_plausible_maximum_above_its_critical_limit():
    from medfuse.knowledge.labs import load_lab_catalogue

    for entry in load_lab_catalogue():
        assert entry.plausible_max is not None, entry.key
        assert entry.plausible_max > max(v for v in (*entry.ref, *entry.critical) if v is not None), entry.key


@pytest.mark.parametrize("name, data, problem", [
    ("empty.csv", b"", "empty file"),
    ("junk.csv", bytes(range(256)) * 8, "binary content"),
    ("utf16.csv", (HEADER + "c1,Glucose,5.5,mmol/L,2345-7\n").encode("utf-16"), "binary content"),
    ("cols.csv", b"foo,bar\n1,2\n", "missing column(s)"),
    ("header.csv", HEADER.encode(), "no case imported"),
    ("notgz.csv.gz", b"plain text", "not a readable gzip file"),
])
def test_malformed_lab_files_are_one_line(tmp_path, capsys, name, data, problem):
    path = tmp_path / name
    path.write_bytes(data)
    code, _, err = run_cli(capsys, "import", "labs-csv", str(path), "--out", str(tmp_path / "out"))
    assert code == 2 and problem in one_line_error(err, name)
    assert not (tmp_path / "out").exists()


def test_skip_bad_skips_a_malformed_file_and_names_it(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"foo,bar\n1,2\n")
    code, stdout, _ = run_cli(capsys, "import", "labs-csv", str(LONG), str(bad), "--out", str(tmp_path / "out"),
                              "--skip-bad", "--json")
    summary = json.loads(stdout)
    assert code == 0 and summary["cases_written"] == 2 and summary["skipped"]["unreadable lab CSV file"] == 1
    [skipped] = summary["skipped_files"]
    assert skipped["file"] == str(bad) and skipped["reason"].startswith("missing column(s)")
