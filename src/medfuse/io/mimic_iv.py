"""MIMIC-IV (hosp module) importer: one `PatientCase` per hospital admission.

Reads the hosp tables of a MIMIC-IV release (the full database or the open demo), each
as `<name>.csv.gz` or `<name>.csv`:

- `admissions` + `patients`: one case per `hadm_id`; age = anchor_age + (admission year -
  anchor_year), sex from `gender`; `patient_id` = `subject_id`, so patient-level splits
  keep a patient's admissions together.
- `labevents` + `d_labitems`: the results drawn in a window after admission (default the
  first 24 h). A row belongs to an admission by its `hadm_id`, or, when `hadm_id` is
  empty (labs drawn outside an admission record, common in MIMIC), by `subject_id` and a
  `charttime` inside that admission's window. MIMIC's own `flag` ('abnormal' -> 'A') and
  `ref_range_lower/upper` are kept. labevents (100M+ rows in the full database) is read in
  chunks with only the needed columns; only in-window rows are held in memory.
- `diagnoses_icd`: every code kept in `labels.source_codes` ('ICD9:4280', 'ICD10:I5023'),
  and codes mapped to the disease panel (ICD-9 and ICD-10 prefixes) become diagnoses.

MIMIC-IV identifiers are already de-identified, so case ids are `mimic-<hadm_id>`.
"""

from __future__ import annotations

import datetime as dt
import gzip
import math
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medfuse.errors import ConfigError, InputError
from medfuse.io.base import ImportReport
from medfuse.knowledge.labs import LabCatalogue, load_lab_catalogue
from medfuse.knowledge.panel import Disease, Panel, load_panel, normalise_icd
from medfuse.record.case import Demographics, Diagnosis, LabResult, Labels, PatientCase

# Columns each table must have; other columns are ignored (and never read for labevents).
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "admissions": ("subject_id", "hadm_id", "admittime"),
    "patients": ("subject_id", "gender", "anchor_age", "anchor_year"),
    "labevents": ("subject_id", "hadm_id", "itemid", "charttime", "value", "valuenum", "valueuom",
                  "ref_range_lower", "ref_range_upper", "flag"),
    "d_labitems": ("itemid", "label"),
    "diagnoses_icd": ("hadm_id", "icd_code", "icd_version"),
}
# Read when present: labevent_id orders results stably, comments hold censored results
# ('<0.01' troponin is stored only in the comment), edregtime allows ED labs, fluid and
# loinc_code (MIMIC-IV < 2.0) refine the catalogue mapping.
OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "admissions": ("edregtime", "admission_type"),
    "labevents": ("labevent_id", "comments"),
    "d_labitems": ("fluid", "loinc_code"),
    "diagnoses_icd": ("seq_num",),
}
# Rows per labevents chunk: ~250 MB peak for a 200k-row chunk (text columns are Python
# strings); the full database's 118M rows stream through in ~600 chunks.
LAB_CHUNK_ROWS = 200_000

# A censored result written at the start of a comment, e.g. '<0.01.  cTropnT > 0.10 ...'.
_COMMENT_CENSORED = re.compile(r"^\s*(<=|>=|<|>)\s*(\d+(?:\.\d+)?)\s*\.?(?:\s|$)")


@dataclass(frozen=True)
class MimicTables:
    """The table files found under a MIMIC-IV root (the `hosp` folder or its parent)."""

    root: Path
    files: dict[str, Path]
    columns: dict[str, tuple[str, ...]]


def find_mimic_tables(root: str | Path) -> MimicTables:
    """Locate and check the hosp tables under `root` before anything is imported.

    `root` may be the release folder (holding `hosp/`) or the `hosp` folder itself.
    Raises `InputError` naming the missing file, or the file whose header lacks a column.
    """
    root = Path(root)
    if not root.exists():
        raise InputError(root, "MIMIC-IV folder not found")
    if not root.is_dir():
        raise InputError(root, "not a folder (give the MIMIC-IV release folder or its hosp/ folder)")
    hosp = root / "hosp" if (root / "hosp").is_dir() else root
    files: dict[str, Path] = {}
    columns: dict[str, tuple[str, ...]] = {}
    for table, required in REQUIRED_COLUMNS.items():
        path = next((p for p in (hosp / f"{table}.csv.gz", hosp / f"{table}.csv") if p.is_file()), None)
        if path is None:
            raise InputError(root, f"no hosp/{table}.csv.gz or hosp/{table}.csv (is this a MIMIC-IV folder?)")
        header = _read_header(path)
        missing = [c for c in required if c not in header]
        if missing:
            raise InputError(path, f"not a MIMIC-IV {table} table: missing column(s) {', '.join(missing)}")
        files[table] = path
        columns[table] = header
    return MimicTables(root=root, files=files, columns=columns)


