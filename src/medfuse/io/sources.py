"""From what a user names (paths, folders, globs) to typed inputs and patient cases.

Three pieces, used by `medfuse diagnose`, `medfuse interpret`, the demo and notebooks
alike:

- an importer registry: each raw file kind (FHIR, DICOM, WFDB, image) with the file
  name endings and, where the format has one, the content signature (the DICOM
  preamble) that identify it, and the importer that reads it (`importer_for`);
- discovery: case folders, cohorts and raw files named by paths, folders and globs,
  each as a `SourceInput` of a known kind (`discover_inputs`, `discover_files`);
- building cases: the raw files of one encounter merged into ONE `PatientCase`
  (`cases_from_files`, `merge_case_parts`), or the cases of a case or cohort folder
  (`collect_cases`).
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from medfuse.errors import InputError
from medfuse.io.base import ImportReport, expand_paths
from medfuse.io.fhir import FHIR_SUFFIXES
from medfuse.io.image import IMAGE_SUFFIXES
from medfuse.io.wfdb import SIGNAL_SUFFIXES, find_wfdb_records
from medfuse.record.case import ECG, PatientCase
from medfuse.record.store import CASE_FILE, iter_case_folders, read_case

CASE = "case"  # the kind of a case folder (case.json beside its bulk files)
_GLOB_CHARS = "*?["
# How many leading bytes a content signature may look at (the DICOM preamble is 128).
_SIGNATURE_BYTES = 132


# ---------------------------------------------------------------- the importer registry

@dataclass(frozen=True)
class SourceInput:
    """One input named by the user: a case folder (`kind` CASE) or a raw file of a
    registered importer's kind ('fhir', 'dicom', 'wfdb', 'image')."""

    kind: str
    path: Path


@dataclass(frozen=True)
class FileImporter:
    """How one kind of raw file is recognised and read."""

    kind: str
    label: str  # the kind in messages: "not a FHIR bundle, DICOM, WFDB or image file"
    suffixes: tuple[str, ...]  # lower-case name endings ('.json.gz' too)
    read_cases: Callable[[list[Path], ImportReport], Iterable[PatientCase]]
    signature: Callable[[bytes], bool] | None = None  # recognises the file's first bytes
    # A record named by a header file: its data files and its bare name stand for the
    # header ('100.dat' and '100' for '100.hea'), and a folder is searched for headers.
    header_suffix: str | None = None
    find_in_folder: Callable[[Path], list[Path]] | None = None  # default: files recognised one by one
    whole_cases: bool = False  # each file holds whole cases (FHIR), not parts of one encounter

    def input_path(self, path: Path) -> Path:
        """The path that stands for `path` as an input (a record's header)."""
        return path.with_suffix(self.header_suffix) if self.header_suffix else path


_IMPORTERS: dict[str, FileImporter] = {}


def register_importer(importer: FileImporter) -> None:
    """Add (or replace) the importer of `importer.kind`; later lookups see it."""
    _IMPORTERS[importer.kind] = importer


def importer_for(path: Path, kinds: Collection[str] | None = None) -> FileImporter | None:
    """The importer that reads `path` (among `kinds`, default all): by the end of the file
    name first, then by the file's content signature; None when no importer claims it.

    Raises `InputError` when the file has to be opened and cannot be.
    """
    candidates = [imp for imp in _IMPORTERS.values() if kinds is None or imp.kind in kinds]
    name = path.name.lower()
    for imp in candidates:
        if name.endswith(imp.suffixes):
            return imp
    signed = [imp for imp in candidates if imp.signature is not None]
    if not signed:
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(_SIGNATURE_BYTES)
    except OSError as e:
        raise InputError(path, f"cannot read ({e.__class__.__name__})") from None
    return next((imp for imp in signed if imp.signature(head)), None)


def _kinds_phrase(importers: Iterable[FileImporter]) -> str:
    """'FHIR bundle, DICOM, WFDB or image' for messages."""
    labels = [imp.label for imp in importers]
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} or {labels[-1]}"


def _import_fhir(files: list[Path], report: ImportReport) -> Iterable[PatientCase]:
    from medfuse.io.fhir import import_fhir

    return import_fhir(files, report)


