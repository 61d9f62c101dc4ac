"""Submitted files -> one `PatientCase`, with every upload validated.

A submission is the files of one encounter (DICOM or PNG/JPEG radiographs, a WFDB
record's .hea/.dat, a DICOM ECG, a labs CSV, a FHIR R4 bundle) or a FHIR bundle posted
as the JSON body. The files are written under their base names into a private
temporary folder and read by the same importers as `medfuse diagnose`
(`medfuse.io.sources`; labs CSV through `medfuse.io.labs_csv`), so the service accepts
exactly what the command line accepts.

Every problem is one `SubmissionError` whose message names the uploaded file by the name
the client gave, never the temporary path, and carries no record content.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from medfuse.errors import InputError, MedfuseError
from medfuse.io.base import ImportReport
from medfuse.io.sources import (
    SourceInput,
    cases_from_files,
    importer_for,
    merge_case_parts,
)
from medfuse.record.case import PatientCase

LABS_CSV_SUFFIXES = (".csv", ".tsv", ".csv.gz", ".tsv.gz")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class SubmissionError(MedfuseError):
    """A submission cannot become a case; the message is safe to return to the client."""


@dataclass(frozen=True)
class Upload:
    """One uploaded file: the name the client gave and its bytes."""

    name: str
    data: bytes


@dataclass
class Submission:
    """The case read from a submission, and the DICOM headers of its radiographs (for SR export)."""

    case: PatientCase
    dicom_headers: dict[int, bytes]  # cxr index -> the source DICOM file without pixel data
    report: ImportReport


def _file_name(name: str, taken: set[str]) -> str:
    """A safe, unique base name for an upload (no folders, no odd characters)."""
    base = _SAFE_NAME.sub("_", Path(name.replace("\\", "/")).name).lstrip(".") or "upload"
    candidate, n = base, 1
    while candidate.lower() in taken:
        stem, dot, suffix = base.partition(".")
        candidate = f"{stem}-{n}{dot}{suffix}"
        n += 1
    taken.add(candidate.lower())
    return candidate


@contextmanager
def _staged(uploads: Sequence[Upload]) -> Iterator[dict[Path, str]]:
    """Write uploads into a private temporary folder; yields path -> client name."""
    folder = Path(tempfile.mkdtemp(prefix="medfuse-serve-"))
    try:
        taken: set[str] = set()
        names: dict[Path, str] = {}
        for up in uploads:
            path = folder / _file_name(up.name, taken)
            path.write_bytes(up.data)
            names[path] = up.name
        yield names
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _client_message(e: InputError, names: dict[Path, str]) -> str:
    """The error as the client should read it: temporary paths replaced by upload names."""
    text = e.problem
    name = next((n for p, n in names.items() if e.path is not None and (e.path == str(p) or e.path.startswith(str(p)))),
                None)
    for p, n in names.items():
        text = text.replace(str(p), n).replace(str(p.parent), "")
    if name is None and e.path is not None:
        return f"{Path(e.path).name}: {text}" if Path(e.path).name else text
    return f"{name}: {text}" if name else text


def _dicom_header(path: Path) -> bytes | None:
    """The file re-encoded without its pixel data (UIDs and modules kept for SR references)."""
    import io

    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=False)
        return out.getvalue()
    except Exception:  # noqa: BLE001 - the header only decorates the SR export
        return None


def read_submission(uploads: Sequence[Upload], max_bytes: int) -> Submission:
    """The one case that `uploads` describe; raises `SubmissionError` otherwise."""
    if not uploads:
        raise SubmissionError("no files: send the files of one encounter (multipart field 'files') or a FHIR bundle")
    total = sum(len(u.data) for u in uploads)
    if total > max_bytes:
        raise SubmissionError(f"upload of {total} bytes exceeds the limit of {max_bytes} bytes")
    for up in uploads:
        if not up.data:
            raise SubmissionError(f"{up.name or 'upload'}: empty file")
    report = ImportReport(source="serve")
    with _staged(uploads) as names:
        try:
            return _read(names, report)
        except InputError as e:
            raise SubmissionError(_client_message(e, names)) from None
        except SubmissionError:
            raise
        except (ValueError, OSError, KeyError, IndexError, TypeError) as e:
            # An importer's unexpected failure on hostile input: named, without its details.
            raise SubmissionError(f"the files could not be read as one encounter ({e.__class__.__name__})") from None


def _read(names: dict[Path, str], report: ImportReport) -> Submission:
    from medfuse.io.labs_csv import import_labs_csv

    sources: list[SourceInput] = []
    lab_files: list[Path] = []
    for path, name in names.items():
        if path.name.lower().endswith(LABS_CSV_SUFFIXES):
            lab_files.append(path)
            continue
        imp = importer_for(path)
        if imp is None:
            raise SubmissionError(f"{name}: not a FHIR bundle, DICOM, WFDB, image or labs CSV file")
        if imp.header_suffix and not path.name.lower().endswith(imp.header_suffix):
            if not imp.input_path(path).is_file():
                raise SubmissionError(f"{name}: a {imp.label} data file without its header ({imp.header_suffix})")
            continue  # a record's data file: read through its header
        sources.append(SourceInput(imp.kind, imp.input_path(path)))
    cases: list[PatientCase] = cases_from_files(sources, report) if sources else []
    if lab_files:
        lab_cases = list(import_labs_csv(lab_files, report))
        if len(lab_cases) != 1:
            raise SubmissionError(f"{names[lab_files[0]]}: holds {len(lab_cases)} cases; submit one encounter at a time")
        # The CSV's case_id column names the encounter explicitly; file names only stand in.
        cases = [merge_case_parts([*lab_cases, *cases], report)] if cases else lab_cases
    if len(cases) != 1:
        raise SubmissionError(f"the files hold {len(cases)} encounters; submit one encounter at a time")
    case = cases[0]
    headers: dict[int, bytes] = {}
    dicom_files = [p for p in names if p.suffix.lower() in (".dcm", ".dicom") or importer_for(p) is not None
                   and importer_for(p).kind == "dicom"]
    for i, img in enumerate(case.cxr):
        match = next((p for p in dicom_files if img.source and Path(p).name in img.source), None)
        if match is None and len(case.cxr) == len(dicom_files):
            match = dicom_files[i]  # every image came from a DICOM file, in upload order
        header = _dicom_header(match) if match is not None else None
        if header is not None:
            headers[i] = header
    return Submission(case=case, dicom_headers=headers, report=report)