def _read_header(path: Path) -> tuple[str, ...]:
    try:
        return tuple(pd.read_csv(path, nrows=0).columns)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise InputError(path, f"cannot read as CSV ({e.__class__.__name__})") from None
    except pd.errors.EmptyDataError:
        raise InputError(path, "empty file (no header row)") from None


def _read_table(tables: MimicTables, table: str, dtype: dict | None = None) -> pd.DataFrame:
    path = tables.files[table]
    wanted = REQUIRED_COLUMNS[table] + tuple(c for c in OPTIONAL_COLUMNS.get(table, ()) if c in tables.columns[table])
    try:
        return pd.read_csv(path, usecols=list(wanted), dtype=dtype, low_memory=False)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError,
            pd.errors.ParserError, ValueError) as e:
        raise InputError(path, f"cannot read as a MIMIC-IV {table} table ({e.__class__.__name__})") from None


def count_admissions(root: str | Path) -> int:
    """Number of admissions (cases) an import of `root` will consider (for progress bars)."""
    tables = find_mimic_tables(root)
    return int(_read_table(tables, "admissions", dtype={"hadm_id": "Int64"})["hadm_id"].notna().sum())


def import_mimic_iv(
    root: str | Path,
    report: ImportReport,
    window_hours: float = 24.0,
    panel: Panel | None = None,
    catalogue: LabCatalogue | None = None,
    limit: int | None = None,
    include_ed_labs: bool = False,
    skip_bad: bool = False,
) -> Iterator[PatientCase]:
    """Yield one `PatientCase` per MIMIC-IV admission under `root`.

    Labs are those charted from `admittime` to `admittime + window_hours` (inclusive);
    with `include_ed_labs` the window opens at the emergency-department registration
    (`edregtime`) when the admission has one, so the presentation labs drawn in the ED are
    kept. `limit` imports only the first N admissions (ordered by subject, then time).
    Every lab row inside a window ends up either in a case or counted in `report`.
    All tables are checked before the first case is yielded. An implausible lab value
    raises `InputError` naming labevents (with `skip_bad`: dropped and listed in `report`).
    """
    if not (isinstance(window_hours, (int, float)) and math.isfinite(window_hours) and window_hours > 0):
        raise ConfigError(f"window_hours: must be a positive number of hours, got {window_hours!r}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit: must be at least 1, got {limit!r}")
    panel = panel or load_panel()
    # Loaded once here: make_lab_result would otherwise load it again for every row.
    catalogue = catalogue or load_lab_catalogue()
    tables = find_mimic_tables(root)

    admissions = _load_admissions(tables, report, window_hours, include_ed_labs)
    if limit is not None:
        admissions = admissions.iloc[:limit]
    patients = _load_patients(tables, report)
    diagnoses = _load_diagnoses(tables, set(admissions["hadm_id"]))
    labitems = _load_labitems(tables)
    labs_by_hadm = _collect_labs(tables, admissions, report)

    from medfuse.io.labs_common import make_lab_result

    icd_memo: dict[tuple[str, int], tuple[Disease, ...]] = {}
    provenance_base = {
        "importer": "mimic_iv",
        "source": "MIMIC-IV hosp",
        "window_hours": float(window_hours),
        "window_start": "edregtime" if include_ed_labs else "admittime",
    }
    for adm in admissions.itertuples(index=False):
        patient = patients.get(int(adm.subject_id))
        if patient is None:
            report.skip("admission without a patients row")
            continue
        case = PatientCase(
            case_id=f"mimic-{int(adm.hadm_id)}",
            patient_id=str(int(adm.subject_id)),
            time=adm.admittime.to_pydatetime(),
            demographics=_demographics(patient, adm.admittime),
            labs=_lab_results(labs_by_hadm.get(int(adm.hadm_id)), labitems, report, catalogue, make_lab_result,
                              tables.files["labevents"], skip_bad),
            labels=_labels(diagnoses.get(int(adm.hadm_id)), panel, report, icd_memo),
            provenance={
                **provenance_base,
                "hadm_id": int(adm.hadm_id),
                **({"admission_type": str(adm.admission_type)}
                   if "admission_type" in admissions.columns and isinstance(adm.admission_type, str) else {}),
            },
        )
        yield case