def _import_dicom(files: list[Path], report: ImportReport) -> Iterable[PatientCase]:
    from medfuse.io.dicom import import_dicom

    return import_dicom(files, report)


def _import_wfdb(files: list[Path], report: ImportReport) -> Iterable[PatientCase]:
    from medfuse.io.wfdb import import_wfdb

    return import_wfdb(files, report)


def _import_images(files: list[Path], report: ImportReport) -> Iterable[PatientCase]:
    from medfuse.io.image import import_images

    return import_images(files, report)


def _wfdb_headers(folder: Path) -> list[Path]:
    # find_wfdb_records leaves out the segments of a multi-segment record.
    return [r.with_name(r.name + ".hea") for r in find_wfdb_records([folder])]


for _importer in (
    FileImporter("fhir", "FHIR bundle", FHIR_SUFFIXES, _import_fhir, whole_cases=True),
    # Part 10 files carry 'DICM' after a 128-byte preamble, whatever they are named.
    FileImporter("dicom", "DICOM", (".dcm", ".dicom"), _import_dicom, signature=lambda head: head[128:132] == b"DICM"),
    FileImporter("wfdb", "WFDB", (".hea", *SIGNAL_SUFFIXES), _import_wfdb, header_suffix=".hea",
                 find_in_folder=_wfdb_headers),
    FileImporter("image", "image", IMAGE_SUFFIXES, _import_images),
):
    register_importer(_importer)


# ---------------------------------------------------------------- discovery

def _expand_globs(args: Iterable[str | Path]) -> Iterator[tuple[str | Path, list[Path] | None]]:
    """Each argument with the paths its glob pattern matches (None: not a pattern).

    Raises `InputError` for a pattern that matches nothing.
    """
    for arg in args:
        if any(ch in str(arg) for ch in _GLOB_CHARS):
            # glob.glob, unlike Path().glob, also takes absolute patterns ('/data/**/*.hea').
            matches = sorted(glob.glob(str(arg), recursive=True))
            if not matches:
                raise InputError(arg, "no file or folder matches this pattern")
            yield arg, [Path(m) for m in matches]
        else:
            yield arg, None


def case_folders(folder: Path) -> list[Path]:
    """`folder` when it is a case folder, else the case folders below it (any depth,
    hidden folders left out), sorted."""
    if (folder / CASE_FILE).is_file():
        return [folder]
    return sorted(p.parent for p in folder.rglob(CASE_FILE)
                  if not any(part.startswith(".") for part in p.relative_to(folder).parts))


def files_in_folder(folder: Path, kinds: Collection[str] | None = None,
                    report: ImportReport | None = None) -> list[SourceInput]:
    """The raw files of the registered kinds (`kinds`, default all) below `folder`.

    Files no importer claims are counted in `report` (as 'file in folder of no known
    kind'), not raised: a dataset folder holds licences and notes beside the data.
    """
    importers = [imp for imp in _IMPORTERS.values() if kinds is None or imp.kind in kinds]
    searched = [imp for imp in importers if imp.find_in_folder is not None]
    found = [SourceInput(imp.kind, p) for imp in searched for p in imp.find_in_folder(folder)]
    searched_kinds = {imp.kind for imp in searched}
    for path in expand_paths([folder]):
        try:
            imp = importer_for(path, [i.kind for i in importers])
        except InputError:
            imp = None  # an unreadable stray file is not a reason to stop reading the folder
        if imp is None:
            if report is not None:
                report.skip("file in folder of no known kind")
        elif imp.kind not in searched_kinds:
            found.append(SourceInput(imp.kind, imp.input_path(path)))
    return found


