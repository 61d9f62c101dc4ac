"""Case folders and cohorts on disk.

A case folder holds `case.json` (everything but bulk signals) and the bulk files in
standard formats: `ecg.hea`/`ecg.dat` (WFDB) and `cxr_<i>.png`. Writes go to a
temporary sibling folder that is renamed into place, so a failed write never leaves a
half-written case. A cohort is a folder of case folders plus `index.parquet`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from medfuse.errors import InputError
from medfuse.record.case import ECG, PatientCase, sampling_rate_problem

CASE_FILE = "case.json"
INDEX_FILE = "index.parquet"
ECG_RECORD = "ecg"


# ---------------------------------------------------------------- single case

def write_case(case: PatientCase, folder: str | Path, overwrite: bool = True) -> Path:
    """Write `case` to `folder` atomically (temporary folder, then rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists() and not overwrite:
        raise FileExistsError(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        # mkdtemp makes the folder private (0700); a case folder should be as readable as
        # any folder the user creates, so a shared cohort stays readable by the team.
        os.chmod(tmp, 0o777 & ~_umask())
        _write_case_files(case, tmp)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            folder.rename(old)
            try:
                tmp.rename(folder)
            except BaseException:
                old.rename(folder)  # interrupted between the renames: put the old case back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:  # KeyboardInterrupt included: no temporary folder stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_case_files(case: PatientCase, folder: Path) -> None:
    case = case.model_copy(deep=False)
    images = []
    for i, img in enumerate(case.cxr):
        img = img.model_copy()
        if img.pixels is not None:
            name = f"cxr_{i}.png"
            Image.fromarray(img.pixels).save(folder / name, optimize=False)
            img.file = name
        images.append(img)
    case.cxr = images
    if case.ecg is not None and case.ecg.signal is not None:
        case.ecg = case.ecg.model_copy()
        write_wfdb(case.ecg, folder, ECG_RECORD)
        case.ecg.file = ECG_RECORD
    text = case.model_dump_json(indent=1, exclude_none=False)
    (folder / CASE_FILE).write_text(text + "\n", encoding="utf-8")


def write_wfdb(ecg: ECG, folder: Path, record: str) -> None:
    """Write an ECG as a WFDB record on its `adc_gain` grid (exact for on-grid signals)."""
    import wfdb

    sig = np.asarray(ecg.signal, dtype=np.float64)
    if not np.all(np.isfinite(sig)):
        # WFDB reserves the lowest digital value for missing samples.
        pass
    digital = np.round(np.nan_to_num(sig, nan=0.0) * ecg.adc_gain)
    peak = np.max(np.abs(digital)) if digital.size else 0
    fmt, dtype, nan_code = ("16", np.int16, -32768) if peak < 32767 else ("32", np.int32, -(2**31))
    d = digital.astype(dtype)
    d[~np.isfinite(sig)] = nan_code
    n_leads = sig.shape[1]
    if fmt == "16" and _fast_header_ok(ecg):
        _write_fmt16(d, ecg, folder, record)
        return
    wfdb.wrsamp(
        record,
        fs=float(ecg.fs),
        units=["mV"] * n_leads,
        sig_name=list(ecg.leads),
        d_signal=d,
        fmt=[fmt] * n_leads,
        adc_gain=[float(ecg.adc_gain)] * n_leads,
        baseline=[0] * n_leads,
        write_dir=str(folder),
    )


def _fast_header_ok(ecg: ECG) -> bool:
    # The fast writer covers the common case; anything unusual goes through wfdb.
    fs = float(ecg.fs)
    return fs.is_integer() and 0 < fs < 1e6 and all(n and not any(c.isspace() for c in n) for n in ecg.leads)


def _write_fmt16(digital: np.ndarray, ecg: ECG, folder: Path, record: str) -> None:
    """Write a format-16 WFDB record byte-identical to `wfdb.wrsamp`'s, without its
    per-field pandas look-ups (which cost ~100 ms per 12-lead record; this costs ~1 ms).
    `digital` is (samples, leads) int16; a test compares the bytes with wfdb's."""
    n_samples, n_leads = digital.shape
    gain = str(float(ecg.adc_gain))
    init = digital[0] if n_samples else np.zeros(n_leads, dtype=np.int64)
    checksum = np.sum(digital, axis=0, dtype=np.int64) % 65536
    lines = [f"{record} {n_leads} {int(ecg.fs)} {n_samples}"]
    for i, name in enumerate(ecg.leads):
        lines.append(f"{record}.dat 16 {gain}(0)/mV 16 0 {int(init[i])} {int(checksum[i])} 0 {name}")
    (folder / f"{record}.hea").write_text("\n".join(lines) + "\n", encoding="ascii")
    (folder / f"{record}.dat").write_bytes(digital.astype("<i2").tobytes())


def read_wfdb_signal(folder: Path, record: str) -> tuple[np.ndarray, float, list[str]]:
    """The (samples, leads) mV signal, sampling rate and lead names of a WFDB record in
    a case folder. Raises `InputError` naming the header when it names a data file outside
    the folder, gives an implausible sampling rate, or cannot be read."""
    import wfdb

    hea = folder / f"{record}.hea"
    if path_inside(folder, hea) is None or not hea.is_file():
        raise InputError(hea, "no such WFDB header inside the case folder")
    try:
        header = wfdb.rdheader(str(folder / record))
        check_wfdb_header(header, hea)
        rec = wfdb.rdrecord(str(folder / record), physical=False)
    except (OSError, ValueError, IndexError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise InputError(hea, f"cannot read ECG record ({e.__class__.__name__})") from None
    if rec.d_signal is None or rec.d_signal.ndim != 2:
        raise InputError(hea, "ECG record holds no samples")
    d = rec.d_signal.astype(np.float64)
    gains = np.asarray(rec.adc_gain, dtype=np.float64)
    if not np.all(np.isfinite(gains)) or np.any(gains == 0):
        raise InputError(hea, "ECG record has an ADC gain of 0 (uncalibrated)")
    base = np.asarray(rec.baseline, dtype=np.float64)
    sig = (d - base) / gains
    nan_code = -32768 if rec.fmt[0] == "16" else -(2**31)
    sig[rec.d_signal == nan_code] = np.nan
    return sig, float(rec.fs), list(rec.sig_name)


def check_wfdb_header(header, hea: Path) -> None:
    """Refuse a WFDB header (`wfdb.rdheader` result of the file `hea`) whose data files lie
    outside its folder or whose sampling rate is implausible.

    The rate is checked as written: `wfdb` replaces a rate it cannot parse ('-500') by its
    default of 250 Hz without a word, which would silently rescale every interval.
    """
    names = [*(getattr(header, "file_name", None) or []), *(getattr(header, "seg_name", None) or [])]
    for name in names:
        if name and name != "~" and path_inside(hea.parent, name) is None:
            raise InputError(hea, "names a data file outside the record's folder")
    written = _written_wfdb_rate(hea)
    problem = sampling_rate_problem(written if written is not None else header.fs)
    if problem:
        raise InputError(hea, problem)


def _written_wfdb_rate(hea: Path) -> str | None:
    """The sampling-rate field of a header's record line as written ('500', '360/1.5(0)'
    gives '360'), or None when the line has no rate (WFDB then means 250 Hz)."""
    try:
        with hea.open(encoding="latin-1") as fh:
            for line in fh:
                if line.strip() and not line.lstrip().startswith("#"):
                    fields = line.split()
                    return fields[2].split("/")[0].split("(")[0] if len(fields) > 2 else None
    except OSError:
        return None
    return None


def loads_json(text: str | bytes, path: str | Path | None, line: int | None = None) -> Any:
    """Parse JSON text read from `path` (`line`: its line number in an NDJSON file).

    Raises `InputError` naming the file when the text is not valid JSON or nests too deep
    for Python's parser. Every JSON reader of user files goes through here (or
    `read_json`), so a hostile file gives one line, never a RecursionError traceback.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON at line {line or e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise InputError(path, f"invalid JSON (not UTF-8 text, byte {e.start})") from None
    except RecursionError:
        where = f" at line {line}" if line else ""
        raise InputError(path, f"invalid JSON{where} (nested too deep to read)") from None


def read_json(path: str | Path) -> Any:
    """The content of a UTF-8 JSON file; `InputError` naming the file when it is missing,
    unreadable, not valid JSON or nested too deep."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except OSError as e:
        raise InputError(path, f"cannot read file ({e.__class__.__name__})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(path, f"invalid JSON (not UTF-8 text, byte {e.start})") from None
    return loads_json(text, path)


def path_inside(root: str | Path, reference: str | Path) -> Path | None:
    """`reference` (relative to `root`, or absolute) resolved, when it lies inside `root`;
    else None.

    Both sides are resolved (symbolic links followed) before comparing, so '../x', an
    absolute path elsewhere, or a link inside `root` pointing out of it all count as
    outside. Readers of files named *by* an input (case.json, FHIR attachments, WFDB
    headers) use this so that an input can never make medfuse read a file the user did
    not give it.
    """
    root = Path(root).resolve()
    try:
        target = (root / Path(reference)).resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte in the name
        return None
    return target if target.is_relative_to(root) else None


@contextmanager
def image_size_guard(path: str | Path) -> Iterator[None]:
    """Refuse images larger than Pillow's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`).

    Pillow only warns between the limit and twice the limit; here the warning is an error
    too, and both become one `InputError` naming `path`. A few hundred header bytes can
    claim a 60000 x 60000 image that would take gigabytes to decode.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InputError(path, f"image is larger than {Image.MAX_IMAGE_PIXELS} pixels "
                                   "(refused as a possible decompression bomb)") from None


def write_text_atomic(path: str | Path, text: str, mode: int | None = None) -> Path:
    """Write `text` to `path` so that a reader (or an interrupted run) never sees half of
    it: a temporary file beside the target, synced, then renamed over it. The file gets
    the umask's permissions, or `mode` (e.g. 0o600 for secrets) set before the rename."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open with 0o666 lets the umask decide the mode (tempfile would force 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


# The guard every entry point that reads inputs and writes an output runs first: writing
# into the input would mix results into the data (a rerun then reads its own output back as
# input), and replacing an output folder that holds the input (overwrite) would delete it.
def check_output_apart(out: str | Path, inputs: Iterable[str | Path | None], flag: str = "--out") -> None:
    """Raise `InputError` naming `out` when it is one of `inputs`, lies inside one, or
    holds one (paths compared after resolving links; `None` inputs are ignored).

    >>> check_output_apart("runs/a", ["cohort"]) is None
    True
    >>> check_output_apart("cohort/results", ["cohort"])
    Traceback (most recent call last):
    ...
    medfuse.errors.InputError: cohort/results: --out lies inside the input cohort; write it elsewhere
    """
    target = Path(out).resolve()
    for given in inputs:
        if given is None or str(given) == "":
            continue
        source = Path(given).resolve()
        if target == source:
            problem = f"{flag} is the input {given}"
        elif target.is_relative_to(source):
            problem = f"{flag} lies inside the input {given}"
        elif source.is_relative_to(target):
            problem = f"{flag} holds the input {given}"
        else:
            continue
        raise InputError(out, f"{problem}; write it elsewhere")


def read_case(folder: str | Path, load_bulk: bool = True) -> PatientCase:
    """Read a case folder written by `write_case`."""
    folder = Path(folder)
    path = folder / CASE_FILE
    if not path.is_file():
        raise InputError(folder, f"not a case folder (no {CASE_FILE})")
    data = read_json(path)
    try:
        case = PatientCase.model_validate(data)
    except Exception as e:  # pydantic.ValidationError: keep the first problem only, no values
        raise InputError(path, f"not a valid case: {_first_validation_problem(e)}") from None
    if not load_bulk:
        return case
    for img in case.cxr:
        if img.file:
            path = _bulk_file(folder, img.file)
            try:
                with image_size_guard(path), Image.open(path) as im:
                    arr = np.array(im)
            except (OSError, ValueError, SyntaxError, EOFError) as e:
                raise InputError(path, f"cannot read image ({e.__class__.__name__})") from None
            if arr.dtype == np.int32 or arr.dtype == np.int64:  # 16-bit PNGs can come back as I mode
                arr = arr.astype(np.uint16)
            if arr.ndim != 2 or arr.dtype not in (np.uint8, np.uint16):
                raise InputError(path, "not a 2-D 8- or 16-bit grayscale image")
            findings = img.findings
            img.pixels = arr
            img.findings = findings
            img.height, img.width = arr.shape[:2]
    if case.ecg is not None and case.ecg.file:
        _bulk_file(folder, f"{case.ecg.file}.hea")
        sig, fs, leads = read_wfdb_signal(folder, case.ecg.file)
        case.ecg.signal = sig
        case.ecg.n_samples = sig.shape[0]
        if leads != case.ecg.leads:
            raise InputError(folder / f"{case.ecg.file}.hea", "lead names differ from case.json")
    return case


def _bulk_file(folder: Path, name: str) -> Path:
    """The file `name` of a case folder; `InputError` when case.json points outside the
    folder (a '../' path, an absolute path or a link out) or at nothing."""
    if path_inside(folder, name) is None:
        raise InputError(folder / CASE_FILE, "names a file outside the case folder")
    path = folder / name
    if not path.is_file():
        raise InputError(folder / CASE_FILE, f"names a file that does not exist ({Path(name).name})")
    return path


def _first_validation_problem(e: Exception) -> str:
    errors = getattr(e, "errors", None)
    if callable(errors):
        errs = errors()
        if errs:
            loc = ".".join(str(p) for p in errs[0].get("loc", ()))
            return f"{loc}: {errs[0].get('msg', 'invalid')}"
    return e.__class__.__name__


# ---------------------------------------------------------------- cohorts

def case_summary_row(case: PatientCase, folder_name: str) -> dict:
    """One row of the cohort index: what a user filters on."""
    labels = case.labels
    return {
        "case_id": case.case_id,
        "patient_id": case.group_id,
        "folder": folder_name,
        "age": case.demographics.age,
        "sex": case.demographics.sex,
        "has_cxr": bool(case.cxr),
        "has_ecg": case.ecg is not None,
        "n_labs": len(case.labs),
        "has_vitals": bool(case.vitals),
        "has_notes": bool(case.notes),
        "has_genomics": bool(case.genomics),
        "diagnoses": ";".join(labels.disease_names()) if labels else "",
        "n_findings": len(labels.findings) if labels else 0,
        "source": case.provenance.get("importer", ""),
    }


INDEX_COLUMNS = list(case_summary_row(PatientCase(case_id="x"), "x").keys())


def write_index(cohort_dir: str | Path, rows: Iterable[dict] | None = None) -> pd.DataFrame:
    """(Re)build the cohort index. Without `rows`, scans every case folder's case.json."""
    cohort_dir = Path(cohort_dir)
    if rows is None:
        rows = [case_summary_row(read_case(f, load_bulk=False), f.name) for f in iter_case_folders(cohort_dir)]
    df = pd.DataFrame(list(rows), columns=INDEX_COLUMNS).sort_values("case_id", kind="stable").reset_index(drop=True)
    tmp = cohort_dir / f".{INDEX_FILE}.tmp"
    try:
        df.to_parquet(tmp, index=False)
        tmp.replace(cohort_dir / INDEX_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return df


def read_index(cohort_dir: str | Path) -> pd.DataFrame:
    cohort_dir = Path(cohort_dir)
    path = cohort_dir / INDEX_FILE
    if not path.is_file():
        if not cohort_dir.is_dir():
            raise InputError(cohort_dir, "no such cohort folder")
        return write_index(cohort_dir)
    return pd.read_parquet(path)


def iter_case_folders(cohort_dir: str | Path) -> Iterator[Path]:
    cohort_dir = Path(cohort_dir)
    for p in sorted(cohort_dir.iterdir()):
        if p.is_dir() and not p.name.startswith(".") and (p / CASE_FILE).is_file():
            yield p


def iter_cohort(cohort_dir: str | Path, load_bulk: bool = True, split: str | None = None) -> Iterator[PatientCase]:
    """Cases of a cohort in case-id order, optionally one split only."""
    cohort_dir = Path(cohort_dir)
    if split is None:
        for f in iter_case_folders(cohort_dir):
            yield read_case(f, load_bulk=load_bulk)
        return
    df = patient_split(read_index(cohort_dir))
    for folder in df.loc[df["split"] == split, "folder"]:
        yield read_case(cohort_dir / folder, load_bulk=load_bulk)


def patient_split(
    index: pd.DataFrame,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    group_col: str = "patient_id",
) -> pd.DataFrame:
    """Add a `split` column (train/val/test) with every patient in exactly one split.

    The assignment hashes (seed, patient id), so it is stable when the cohort grows and
    identical across machines; it never depends on row order.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or any(f < 0 for f in fractions):
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    cut1, cut2 = fractions[0], fractions[0] + fractions[1]

    def bucket(pid: object) -> str:
        h = hashlib.sha256(f"{seed}:{pid}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2**64
        return "train" if u < cut1 else ("val" if u < cut2 else "test")

    out = index.copy()
    out["split"] = [bucket(p) for p in out[group_col]]
    return out