# ---------------------------------------------------------------- tables

def _load_admissions(tables: MimicTables, report: ImportReport, window_hours: float,
                     include_ed_labs: bool) -> pd.DataFrame:
    adm = _read_table(tables, "admissions", dtype={"subject_id": "Int64", "hadm_id": "Int64"})
    adm["admittime"] = pd.to_datetime(adm["admittime"], errors="coerce", format="ISO8601")
    bad = adm["hadm_id"].isna() | adm["subject_id"].isna() | adm["admittime"].isna()
    if bad.any():
        report.skip("admission without hadm_id, subject_id or a valid admittime", int(bad.sum()))
    adm = adm[~bad].copy()
    dup = adm["hadm_id"].duplicated()
    if dup.any():
        report.skip("duplicate admission row (same hadm_id)", int(dup.sum()))
        adm = adm[~dup]
    adm["win_start"] = adm["admittime"]
    if include_ed_labs and "edregtime" in adm.columns:
        ed = pd.to_datetime(adm["edregtime"], errors="coerce", format="ISO8601")
        adm["win_start"] = ed.where(ed.notna() & (ed < adm["admittime"]), adm["admittime"])
    if len(adm):
        # pandas timestamps end in 2262 and MIMIC's shifted dates reach the 2210s: a very
        # long window (e.g. "all labs") is clipped there instead of overflowing.
        room_hours = (pd.Timestamp.max - adm["admittime"].max()).total_seconds() / 3600.0
        window_hours = min(window_hours, room_hours)
    adm["win_end"] = adm["admittime"] + pd.Timedelta(hours=window_hours)
    return adm.sort_values(["subject_id", "admittime", "hadm_id"]).reset_index(drop=True)


def _load_patients(tables: MimicTables, report: ImportReport) -> dict[int, tuple[str | None, float | None, int | None]]:
    pat = _read_table(tables, "patients", dtype={"subject_id": "Int64"})
    pat = pat[pat["subject_id"].notna()].drop_duplicates("subject_id")
    out: dict[int, tuple[str | None, float | None, int | None]] = {}
    pat = pat.assign(anchor_age=pd.to_numeric(pat["anchor_age"], errors="coerce"),
                     anchor_year=pd.to_numeric(pat["anchor_year"], errors="coerce"))
    for row in pat.itertuples(index=False):
        age, year = row.anchor_age, row.anchor_year
        out[int(row.subject_id)] = (
            row.gender if isinstance(row.gender, str) else None,
            None if pd.isna(age) else float(age),
            None if pd.isna(year) else int(year),
        )
    return out


def _load_diagnoses(tables: MimicTables, hadm_ids: set[int]) -> dict[int, pd.DataFrame]:
    dx = _read_table(tables, "diagnoses_icd", dtype={"hadm_id": "Int64", "icd_code": str})
    dx = dx[dx["hadm_id"].isin(hadm_ids)].copy()
    dx["icd_version"] = pd.to_numeric(dx["icd_version"], errors="coerce")
    if "seq_num" in dx.columns:
        dx = dx.sort_values(["hadm_id", "seq_num"], kind="stable")
    return {int(h): g for h, g in dx.groupby("hadm_id", sort=False)}


def _load_labitems(tables: MimicTables) -> dict[int, tuple[str, str | None, str | None]]:
    items = _read_table(tables, "d_labitems", dtype={"itemid": "Int64"})
    out: dict[int, tuple[str, str | None, str | None]] = {}
    for row in items.itertuples(index=False):
        if pd.isna(row.itemid) or not isinstance(row.label, str) or not row.label.strip():
            continue
        fluid = getattr(row, "fluid", None)
        loinc = getattr(row, "loinc_code", None)
        out[int(row.itemid)] = (row.label.strip(), fluid if isinstance(fluid, str) else None,
                                loinc.strip() if isinstance(loinc, str) and loinc.strip() else None)
    return out