def discover_files(sources: Iterable[str | Path], kinds: Collection[str] | None = None,
                   report: ImportReport | None = None) -> list[SourceInput]:
    """The raw files named by `sources` (files, folders searched recursively, globs), each
    with the kind of importer that reads it; in order, without duplicates.

    A named file that no importer claims raises `InputError`; one found in a folder or
    by a glob is counted in `report` instead.
    """
    importers = [imp for imp in _IMPORTERS.values() if kinds is None or imp.kind in kinds]
    found: list[SourceInput] = []
    for arg, matches in _expand_globs(sources):
        for path in matches if matches is not None else [Path(arg)]:
            if path.is_dir():
                found.extend(files_in_folder(path, kinds, report))
                continue
            if not path.exists():
                found.append(_record_by_name(path, importers))
                continue
            imp = importer_for(path, kinds)
            if imp is not None:
                found.append(SourceInput(imp.kind, imp.input_path(path)))
            elif matches is None:
                raise InputError(path, f"not a {_kinds_phrase(importers)} file")
            elif report is not None:
                report.skip("file of no known kind matched by a pattern")
    return list(dict.fromkeys(found))


ECG_KINDS = ("wfdb", "dicom")  # raw files `discover_inputs` accepts as ECG recordings


def discover_inputs(args: Iterable[str | Path], ecg_recordings: bool = False) -> list[SourceInput]:
    """Case folders (and, with `ecg_recordings`, WFDB records and DICOM ECGs) named by
    `args`: case folders, cohort folders, `case.json` files, glob patterns, recordings and
    folders of recordings. In order, without duplicates.

    Raises `InputError` for an argument that names nothing readable (a missing path, a
    glob with no match, a folder with no case and, for ECGs, no recording).
    """
    kinds = ECG_KINDS if ecg_recordings else ()
    out: list[SourceInput] = []
    for arg, matches in _expand_globs(args):
        if matches is None:
            out.extend(_inputs_at(Path(arg), kinds))
            continue
        found: list[SourceInput] = []
        for m in matches:
            try:
                found.extend(_inputs_at(m, kinds))
            except InputError:
                continue  # a glob also matches files that are no input (a .dat beside its .hea)
        if not found:
            raise InputError(arg, "the pattern matches no case folder" + (", WFDB record or DICOM ECG" if kinds else ""))
        out.extend(found)
    return list(dict.fromkeys(out))


def _record_by_name(path: Path, importers: Iterable[FileImporter]) -> SourceInput:
    """The record a missing `path` names without its extension ('100' for '100.hea')."""
    for imp in importers:
        if imp.header_suffix and path.with_name(path.name + imp.header_suffix).is_file():
            return SourceInput(imp.kind, path.with_name(path.name + imp.header_suffix))
    raise InputError(path, "no such file or folder")


def _inputs_at(path: Path, kinds: Collection[str]) -> list[SourceInput]:
    if not path.exists():
        return [_record_by_name(path, (_IMPORTERS[k] for k in kinds))]
    if path.is_dir():
        cases = case_folders(path)
        if cases:
            return [SourceInput(CASE, c) for c in cases]
        if kinds:
            recordings = files_in_folder(path, kinds)
            if recordings:
                return recordings
            raise InputError(path, "folder holds no case folder, WFDB record or DICOM ECG")
        raise InputError(path, "folder holds no case folder (case.json)")
    if path.name == CASE_FILE:
        return [SourceInput(CASE, path.parent)]
    if kinds:
        imp = importer_for(path, kinds)
        if imp is not None:
            return [SourceInput(imp.kind, imp.input_path(path))]
        raise InputError(path, "not a case folder, WFDB record (.hea) or DICOM ECG (.dcm)")
    raise InputError(path, "not a case folder (import the file first with 'medfuse import ...')")


# ---------------------------------------------------------------- building cases

def merge_case_parts(parts: list[PatientCase], report: ImportReport) -> PatientCase:
    """One case from the parts of one encounter's file set: all images, the first ECG
    (others counted in `report`), the first known demographics, every lab, vital sign,
    note and variant; everything else from the first part."""
    first = parts[0].model_copy(deep=False)
    ecgs = [p.ecg for p in parts if p.ecg is not None]
    if len(ecgs) > 1:
        report.skip("extra ECG recording in the file set (the first is used)", len(ecgs) - 1)
    demographics = next((p.demographics for p in parts if p.demographics.age is not None or p.demographics.sex),
                        first.demographics)
    return first.model_copy(update={
        "cxr": [img for p in parts for img in p.cxr],
        "ecg": ecgs[0] if ecgs else None,
        "demographics": demographics,
        "labs": [r for p in parts for r in p.labs],
        "vitals": [v for p in parts for v in p.vitals],
        "notes": [n for p in parts for n in p.notes],
        "genomics": [g for p in parts for g in p.genomics],
    })


