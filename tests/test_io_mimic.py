"""MIMIC-IV importer on the real MIMIC-IV Clinical Database Demo v2.2.

The five hosp tables in tests/fixtures/mimic-iv-demo are the unmodified PhysioNet files
(ODbL, see SOURCE.txt there). Expected values are recomputed here with plain pandas,
independently of the importer's code path.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from medfuse.cli import main
from medfuse.errors import ConfigError, InputError
from medfuse.io.base import ImportReport
from medfuse.io.mimic_iv import import_mimic_iv
from medfuse.knowledge.panel import load_panel, normalise_icd
from medfuse.record.store import read_case, read_index

DEMO = Path(__file__).parent / "fixtures" / "mimic-iv-demo"
HOSP = DEMO / "hosp"
LAB_SKIP_REASONS = ("lab", "duplicate lab result", "text lab value", "empty lab value", "NaN", "negative value", "unknown unit",
                    "ambiguous decimal comma")


@pytest.fixture(scope="module")
def demo_import():
    report = ImportReport(source="mimic-iv")
    cases = list(import_mimic_iv(DEMO, report))
    return cases, report


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    adm = pd.read_csv(HOSP / "admissions.csv.gz", parse_dates=["admittime"])
    labs = pd.read_csv(HOSP / "labevents.csv.gz", parse_dates=["charttime"], low_memory=False)
    items = pd.read_csv(HOSP / "d_labitems.csv.gz")
    dx = pd.read_csv(HOSP / "diagnoses_icd.csv.gz", dtype={"icd_code": str})
    pat = pd.read_csv(HOSP / "patients.csv.gz")
    return {"admissions": adm, "labevents": labs.merge(items, on="itemid", how="left"), "diagnoses": dx,
            "patients": pat}


def _labs_in_window(t: dict[str, pd.DataFrame], hours: float) -> pd.DataFrame:
    """labevents rows inside [admittime, admittime + hours], assigned to an admission:
    by hadm_id, or for rows without one by subject_id (latest admission wins)."""
    adm = t["admissions"][["subject_id", "hadm_id", "admittime"]]
    labs = t["labevents"]
    linked = labs[labs.hadm_id.notna()].merge(adm[["hadm_id", "admittime"]], on="hadm_id")
    free = labs[labs.hadm_id.isna()].drop(columns="hadm_id").merge(adm, on="subject_id")
    both = pd.concat([linked, free], ignore_index=True)
    end = both.admittime + pd.Timedelta(hours=hours)
    both = both[(both.charttime >= both.admittime) & (both.charttime <= end)]
    both = both.sort_values("admittime").drop_duplicates("labevent_id", keep="last")
    return both


def _panel_counts(t: dict[str, pd.DataFrame]) -> Counter:
    """Admissions per panel disease, by ICD prefix matching done directly in pandas."""
    dx = t["diagnoses"]
    code = dx.icd_code.str.replace(".", "", regex=False).str.strip().str.upper()
    counts: Counter = Counter()
    for disease in load_panel():
        hit = pd.Series(False, index=dx.index)
        for version, prefixes in ((9, disease.icd9), (10, disease.icd10)):
            for p in prefixes:
                hit |= (dx.icd_version == version) & code.str.startswith(normalise_icd(p))
        counts[disease.name] = dx.loc[hit, "hadm_id"].nunique()
    return counts


# ---------------------------------------------------------------- the whole demo


def test_whole_demo_gives_one_case_per_admission(demo_import, tables):
    cases, _ = demo_import
    assert len(cases) == 275
    assert {c.case_id for c in cases} == {f"mimic-{h}" for h in tables["admissions"].hadm_id}
    assert len({c.patient_id for c in cases}) == 100  # subject_id: patient-level splits keep admissions together
    by_id = {c.case_id: c for c in cases}
    adm = tables["admissions"].merge(tables["patients"], on="subject_id")
    for row in adm.sample(20, random_state=0).itertuples():
        case = by_id[f"mimic-{row.hadm_id}"]
        assert case.patient_id == str(row.subject_id)
        assert case.time == row.admittime.to_pydatetime()
        assert case.demographics.age == row.anchor_age + (row.admittime.year - row.anchor_year)
        assert case.demographics.sex == row.gender


def test_every_in_window_lab_row_is_kept_or_counted(demo_import, tables):
    cases, report = demo_import
    expected = _labs_in_window(tables, 24.0)
    kept = sum(len(c.labs) for c in cases)
    lab_skips = sum(n for reason, n in report.skipped.items() if reason.startswith(LAB_SKIP_REASONS))
    assert kept + lab_skips == len(expected)
    assert report.skipped["text lab value"] > 0  # 'ART.', 'NEG', ... are counted, not silently lost
    # Rows with no hadm_id are matched by subject and time: some of them land in cases.
    unlinked = tables["labevents"].loc[tables["labevents"].hadm_id.isna(), "labevent_id"]
    assert expected.labevent_id.isin(unlinked).sum() > 0


def test_mimic_flags_and_reference_ranges_are_preserved(demo_import, tables):
    cases, _ = demo_import
    rows = _labs_in_window(tables, 24.0)
    rows = rows[rows.valuenum.notna()]
    source = {(int(r.hadm_id), r.label, r.charttime.to_pydatetime(), float(r.valuenum)):
              (r.flag, r.ref_range_lower, r.ref_range_upper) for r in rows.itertuples()}
    checked = flagged = 0
    for case in cases:
        hadm = int(case.case_id.removeprefix("mimic-"))
        for lab in case.labs:
            if lab.censored:
                continue
            value = lab.source_value if lab.source_value is not None else lab.value
            flag, low, high = source[(hadm, lab.name, lab.time, value)]
            assert (lab.flag == "A") == (flag == "abnormal")
            assert (lab.ref_low, lab.ref_high) == (None if pd.isna(low) else low, None if pd.isna(high) else high)
            checked += 1
            flagged += lab.flag == "A"
    assert checked > 14000 and flagged > 5000


def test_labs_stay_inside_the_window(demo_import, tables):
    cases_24, _ = demo_import
    report = ImportReport(source="mimic-iv")
    cases_6 = list(import_mimic_iv(DEMO, report, window_hours=6, limit=60))
    for case in cases_6:
        for lab in case.labs:
            assert case.time <= lab.time <= case.time + pd.Timedelta(hours=6)
    for case in cases_24:
        for lab in case.labs:
            assert case.time <= lab.time <= case.time + pd.Timedelta(hours=24)
    by_id = {c.case_id: c for c in cases_24}
    assert sum(len(c.labs) for c in cases_6) < sum(len(by_id[c.case_id].labs) for c in cases_6)


def test_ed_labs_open_the_window_at_ed_registration(tables):
    report = ImportReport(source="mimic-iv")
    cases = list(import_mimic_iv(DEMO, report, include_ed_labs=True, limit=40))
    adm = tables["admissions"].set_index("hadm_id")
    before_admission = 0
    for case in cases:
        edreg = pd.to_datetime(adm.loc[int(case.case_id.removeprefix("mimic-")), "edregtime"])
        start = min(edreg, case.time) if pd.notna(edreg) else case.time
        for lab in case.labs:
            assert start <= lab.time <= case.time + pd.Timedelta(hours=24)
            before_admission += lab.time < case.time
    assert before_admission > 0


def test_icd9_and_icd10_map_to_the_panel_and_all_codes_are_kept(demo_import, tables):
    cases, _ = demo_import
    counts = Counter(name for c in cases for name in c.labels.disease_names())
    assert counts == _panel_counts(tables)
    assert counts["hypertension"] > 100 and counts["heart failure"] > 30  # sane for an inpatient cohort
    versions = Counter((d.name, "icd9" if d.icd9 else "icd10") for c in cases for d in c.labels.diagnoses)
    for disease in ("hypertension", "atrial fibrillation", "heart failure", "diabetes mellitus"):
        assert versions[(disease, "icd9")] > 0 and versions[(disease, "icd10")] > 0
    dx = tables["diagnoses"]
    for case in cases[:50]:
        hadm = int(case.case_id.removeprefix("mimic-"))
        rows = dx[dx.hadm_id == hadm]
        assert set(case.labels.source_codes) == {f"ICD{v}:{c}" for c, v in zip(rows.icd_code, rows.icd_version)}


def test_censored_troponin_is_read_from_the_comment(demo_import):
    cases, report = demo_import
    troponins = [lab for c in cases for lab in c.labs if lab.code == "troponin_t"]
    censored = [t for t in troponins if t.censored]
    assert censored and all(t.censored == "<" and t.value == 0.01 for t in censored)
    assert report.notes["censored lab value taken from the comment"] >= len(censored)


# ---------------------------------------------------------------- CLI


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_writes_the_cohort_and_prints_per_disease_counts(tmp_path, capsys, tables):
    out = tmp_path / "cohort"
    code, stdout, _ = _cli(["import", "mimic-iv", str(DEMO), "--out", str(out), "--json"], capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["cases_written"] == 275
    assert summary["per_disease"] == dict(_panel_counts(tables))
    assert len(read_index(out)) == 275
    case = read_case(out / "mimic-22595853")
    assert case.labs and case.labels.source_codes and case.provenance["window_hours"] == 24.0
    # A second run without --overwrite adds nothing and says why.
    code, stdout, _ = _cli(["import", "mimic-iv", str(DEMO), "--out", str(out), "--json", "--limit", "3"], capsys)
    assert code == 0 and json.loads(stdout)["skipped"]["case already in the cohort (use --overwrite)"] == 3


def test_plain_csv_tables_import_like_gzip(tmp_path, capsys, demo_import):
    hosp = tmp_path / "mimic" / "hosp"
    hosp.mkdir(parents=True)
    for f in HOSP.glob("*.csv.gz"):
        with gzip.open(f, "rb") as src, open(hosp / f.name.removesuffix(".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    a = list(import_mimic_iv(hosp, ImportReport("mimic-iv"), limit=5))  # the hosp folder itself works too
    b = demo_import[0][:5]
    assert [c.model_dump() for c in a] == [c.model_dump() for c in b]
    code, stdout, _ = _cli(["import", "mimic-iv", str(tmp_path / "mimic"), "--out", str(tmp_path / "c"),
                            "--limit", "4", "--window-hours", "12", "--json"], capsys)
    assert code == 0 and json.loads(stdout)["cases_written"] == 4


# ---------------------------------------------------------------- bad input


def _assert_one_line_error(code: int, err: str, *names: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("medfuse: error: ") and "Traceback" not in err
    for name in names:
        assert name in lines[0]


def _demo_copy(tmp_path: Path) -> Path:
    root = tmp_path / "mimic"
    shutil.copytree(DEMO / "hosp", root / "hosp")
    return root


def test_missing_folder_or_table_is_one_line_error(tmp_path, capsys):
    code, _, err = _cli(["import", "mimic-iv", str(tmp_path / "nope"), "--out", str(tmp_path / "c")], capsys)
    _assert_one_line_error(code, err, "nope", "not found")
    root = _demo_copy(tmp_path)
    (root / "hosp" / "labevents.csv.gz").unlink()
    code, _, err = _cli(["import", "mimic-iv", str(root), "--out", str(tmp_path / "c")], capsys)
    _assert_one_line_error(code, err, "labevents")
    assert not (tmp_path / "c").exists()


def test_table_without_a_needed_column_names_the_file(tmp_path, capsys):
    root = _demo_copy(tmp_path)
    adm = pd.read_csv(root / "hosp" / "admissions.csv.gz").drop(columns="admittime")
    (root / "hosp" / "admissions.csv.gz").unlink()
    adm.to_csv(root / "hosp" / "admissions.csv", index=False)
    code, _, err = _cli(["import", "mimic-iv", str(root), "--out", str(tmp_path / "c")], capsys)
    _assert_one_line_error(code, err, "admissions.csv", "admittime")


def test_truncated_labevents_fails_cleanly_and_writes_nothing(tmp_path, capsys):
    root = _demo_copy(tmp_path)
    lab = root / "hosp" / "labevents.csv.gz"
    lab.write_bytes(lab.read_bytes()[: 600_000])  # cut mid-stream: the header reads, the body does not
    out = tmp_path / "cohort"
    code, _, err = _cli(["import", "mimic-iv", str(root), "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "labevents.csv.gz")
    assert not out.exists()


def test_odd_rows_are_skipped_and_counted(tmp_path):
    root = _demo_copy(tmp_path)
    adm = pd.read_csv(root / "hosp" / "admissions.csv.gz")
    adm.loc[0, "admittime"] = "not a time"
    adm = pd.concat([adm, adm.iloc[[1]]])  # a duplicated admission row
    adm.to_csv(root / "hosp" / "admissions.csv.gz", index=False)
    first = adm.iloc[1:].sort_values(["subject_id", "admittime"]).hadm_id.iloc[0]  # the first case imported
    dx = pd.read_csv(root / "hosp" / "diagnoses_icd.csv.gz")
    dx.loc[dx.index[dx.hadm_id == first][0], "icd_version"] = 8
    dx.to_csv(root / "hosp" / "diagnoses_icd.csv.gz", index=False)
    report = ImportReport("mimic-iv")
    cases = list(import_mimic_iv(root, report, limit=3))
    assert len(cases) == 3 and cases[0].case_id == f"mimic-{first}"
    assert report.skipped["admission without hadm_id, subject_id or a valid admittime"] == 1
    assert report.skipped["duplicate admission row (same hadm_id)"] == 1
    assert report.skipped["diagnosis row without an ICD code or with an ICD version other than 9/10"] == 1


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="window_hours"):
        next(import_mimic_iv(DEMO, ImportReport("mimic-iv"), window_hours=0))
    with pytest.raises(ConfigError, match="limit"):
        next(import_mimic_iv(DEMO, ImportReport("mimic-iv"), limit=0))
    with pytest.raises(InputError, match="not a folder"):
        next(import_mimic_iv(HOSP / "patients.csv.gz", ImportReport("mimic-iv")))


def test_rows_without_hadm_id_go_to_the_admission_whose_window_holds_them(tmp_path):
    """Two admissions 10 h apart: a lab in both windows belongs to the later one; labs
    outside every window (or linked to an admission but outside its window) are left out."""
    hosp = tmp_path / "hosp"
    hosp.mkdir()
    pd.DataFrame({"subject_id": [1, 1], "hadm_id": [100, 200],
                  "admittime": ["2150-01-01 00:00:00", "2150-01-01 10:00:00"]}).to_csv(hosp / "admissions.csv", index=False)
    pd.DataFrame({"subject_id": [1], "gender": ["F"], "anchor_age": [60], "anchor_year": [2148]}).to_csv(
        hosp / "patients.csv", index=False)
    pd.DataFrame({"itemid": [50912], "label": ["Creatinine"], "fluid": ["Blood"]}).to_csv(
        hosp / "d_labitems.csv", index=False)
    pd.DataFrame({"subject_id": [1], "hadm_id": [100], "seq_num": [1], "icd_code": ["N179"],
                  "icd_version": [10]}).to_csv(hosp / "diagnoses_icd.csv", index=False)
    rows = [  # (hadm_id, charttime, value)
        (None, "2149-12-31 23:00:00", 1.0),  # before both admissions: dropped
        (None, "2150-01-01 05:00:00", 2.0),  # only in admission 100's window
        (None, "2150-01-01 12:00:00", 3.0),  # in both windows: the later admission (200) takes it
        (100, "2150-01-02 01:00:00", 4.0),  # linked to 100 but 25 h after its admission: dropped
        (100, "2150-01-01 23:00:00", 5.0),  # linked to 100, inside its window although 200 has begun
    ]
    pd.DataFrame({
        "labevent_id": range(len(rows)), "subject_id": 1, "hadm_id": [r[0] for r in rows], "itemid": 50912,
        "charttime": [r[1] for r in rows], "value": [str(r[2]) for r in rows], "valuenum": [r[2] for r in rows],
        "valueuom": "mg/dL", "ref_range_lower": 0.4, "ref_range_upper": 1.1, "flag": None, "comments": None,
    }).to_csv(hosp / "labevents.csv", index=False)
    cases = {c.case_id: c for c in import_mimic_iv(tmp_path, ImportReport("mimic-iv"))}
    assert [lab.value for lab in cases["mimic-100"].labs] == [2.0, 5.0]
    assert [lab.value for lab in cases["mimic-200"].labs] == [3.0]
    assert cases["mimic-100"].demographics.age == 62 and cases["mimic-100"].labels.disease_names() == [
        "acute renal failure"]
    assert cases["mimic-200"].labels is None  # no coded diagnoses: unknown, not "healthy"


def test_cli_rejects_a_non_positive_window_in_one_line(tmp_path, capsys):
    code, _, err = _cli(["import", "mimic-iv", str(DEMO), "--out", str(tmp_path / "c"), "--window-hours", "0"], capsys)
    _assert_one_line_error(code, err, "window_hours")
    assert not (tmp_path / "c").exists()


def test_chunked_labevents_reading_loses_nothing_at_chunk_borders(monkeypatch, demo_import):
    import medfuse.io.mimic_iv as mimic_iv

    monkeypatch.setattr(mimic_iv, "LAB_CHUNK_ROWS", 7_919)  # ~14 chunks over the demo's 107,727 rows
    small = list(import_mimic_iv(DEMO, ImportReport("mimic-iv"), limit=25))
    assert [c.model_dump() for c in small] == [c.model_dump() for c in demo_import[0][:25]]