def _collect_labs(tables: MimicTables, admissions: pd.DataFrame, report: ImportReport) -> dict[int, pd.DataFrame]:
    """The in-window lab rows of every admission, read from labevents chunk by chunk."""
    path = tables.files["labevents"]
    header = tables.columns["labevents"]
    usecols = list(REQUIRED_COLUMNS["labevents"]) + [c for c in OPTIONAL_COLUMNS["labevents"] if c in header]
    dtype = {
        # float64, not the nullable Int64: pandas parses Int64 columns several times slower,
        # and ids stay exact as floats (all are far below 2**53).
        "subject_id": "float64", "hadm_id": "float64", "itemid": "float64", "labevent_id": "float64",
        "value": str, "valueuom": str, "flag": str, "comments": str, "charttime": str,
        "valuenum": "float64", "ref_range_lower": "float64", "ref_range_upper": "float64",
    }
    windows = admissions[["subject_id", "hadm_id", "admittime", "win_start", "win_end"]].astype(
        {"subject_id": "float64", "hadm_id": "float64"})
    by_hadm = windows.set_index("hadm_id")
    kept: list[pd.DataFrame] = []
    try:
        reader = pd.read_csv(path, usecols=usecols, dtype={k: v for k, v in dtype.items() if k in usecols},
                             chunksize=LAB_CHUNK_ROWS)
        for chunk in reader:
            kept.extend(_labs_in_windows(chunk, windows, by_hadm, report))
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError,
            pd.errors.ParserError, ValueError) as e:
        raise InputError(path, f"cannot read as a MIMIC-IV labevents table ({e.__class__.__name__})") from None
    if not kept:
        return {}
    labs = pd.concat(kept, ignore_index=True)
    order = ["hadm_id", "charttime"] + (["labevent_id"] if "labevent_id" in labs.columns else [])
    labs = labs.sort_values(order, kind="stable")
    return {int(h): g for h, g in labs.groupby("hadm_id", sort=False)}


def _labs_in_windows(chunk: pd.DataFrame, windows: pd.DataFrame, by_hadm: pd.DataFrame,
                     report: ImportReport) -> list[pd.DataFrame]:
    chunk = chunk.copy()
    chunk["charttime"] = pd.to_datetime(chunk["charttime"], errors="coerce", format="ISO8601")
    out: list[pd.DataFrame] = []

    # Rows that name their admission: keep those inside its window.
    linked = chunk[chunk["hadm_id"].isin(by_hadm.index)]
    if len(linked):
        w = by_hadm.loc[linked["hadm_id"].to_numpy()]
        start, end = w["win_start"].to_numpy(), w["win_end"].to_numpy()
        t = linked["charttime"].to_numpy()
        no_time = linked["charttime"].isna().to_numpy()
        if no_time.any():
            report.skip("lab result without a valid charttime", int(no_time.sum()))
        out.append(linked[(t >= start) & (t <= end) & ~no_time])

    # Rows with no hadm_id: attach to the subject's admission whose window holds the time;
    # if windows overlap, the most recent admission (latest admittime) takes the row.
    free = chunk[chunk["hadm_id"].isna() & chunk["subject_id"].isin(windows["subject_id"])
                 & chunk["charttime"].notna()]
    if len(free):
        free = free.drop(columns=["hadm_id"]).reset_index(names="_row")
        m = free.merge(windows, on="subject_id", how="inner")
        m = m[(m["charttime"] >= m["win_start"]) & (m["charttime"] <= m["win_end"])]
        if len(m):
            m = m.sort_values(["_row", "admittime"]).drop_duplicates("_row", keep="last")
            out.append(m.drop(columns=["_row", "admittime", "win_start", "win_end"])[chunk.columns])
    return [o for o in out if len(o)]


# ---------------------------------------------------------------- case parts

def _demographics(patient: tuple[str | None, float | None, int | None], admittime: pd.Timestamp) -> Demographics:
    gender, anchor_age, anchor_year = patient
    age = None
    if anchor_age is not None and anchor_year is not None:
        # MIMIC shifts each patient's dates by a fixed offset; anchor_age is the age in
        # anchor_year, so the admission year's distance from it gives the age then.
        age = anchor_age + (admittime.year - anchor_year)
        age = min(max(age, 0.0), 130.0)
    sex = {"M": "M", "F": "F"}.get((gender or "").strip().upper(), "U" if gender else None)
    return Demographics(age=age, sex=sex)