def cases_from_files(files: Iterable[SourceInput], report: ImportReport) -> list[PatientCase]:
    """Cases from raw files: whole-case sources (FHIR) give one case per encounter; the
    other files (DICOM, WFDB, images) are one encounter and are merged into ONE case,
    which joins the FHIR case when there is exactly one.

    Raises `InputError` when no case can be read at all.
    """
    files = list(files)
    by_kind: dict[str, list[Path]] = {}
    for f in files:
        by_kind.setdefault(f.kind, []).append(f.path)
    cases: list[PatientCase] = []
    parts: list[PatientCase] = []
    for imp in _IMPORTERS.values():
        if imp.kind in by_kind:
            (cases if imp.whole_cases else parts).extend(imp.read_cases(by_kind[imp.kind], report))
    if parts:
        merged = merge_case_parts(parts, report)
        if len(cases) == 1:  # one encounter plus its files
            merged = merge_case_parts([cases[0], merged], report)
            cases = []
        cases.append(merged)
    if not cases:
        raise InputError(files[0].path if files else None, "no case could be read from the input files")
    return cases


class CollectedCases(NamedTuple):
    """The cases to process, how many there are, and whether they are a batch (a cohort
    or several cases) rather than one case."""

    cases: Iterator[PatientCase]
    total: int
    batch: bool


def collect_cases(inputs: list[Path], report: ImportReport) -> CollectedCases:
    """The cases named by `inputs`: one case folder, one cohort folder (read lazily; an
    unreadable case folder inside it is skipped and counted in `report`, not fatal), or
    the raw files of one encounter (see `cases_from_files`)."""
    for p in inputs:
        if not p.exists():
            raise InputError(p, "no such file or folder")
    if len(inputs) == 1 and inputs[0].is_dir():
        folder = inputs[0]
        if (folder / CASE_FILE).is_file():
            return CollectedCases(iter([read_case(folder)]), 1, False)
        folders = list(iter_case_folders(folder))
        if not folders:
            raise InputError(folder, "no case folders (case.json) here; give a case folder, a cohort folder or input files")

        def read_all() -> Iterator[PatientCase]:
            for f in folders:
                try:
                    yield read_case(f)
                except InputError as e:
                    report.skip(f"unreadable case folder ({e.problem})")

        return CollectedCases(read_all(), len(folders), True)
    if any(p.is_dir() for p in inputs):
        bad = next(p for p in inputs if p.is_dir())
        raise InputError(bad, "give one case or cohort folder, or several input files, not both")
    files = []
    for path in inputs:
        imp = importer_for(path)
        if imp is None:
            raise InputError(path, f"not a case folder, cohort folder, {_kinds_phrase(_IMPORTERS.values())} file")
        files.append(SourceInput(imp.kind, path))
    cases = cases_from_files(files, report)
    return CollectedCases(iter(cases), len(cases), len(cases) > 1)


def read_input_ecg(source: SourceInput) -> tuple[ECG | None, str | None, str | None]:
    """(ECG, patient sex, case id) of an ECG input: a case folder's ECG (None when it has
    none), a WFDB record or a DICOM waveform ECG. The sex (for sex-specific limits) and
    the case id are None where the input does not carry them."""
    if source.kind == CASE:
        case = read_case(source.path)
        ecg = case.ecg if case.ecg is not None and case.ecg.signal is not None else None
        return ecg, case.demographics.sex, case.case_id
    if source.kind == "wfdb":
        from medfuse.io.wfdb import read_wfdb

        ecg, details = read_wfdb(source.path)
        return ecg, getattr(details.get("demographics"), "sex", None), None
    if source.kind == "dicom":
        from medfuse.io.ecg_dicom import read_dicom_ecg

        return read_dicom_ecg(source.path), None, None
    raise InputError(source.path, f"not an ECG input ({source.kind})")
