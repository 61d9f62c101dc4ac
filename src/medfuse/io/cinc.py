"""PhysioNet/CinC Challenge ECGs (WFDB `.hea` + `.mat`) -> labelled `PatientCase`s.

Three layouts, one importer:
- Challenge 2020/2021 12-lead records (CPSC 2018, Georgia, PTB-XL, Chapman/Ningbo ...):
  labels are the header's `#Dx:` line, SNOMED CT codes ('# Dx: 164889003,59118001');
- the early Challenge-2020 CPSC files, whose `#Dx:` holds the CPSC 2018 abbreviations
  ('#Dx: AF,RBBB');
- CinC 2017 single-lead AliveCor records, whose headers carry no label: the class
  (N, A, O, ~) comes from a labels CSV (the challenge's header-less `REFERENCE.csv`, or
  any CSV with `record` and `label` columns).

Samples are read by `medfuse.io.wfdb.read_wfdb` (same checks: data file present and as
long as the header says). CinC 2017 headers write their base date as '2014-05-01
11:05:48', which `wfdb` rejects; such a header is read from a copy whose record line is
rewritten to the WFDB form ('11:05:48 01/05/2014'), with errors still naming the original.

Labels go through `medfuse.knowledge.label_maps` (`snomed_ecg.yaml`): panel diagnoses
(AF, MI/ischaemia), ECG findings without boxes (ST elevation, bundle branch blocks ...),
the rhythm class (`provenance['rhythm']`), and unmapped codes kept as non-panel
diagnoses. The `#Dx:` line is removed from the ECG's stored header comments, since the
ECG is a model input and must not carry its own label.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from medfuse.errors import InputError
from medfuse.io.base import ImportReport, safe_case_id
from medfuse.io.wfdb import find_wfdb_records, read_wfdb
from medfuse.knowledge.label_maps import LabelMap, load_label_map, map_labels
from medfuse.knowledge.panel import Panel, load_panel
from medfuse.record.case import ECG, PatientCase

# Names under which a labels CSV sits beside the records (the CLI looks for them).
LABEL_FILES = ("labels.csv", "REFERENCE.csv")
_DX = re.compile(r"^\s*#?\s*dx\s*:\s*(.*?)\s*$", re.IGNORECASE)
# Record line with an ISO date ('A00001 1 300 9000 2014-05-01 11:05:48'), CinC 2017.
_ISO_RECORD_LINE = re.compile(r"^(?P<head>\S+\s+\d+\s+\S+\s+\d+)\s+(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})"
                              r"\s+(?P<time>\d{1,2}:\d{2}:\d{2}(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class CincLabelRow:
    """What a labels CSV says about one record."""

    label: str | None  # CinC 2017 class (N, A, O, ~), None when the CSV has no label column
    split: str | None  # 'dev', 'heldout', 'train' ... when the CSV has a split column


@dataclass(frozen=True)
class CincLabels:
    source: str  # the CSV's file name, for provenance
    rows: dict[str, CincLabelRow]  # record name -> row


def load_cinc_labels(path: str | Path, report: ImportReport) -> CincLabels:
    """A labels CSV: the challenge's `REFERENCE.csv` (no header: record, class) or a CSV
    with a `record` column and optional `label` and `split` columns.

    Raises `InputError` naming the file for a missing or unreadable file, or a header
    without a `record` column; a repeated record is skipped and counted.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, header=None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise InputError(path, f"cannot read CSV ({e.__class__.__name__})") from None
    first = [str(c).strip() for c in df.iloc[0]] if len(df) else []
    if "record" in first:
        df.columns = first
        df = df.iloc[1:]
    elif len(first) == 2 and not any(c.lower() in ("label", "class", "split") for c in first):
        df.columns = ["record", "label"]  # REFERENCE.csv: 'A00001,N'
    else:
        raise InputError(path, "labels CSV has no 'record' column (expected 'record' and 'label', or REFERENCE.csv)")
    has_label, has_split = "label" in df.columns, "split" in df.columns
    rows: dict[str, CincLabelRow] = {}
    for rec in df.to_dict("records"):
        name = str(rec["record"]).strip()
        if not name:
            report.skip("labels-CSV row without a record name")
            continue
        if name in rows:
            report.skip("labels-CSV row for a record already listed")
            continue
        rows[name] = CincLabelRow(label=(str(rec["label"]).strip() or None) if has_label else None,
                                  split=(str(rec["split"]).strip() or None) if has_split else None)
    return CincLabels(source=path.name, rows=rows)