def _raw_value(row) -> tuple[object, bool]:
    """The result as MIMIC holds it: valuenum when parsed, else the text, else a censored
    bound written at the start of the comment. Returns (value, taken_from_comment)."""
    text = row.value.strip() if isinstance(row.value, str) else ""
    if text.startswith(("<", ">")):
        return text, False  # keep the comparator: '<0.5' is censored, not 0.5
    if row.valuenum is not None and not (isinstance(row.valuenum, float) and math.isnan(row.valuenum)):
        # valuenum is set even where `value` is masked ('___') by de-identification.
        return float(row.valuenum), False
    if text:
        return text, False
    comment = getattr(row, "comments", None)
    if isinstance(comment, str):
        m = _COMMENT_CENSORED.match(comment)
        if m:
            return f"{m.group(1)}{m.group(2)}", True
    return None, False


def _lab_results(rows: pd.DataFrame | None, labitems: dict[int, tuple[str, str | None, str | None]],
                 report: ImportReport, catalogue: LabCatalogue | None, make_lab_result, source: Path,
                 skip_bad: bool) -> list[LabResult]:
    if rows is None or not len(rows):
        return []
    results: list[LabResult] = []
    seen: set[tuple] = set()
    for row in rows.itertuples(index=False):
        item = labitems.get(int(row.itemid)) if not pd.isna(row.itemid) else None
        if item is None:
            report.skip("lab itemid not in d_labitems")
            continue
        label, fluid, loinc = item
        raw, from_comment = _raw_value(row)
        if raw is None:
            report.skip("lab result with no value (qualitative result only in comments)")
            continue
        key = (int(row.itemid), row.charttime, raw)
        if key in seen:
            report.skip("duplicate lab result (same test, time and value)")
            continue
        seen.add(key)
        if from_comment:
            report.note("censored lab value taken from the comment")
        result = make_lab_result(
            label,
            raw,
            row.valueuom if isinstance(row.valueuom, str) else None,
            loinc=loinc,
            ref_low=_num(row.ref_range_lower),
            ref_high=_num(row.ref_range_upper),
            flag=row.flag if isinstance(row.flag, str) else None,  # 'abnormal' -> 'A'
            time=_py_time(row.charttime),
            fluid=fluid,
            report=report,
            catalogue=catalogue,
            source=source,
            where="a labevents row",
            skip_bad=skip_bad,
        )
        if result is not None:
            results.append(result)
    return results


def _num(x) -> float | None:
    return None if x is None or pd.isna(x) else float(x)


def _py_time(t) -> dt.datetime | None:
    return None if t is None or pd.isna(t) else pd.Timestamp(t).to_pydatetime()


def _panel_diseases(panel: Panel, code: str, version: int) -> tuple[Disease, ...]:
    """Every panel disease an ICD code belongs to, the best (longest-prefix) match first.

    Combination codes name two diseases: I11.0 / 402.01 'hypertensive heart disease with
    heart failure' is heart failure by its longest prefix and hypertension by I11 / 402,
    and the admission has both.
    """
    best = panel.match_icd(code, version)
    if best is None:
        return ()
    others = tuple(d for d in panel if d is not best and any(
        code.startswith(normalise_icd(p)) for p in (d.icd10 if version == 10 else d.icd9)))
    return (best, *others)


def _labels(dx: pd.DataFrame | None, panel: Panel, report: ImportReport,
            memo: dict[tuple[str, int], tuple[Disease, ...]]) -> Labels | None:
    """Panel diagnoses (first code per disease, in MIMIC's priority order) and all codes."""
    if dx is None or not len(dx):
        return None  # no coded diagnoses: unknown, which is not the same as "no disease"
    diagnoses: list[Diagnosis] = []
    codes: list[str] = []
    matched: set[str] = set()
    for row in dx.itertuples(index=False):
        code = row.icd_code.strip().replace(".", "").upper() if isinstance(row.icd_code, str) else ""
        version = row.icd_version
        if not code or version not in (9, 10):
            report.skip("diagnosis row without an ICD code or with an ICD version other than 9/10")
            continue
        version = int(version)
        tagged = f"ICD{version}:{code}"
        if tagged in codes:
            continue
        codes.append(tagged)
        if (code, version) not in memo:  # a few thousand distinct codes, millions of rows
            memo[(code, version)] = _panel_diseases(panel, code, version)
        for disease in memo[(code, version)]:
            if disease.key not in matched:
                matched.add(disease.key)
                diagnoses.append(Diagnosis(name=disease.name, icd10=code if version == 10 else None,
                                           icd9=code if version == 9 else None, in_panel=True))
    return Labels(diagnoses=diagnoses, source_codes=codes)


__all__ = ["MimicTables", "count_admissions", "find_mimic_tables", "import_mimic_iv"]
