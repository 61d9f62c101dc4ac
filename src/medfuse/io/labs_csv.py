"""Long-format lab CSV (one row per result) -> one `PatientCase` per case id.

Lab systems and data warehouses export results as a long table: one row per test with
the case (encounter or patient) it belongs to, the test name, the value, its unit and,
often, a reference range, a flag, a time and a LOINC code. The column names differ in
every export, so they are given by a mapping from medfuse's field names to the file's
column names:

    case_id  name  value  unit  ref_low  ref_high  flag  time  loinc  fluid
    patient_id  age  sex  ref_range                        (optional extras)

The defaults are the field names themselves; override with `--map value=Result` or a
YAML file (`{value: Result, name: Test}`). `ref_range` reads a combined range column
('3.5-5.1', '<5', '>60'). Values, units and flags are parsed by
`medfuse.io.labs_common.make_lab_result`, so text values, censored results, unknown
units and negative values are handled (and counted) the same way in every importer.

All files are read before a case is yielded, so a malformed file stops the import
before anything is written; rows of one case id may be spread over several files.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from medfuse.errors import ConfigError, InputError
from medfuse.io.base import ImportReport, expand_paths, read_or_skip, read_source_bytes, safe_case_id
from medfuse.io.labs_common import dedupe_labs, make_lab_result, parse_number
from medfuse.knowledge.labs import LabCatalogue, load_lab_catalogue
from medfuse.record.case import Demographics, LabResult, PatientCase

FIELDS: tuple[str, ...] = (
    "case_id", "name", "value", "unit", "ref_low", "ref_high", "flag", "time", "loinc", "fluid",
    "patient_id", "age", "sex", "ref_range",
)
REQUIRED: tuple[str, ...] = ("case_id", "name", "value")
CSV_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz")
_SEX = {"m": "M", "male": "M", "man": "M", "男": "M", "f": "F", "female": "F", "woman": "F", "女": "F",
        "o": "O", "other": "O", "u": "U", "unknown": "U"}
# A combined range column: '3.5-5.1', '3.5 - 5.1', '3,5–5,1', '<5', '>= 60'.
_RANGE = re.compile(r"^\s*([+-]?[\d.,]+)\s*(?:-|–|—|to|\.\.)\s*([+-]?[\d.,]+)\s*$")
_ONE_SIDED = re.compile(r"^\s*(<=|>=|<|>|≤|≥)\s*([+-]?[\d.,]+)\s*$")


@dataclass(frozen=True)
class LabsCsvMapping:
    """Which file column holds each medfuse field. Fields mapped to a column the file
    lacks are simply absent, except the required ones (case_id, name, value)."""

    columns: dict[str, str] = field(default_factory=lambda: {f: f for f in FIELDS})
    explicit: frozenset[str] = frozenset()  # fields the user mapped: their column must exist

    @classmethod
    def from_options(cls, pairs: Iterable[str] = (), mapping_file: str | Path | None = None) -> LabsCsvMapping:
        """The default mapping updated by a YAML file and then by `field=column` pairs."""
        columns = {f: f for f in FIELDS}
        explicit: set[str] = set()
        if mapping_file is not None:
            from_file = _read_mapping_file(Path(mapping_file))
            columns.update(from_file)
            explicit.update(from_file)
        for pair in pairs:
            key, sep, column = pair.partition("=")
            if not sep or not key.strip() or not column.strip():
                raise ConfigError(f"--map {pair!r}: expected FIELD=COLUMN, e.g. value=Result")
            columns[_check_field(key.strip(), "--map")] = column.strip()
            explicit.add(key.strip())
        return cls(columns=columns, explicit=frozenset(explicit))


def _check_field(key: str, where: str) -> str:
    if key not in FIELDS:
        raise ConfigError(f"{where}: unknown field {key!r} (known: {', '.join(FIELDS)})")
    return key


def _read_mapping_file(path: Path) -> dict[str, str]:
    import yaml

    if not path.is_file():
        raise InputError(path, "mapping file not found")
    try:
        data = yaml.safe_load(path.read_text("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(path, f"invalid YAML ({e.__class__.__name__})") from None
    if isinstance(data, dict) and isinstance(data.get("columns"), dict):
        data = data["columns"]  # also accept {columns: {value: Result, ...}}
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise InputError(path, "a mapping file is a YAML mapping of field: column name")
    out = {}
    for k, v in data.items():
        if str(k) not in FIELDS:
            raise InputError(path, f"unknown field {k!r} (known: {', '.join(FIELDS)})")
        out[str(k)] = v
    return out


# ---------------------------------------------------------------- reading

def _read_text(path: Path, report: ImportReport) -> str:
    raw = read_source_bytes(path)
    if b"\x00" in raw[:4096]:
        raise InputError(path, "not a text CSV file (binary content)")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Windows lab exports are often cp1252 ('µmol/L' as 0xB5); cp1252 decodes almost any
        # byte, so this is a fallback, and counted.
        report.note("CSV read as cp1252 (not UTF-8)")
        return raw.decode("cp1252", errors="replace")


def _rows(path: Path, report: ImportReport) -> tuple[list[str], list[list[str]]]:
    """Header and data rows of a CSV/TSV file (separator sniffed among , ; tab |)."""
    text = _read_text(path, report)
    if not text.strip():
        raise InputError(path, "empty file")
    sample = text[:20000]
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel_tab if path.name.endswith((".tsv", ".tsv.gz")) else csv.excel
    # strict: an unterminated quote is an error, not a cell that swallows the rest of the file.
    reader = csv.reader(io.StringIO(text, newline=""), dialect, strict=True)
    try:
        header = [h.strip() for h in next(reader)]
        rows = list(reader)
    except csv.Error as e:
        raise InputError(path, f"malformed CSV at line {reader.line_num}: {e}") from None
    return header, rows


@dataclass
class _CaseRows:
    raw_id: str
    labs: list[LabResult] = field(default_factory=list)
    patient_id: str | None = None
    age: float | None = None
    sex: str | None = None
    files: set[str] = field(default_factory=set)


def find_lab_csv_files(paths: Iterable[str | Path]) -> list[Path]:
    """CSV/TSV files named by `paths` (folders searched for *.csv, *.tsv and gzipped ones)."""
    return expand_paths(paths, patterns=tuple(f"*{s}" for s in CSV_SUFFIXES if s != ".txt"))


def read_labs_csv(paths: Iterable[str | Path], report: ImportReport, mapping: LabsCsvMapping | None = None,
                  catalogue: LabCatalogue | None = None, skip_bad: bool = False) -> dict[str, _CaseRows]:
    """Read every file and group the results by case id (raw id -> rows). Raises
    `InputError` for an unreadable file, one that lacks a required column, or an
    implausible value (with `skip_bad`: the file or the value is skipped and listed)."""
    mapping = mapping or LabsCsvMapping()
    cat = catalogue or load_lab_catalogue()
    files = find_lab_csv_files(paths)
    if not files:
        raise InputError(next(iter(paths), None), "no CSV files found")
    cases: dict[str, _CaseRows] = {}
    for path in files:
        table = read_or_skip(report, skip_bad, "unreadable lab CSV file", _table, path, report, mapping)
        if table is None:
            continue
        header, rows, col = table
        for line_no, row in enumerate(rows, start=2):
            if not any(cell.strip() for cell in row):
                continue  # blank line
            if len(row) < len(header):
                row = row + [""] * (len(header) - len(row))
            elif len(row) > len(header):
                report.skip("CSV row with more cells than the header")
                continue

            def cell(f: str, row: list[str] = row) -> str:
                return row[col[f]].strip() if f in col else ""

            case_key = cell("case_id")
            if not case_key:
                report.skip("lab row without a case id")
                continue
            ref_low, ref_high = cell("ref_low") or None, cell("ref_high") or None
            if ref_low is None and ref_high is None and cell("ref_range"):
                ref_low, ref_high = parse_range(cell("ref_range"))
            result = make_lab_result(
                cell("name"), cell("value"), cell("unit") or None,
                loinc=cell("loinc") or None, ref_low=ref_low, ref_high=ref_high, flag=cell("flag") or None,
                time=cell("time") or None, fluid=cell("fluid") or None, report=report, catalogue=cat,
                source=path, where=f"line {line_no}", skip_bad=skip_bad,
            )
            entry = cases.get(case_key)
            if entry is None:
                entry = cases[case_key] = _CaseRows(raw_id=case_key)
            entry.files.add(path.name)
            _demographics_from_row(entry, cell, report)
            if result is not None:
                entry.labs.append(result)
    return cases


def _table(path: Path, report: ImportReport, mapping: LabsCsvMapping) -> tuple[list[str], list[list[str]], dict[str, int]]:
    """Header, rows and field -> column index of one CSV; `InputError` when a required
    column is missing."""
    header, rows = _rows(path, report)
    index = {name: i for i, name in enumerate(header)}
    needed = [*REQUIRED, *sorted(mapping.explicit - set(REQUIRED))]
    missing = [f"{f} (column {mapping.columns[f]!r})" for f in needed if mapping.columns[f] not in index]
    if missing:
        raise InputError(path, f"missing column(s): {', '.join(missing)}; map them with --map FIELD=COLUMN")
    return header, rows, {f: index[c] for f, c in mapping.columns.items() if c in index}


def parse_range(text: str) -> tuple[float | None, float | None]:
    """Low and high limits of a combined reference range text.

    >>> parse_range("3.5-5.1"), parse_range("<5"), parse_range(">= 60"), parse_range("3,5 - 5,1")
    ((3.5, 5.1), (None, 5.0), (60.0, None), (3.5, 5.1))
    """
    m = _RANGE.match(text)
    try:
        if m:
            return parse_number(m.group(1))[0], parse_number(m.group(2))[0]
        m = _ONE_SIDED.match(text)
        if m:
            bound = parse_number(m.group(2))[0]
            return (None, bound) if m.group(1) in ("<", "<=", "≤") else (bound, None)
    except ValueError:
        pass
    return None, None


def _demographics_from_row(entry: _CaseRows, cell, report: ImportReport) -> None:
    if entry.patient_id is None and cell("patient_id"):
        entry.patient_id = cell("patient_id")
    if entry.sex is None and cell("sex"):
        entry.sex = _SEX.get(cell("sex").lower())
        if entry.sex is None:
            report.skip("unrecognised sex value")
    if entry.age is None and cell("age"):
        try:
            age = parse_number(cell("age"))[0]
        except ValueError:
            age = -1.0
        if 0 <= age <= 130:
            entry.age = age
        else:
            report.skip("age not a number in 0-130")


def import_labs_csv(paths: Iterable[str | Path], report: ImportReport, mapping: LabsCsvMapping | None = None,
                    catalogue: LabCatalogue | None = None,
                    cases: Mapping[str, _CaseRows] | None = None) -> Iterator[PatientCase]:
    """One `PatientCase` per case id found in the lab CSV files, labs de-duplicated and
    the case time set to its earliest result. Pass `cases` from `read_labs_csv` to avoid
    reading the files twice."""
    if cases is None:
        cases = read_labs_csv(paths, report, mapping, catalogue)
    used: dict[str, str] = {}
    for raw_id, entry in cases.items():
        case_id = safe_case_id(raw_id)
        if used.get(case_id, raw_id) != raw_id:
            # Two raw ids that clean to the same folder name ('a/b', 'a b') must stay apart.
            case_id = f"{case_id}-{hashlib.sha256(raw_id.encode('utf-8')).hexdigest()[:8]}"
        used[case_id] = raw_id
        labs = dedupe_labs(entry.labs, report)
        if not labs:
            report.skip("case with no usable lab result")
            continue
        times = [r.time for r in labs if r.time is not None]
        yield PatientCase(
            case_id=case_id,
            patient_id=entry.patient_id,
            time=min(times) if times else None,
            demographics=Demographics(age=entry.age, sex=entry.sex),
            # Stable sort: results without a time keep their file order, after the timed ones.
            labs=sorted(labs, key=lambda r: (r.time is None, r.time or dt.datetime.min)),
            provenance={"importer": "labs_csv", "source_files": sorted(entry.files)},
        )


__all__ = ["FIELDS", "LabsCsvMapping", "find_lab_csv_files", "import_labs_csv", "parse_range", "read_labs_csv"]