def read_challenge_ecg(record: str | Path) -> ECG:
    """The ECG of one Challenge record (`A00004`, `A00004.hea` or `.mat`), in mV, without
    its labels: what the rhythm benchmark and tests read. Header dates that `wfdb`
    rejects are handled as in the importer."""
    record = Path(record)
    if record.suffix.lower() in (".hea", ".mat"):
        record = record.with_suffix("")
    return _read_record(record)[0]


def _read_record(record: Path) -> tuple:
    """`read_wfdb(record)`, retrying a header whose base date `wfdb` cannot parse."""
    hea = record.with_name(record.name + ".hea")
    try:
        return read_wfdb(record, load_annotations=False)
    except InputError as e:
        if "not a valid WFDB header" not in e.problem:
            raise
        fixed = _wfdb_record_line(hea)
        if fixed is None:
            raise
    with tempfile.TemporaryDirectory(prefix="medfuse-cinc-") as tmp:
        copy = Path(tmp) / hea.name
        lines = hea.read_text(encoding="latin-1").splitlines()
        first = next(i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#"))
        lines[first] = fixed
        copy.write_text("\n".join(lines) + "\n", encoding="latin-1")
        for line in lines[first + 1:]:
            data = line.split()[0] if line.strip() and not line.lstrip().startswith("#") else None
            if data and data != "~" and "/" not in data and (hea.parent / data).is_file():
                shutil.copyfile(hea.parent / data, Path(tmp) / data)
        try:
            return read_wfdb(copy.with_suffix(""), load_annotations=False)
        except InputError as e:
            # Name the user's file, not the temporary copy.
            where = hea.parent / Path(e.path).name if e.path else hea
            raise InputError(where, e.problem) from None


def _wfdb_record_line(hea: Path) -> str | None:
    """The header's record line with an ISO base date rewritten as WFDB writes it
    ('time dd/mm/yyyy'), or None when the line has no such date."""
    try:
        text = hea.read_text(encoding="latin-1")
    except OSError:
        return None
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            m = _ISO_RECORD_LINE.match(line.strip())
            return f"{m['head']} {m['time']} {m['d']}/{m['m']}/{m['y']}" if m else None
    return None


def _dx_labels(comments: list[str]) -> list[str] | None:
    """The `#Dx:` labels of a header ('164889003,59118001' or 'AF,RBBB'), None without one."""
    for c in comments:
        m = _DX.match(c)
        if m:
            return [t.strip() for t in re.split(r"[,;]", m.group(1)) if t.strip()]
    return None


def read_cinc_record(record: str | Path, report: ImportReport, labels: CincLabels | None = None,
                     split: str | None = None, panel: Panel | None = None,
                     maps: dict[str, LabelMap] | None = None) -> PatientCase:
    """One Challenge record as a labelled case (see the module docstring).

    `labels` gives CinC 2017 classes (and a `split` per record); `split` overrides the
    CSV's. Raises `InputError` naming the file when the record cannot be read, when the
    header has no `#Dx:` line and no labels-CSV row gives the class, or when the CSV's
    class is not N, A, O or ~.
    """
    panel = panel or load_panel()
    maps = maps or {name: load_label_map(name, panel=panel) for name in ("snomed", "cpsc2018", "cinc2017")}
    record = Path(record)
    if record.suffix.lower() in (".hea", ".mat"):
        record = record.with_suffix("")
    hea = record.with_name(record.name + ".hea")
    ecg, details = _read_record(record)
    for reason in details["skipped"]:
        report.skip(reason)
    for reason, count in details["notes"].items():
        report.note(reason, count)
    comments = details["comments"]  # the stored ECG keeps none of the diagnosis lines
    dx = _dx_labels(comments)
    row = labels.rows.get(record.name) if labels is not None else None
    if row is not None and row.label is not None:
        label_map, source_labels, dataset = maps["cinc2017"], [row.label], "cinc2017"
        if row.label not in label_map:
            raise InputError(labels.source, f"record {record.name}: class {row.label!r} is not one of N, A, O, ~")
    elif dx:
        # CPSC 2018 files write abbreviations, the later Challenge files SNOMED codes.
        is_snomed = all(t.isdigit() for t in dx)
        label_map = maps["snomed"] if is_snomed else maps["cpsc2018"]
        source_labels, dataset = dx, "cinc-challenge" if is_snomed else "cpsc2018"
    else:
        hint = " and the labels CSV has no row for it" if labels is not None else \
            " (CinC 2017 records take their classes from --labels REFERENCE.csv)"
        raise InputError(hea, "header has no '#Dx:' labels" + hint)
    mapped = map_labels(source_labels, label_map, panel)
    for line in mapped.summary:
        report.note(line)
    kept_comments = [c for c in comments if not _DX.match(c)]
    if kept_comments:
        ecg.annotations["header_comments"] = kept_comments
    else:
        ecg.annotations.pop("header_comments", None)
    case_split = split or (row.split if row is not None else None)
    return PatientCase(
        case_id=safe_case_id(details["record"]),
        time=details["time"],
        demographics=details["demographics"],
        ecg=ecg,
        labels=mapped.labels,
        provenance={
            "importer": "cinc",
            "dataset": dataset,
            "source": details["header"],
            **({"labels_csv": labels.source} if row is not None else {}),
            "source_labels": source_labels,
            "rhythm": mapped.rhythm,
            **({"unmapped_labels": mapped.unmapped} if mapped.unmapped else {}),
            **({"split": case_split} if case_split else {}),
        },
    )


def find_cinc_records(sources: Iterable[str | Path]) -> list[Path]:
    """Record paths (without extension) named by `sources` (headers, `.mat` files,
    record names, folders searched recursively, globs)."""
    return find_wfdb_records(sources)


def import_cinc(sources: Iterable[str | Path], report: ImportReport, labels_csv: str | Path | CincLabels | None = None,
                split: str | None = None, skip_bad: bool = False,
                records: list[Path] | None = None) -> Iterator[PatientCase]:
    """One labelled case per Challenge record named by `sources`.

    An unreadable record or one without labels raises `InputError`; with `skip_bad` it is
    skipped, counted and listed. `records` may pass `find_cinc_records`' result and
    `labels_csv` an already loaded `CincLabels` (the CLI does both, to check them before
    writing). A labels-CSV row whose record is not among the inputs is counted.
    """
    labels = load_cinc_labels(labels_csv, report) if isinstance(labels_csv, str | Path) else labels_csv
    panel = load_panel()
    maps = {name: load_label_map(name, panel=panel) for name in ("snomed", "cpsc2018", "cinc2017")}
    records = records if records is not None else find_cinc_records(sources)
    seen: set[str] = set()
    for record in records:
        seen.add(record.name)
        try:
            case = read_cinc_record(record, report, labels, split, panel, maps)
        except InputError as e:
            if not skip_bad:
                raise
            report.skip_file(e, "unreadable or unlabelled CinC record")
            continue
        yield case
    if labels is not None:
        missing = sum(1 for name in labels.rows if name not in seen)
        if missing:
            report.note("labels-CSV row without a record among the inputs", missing)
