"""DICOM chest images (and DICOM ECGs in the same study) -> CXRImage / PatientCase.

`read_dicom_image` turns one DICOM image into display-ready pixels the way a viewer
would, following the DICOM grayscale pipeline (PS3.4 N.2):

1. decode the stored values (pydicom; JPEG, JPEG-LS and JPEG 2000 through the
   pylibjpeg plugins, RLE natively);
2. Modality LUT: Rescale Slope/Intercept or a Modality LUT Sequence
   (`pydicom.pixels.apply_modality_lut`);
3. VOI LUT: the first VOI LUT Sequence item or the first Window Center/Width pair,
   with the window function the file names (`pydicom.pixels.apply_voi_lut`); with
   neither, the image's own value range;
4. scale that output range to uint8 (8-bit sources) or uint16, and invert
   MONOCHROME1 so that 0 is black.

`import_dicom` groups files by study (Study Instance UID) and yields one
`PatientCase` per study: every chest image of the study in `cxr`, and a DICOM
waveform ECG of the same study (if any) in `ecg`. Case and patient ids are short
hashes, never the raw UIDs, patient names or patient IDs.
"""

from __future__ import annotations

import re
import struct
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.errors import InputError
from medfuse.io.base import ImportReport, expand_paths, pseudonym
from medfuse.io.dicom_header import dicom_demographics, dicom_source_name, study_time
from medfuse.record.case import ECG, CXRImage, PatientCase

# Projection radiography (CR, DX and the older RG/DR) plus objects that often carry a
# digitised or converted chest film (secondary capture, "other") or no modality at all.
# Cross-sectional slices (CT, MR, PT, ...) are not chest radiographs and are skipped
# unless the caller asks for every modality.
RADIOGRAPH_MODALITIES: frozenset[str] = frozenset({"CR", "DX", "RG", "DR", "OT", "SC", ""})
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
# Exceptions pydicom and its decoders raise for damaged or unsupported data. Reading a
# user's file, any of them means "this file cannot be read", not a bug in medfuse.
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError,
                struct.error, NotImplementedError, RuntimeError, OverflowError)
# pydicom warns (instead of raising) when a file ends inside an element or a sequence.
_TRUNCATION_WARNING = re.compile(r"end of file|unexpected end|cut short|fewer bytes|expected.*bytes", re.IGNORECASE)
_VIEW_POSITIONS = {
    "PA": "PA", "AP": "AP", "LL": "LATERAL", "RL": "LATERAL", "LAT": "LATERAL", "LATERAL": "LATERAL",
    "LLD": "LATERAL", "RLD": "LATERAL",  # decubitus films are lateral projections too
}
# DICOM CID 4010 'DX View' code meanings, used when View Position is empty.
_VIEW_CODE_MEANINGS = {
    "postero-anterior": "PA", "antero-posterior": "AP", "lateral": "LATERAL",
    "left lateral": "LATERAL", "right lateral": "LATERAL",
}


# ---------------------------------------------------------------- small helpers

def _view(ds) -> str | None:
    raw = str(ds.get("ViewPosition", "") or "").strip().upper()
    if raw:
        return _VIEW_POSITIONS.get(raw, raw)
    for item in ds.get("ViewCodeSequence", None) or []:
        meaning = str(item.get("CodeMeaning", "") or "").strip().lower()
        if meaning in _VIEW_CODE_MEANINGS:
            return _VIEW_CODE_MEANINGS[meaning]
    return None


def _pixel_spacing(ds, report: ImportReport | None) -> tuple[float, float] | None:
    """(row, column) spacing in mm: Pixel Spacing when valid, else Imager Pixel Spacing
    (the detector plane, which is what CR/DX files often carry alone)."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            if report is not None:
                report.note(f"unreadable {keyword} ignored")
            continue
        if row > 0 and col > 0 and np.isfinite(row) and np.isfinite(col):
            return row, col
        if report is not None:
            report.note(f"non-positive {keyword} ignored")
    return None


# ---------------------------------------------------------------- reading

def read_dicom_dataset(path: str | Path, stop_before_pixels: bool = False, report: ImportReport | None = None):
    """`pydicom.dcmread` with the failures a user can cause turned into `InputError`:
    missing file, not DICOM, and a file that ends early (pydicom only warns about that)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            raise InputError(path, "not a DICOM file (no DICM header)") from None
        except _READ_ERRORS as e:
            raise InputError(path, f"cannot read DICOM file, it may be cut short or damaged ({e.__class__.__name__})") from None
    if any(_TRUNCATION_WARNING.search(str(w.message)) for w in caught) or _ends_inside_last_element(
            ds, path, whole_file=not stop_before_pixels):
        raise InputError(path, "DICOM file is cut short (it ends inside a data element)")
    if len(ds) == 0:
        raise InputError(path, "DICOM file holds no data elements (it may be cut short)")
    if report is not None:
        # Non-conformant header values are common and harmless for reading pixels; count
        # them rather than print pydicom's warnings for every file.
        n_other = sum(1 for w in caught if not issubclass(w.category, ResourceWarning))
        if n_other:
            report.note("DICOM header value not standard-conformant", n_other)
    return ds


def _ends_inside_last_element(ds, path: Path, whole_file: bool) -> bool:
    """True when the file ends inside its last element (its value or its header).

    pydicom reads a short final value, and stops at a partial element header, without
    complaint (only unterminated sequences warn), so a file cut short would pass as a
    smaller dataset. Right after `dcmread` the elements are still raw, with their declared
    length and file offset: the last one must end exactly where the file does (when the
    whole file was read) and never beyond it.
    """
    tags = list(ds.keys())
    if not tags:
        return False
    raw = ds.get_item(max(tags))
    length, offset = getattr(raw, "length", None), getattr(raw, "value_tell", None)
    if length is None or offset is None or length == 0xFFFFFFFF:  # undefined length: delimiter checked by pydicom
        return False
    size = path.stat().st_size
    return offset + length > size or (whole_file and offset + length < size)


def _has_pixels(ds) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def dicom_display_pixels(ds, name: str | Path, report: ImportReport | None = None) -> np.ndarray:
    """Display-ready 2-D pixels of a single-frame DICOM image: uint8 for sources of 8 bits
    or fewer, else uint16; 0 is black. Raises `InputError` for no pixel data, a multi-frame
    (3-D) object, or pixel data that cannot be decoded."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    if not _has_pixels(ds):
        raise InputError(name, "DICOM file has no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputError(name, f"DICOM object is a 3-D volume ({frames} frames); a single 2-D image is expected")
    _check_pixel_count(ds, name)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        raw = ds.pixel_array
    except _READ_ERRORS as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        if "less than expected" in first_line or "cut short" in first_line:
            raise InputError(name, "DICOM pixel data is cut short") from None
        syntax = f" ({ts.name})" if ts is not None else ""
        raise InputError(name, f"cannot decode DICOM pixel data{syntax}: {first_line[:160]}") from None

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    bits_stored = int(ds.get("BitsStored", 8 if raw.dtype.itemsize == 1 else 16) or 16)
    out_dtype = np.uint8 if bits_stored <= 8 else np.uint16
    out_max = float(np.iinfo(out_dtype).max)

    if photometric not in _MONOCHROME:
        rgb = apply_color_lut(raw, ds) if photometric == "PALETTE COLOR" else raw
        if rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise InputError(name, f"DICOM image has an unsupported shape {tuple(raw.shape)} for {photometric}")
        # rows, cols, 3 -> rows, cols. pydicom returns YBR data already converted to RGB.
        if report is not None:
            report.note("colour DICOM image converted to grayscale")
        lum = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma
        src_max = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "ui" else max(float(lum.max()), 1.0)
        return np.rint(np.clip(lum / src_max, 0, 1) * out_max).astype(out_dtype)

    if raw.ndim != 2:
        raise InputError(name, f"DICOM object is not a 2-D image (pixel array shape {tuple(raw.shape)})")

    values = apply_modality_lut(raw, ds)  # rows, cols; float when rescaled
    values, lo, hi = _apply_voi(values, ds, name, report)
    if hi <= lo:
        if report is not None:
            report.note("DICOM image with a single grey level")
        display = np.zeros(values.shape, dtype=np.float64)
    else:
        display = np.clip((values.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0) * out_max
    pixels = np.rint(display).astype(out_dtype)
    if photometric == "MONOCHROME1":
        # MONOCHROME1: the lowest value is white; flip (after rounding, so that it is an
        # exact mirror) so that 0 is black as in MONOCHROME2.
        pixels = out_dtype(out_max) - pixels
    return pixels


def _check_pixel_count(ds, name: str | Path) -> None:
    """Refuse to decode more pixels than Pillow's decompression-bomb limit: a compressed
    frame of a few bytes can declare 65535 x 65535 pixels, gigabytes once decoded. The same
    limit as for PNG/JPEG (`Image.MAX_IMAGE_PIXELS`), so no image format is a way around it."""
    from PIL import Image

    rows, cols = _int(ds.get("Rows")), _int(ds.get("Columns"))
    samples = max(1, _int(ds.get("SamplesPerPixel"), 1))
    if rows <= 0 or cols <= 0:
        raise InputError(name, "DICOM image has no size (Rows/Columns missing or 0)")
    if Image.MAX_IMAGE_PIXELS and rows * cols * samples > Image.MAX_IMAGE_PIXELS:
        raise InputError(name, f"DICOM image of {rows} x {cols} pixels is larger than {Image.MAX_IMAGE_PIXELS} "
                               "pixels (refused as a possible decompression bomb)")


def _apply_voi(values: np.ndarray, ds, name: str | Path, report: ImportReport | None) -> tuple[np.ndarray, float, float]:
    """Apply the file's VOI LUT or window; return the values and the output range [lo, hi]
    that maps to black..white."""
    from pydicom.pixels import apply_voi, apply_voi_lut, apply_windowing

    voi_items = ds.get("VOILUTSequence") or []
    has_lut = bool(voi_items) and all(voi_items[0].get(k) is not None for k in ("LUTDescriptor", "LUTData"))
    has_window = ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, "")
    if has_lut or has_window:
        if has_lut and values.dtype.kind == "f" and np.array_equal(values, np.round(values)):
            # A rescale with slope 1 gives whole numbers as floats; a LUT is indexed by integers.
            values = values.astype(np.int64)
        try:
            out = apply_voi_lut(values, ds, index=0)
            if has_lut:
                # The LUT's own outputs bound the display range: push every input it maps
                # through it (the descriptor's bit depth is unreliable in real files).
                n_entries, first_mapped = (int(v) for v in list(voi_items[0].LUTDescriptor)[:2])
                n_entries = n_entries or 65536  # 0 means 2**16 entries (PS3.3 C.11.2.1.1)
                lut_out = apply_voi(np.arange(first_mapped, first_mapped + n_entries), ds, index=0)
                return out, float(lut_out.min()), float(lut_out.max())
            # Windowing maps everything below the window to its y_min and above to y_max:
            # sending -inf/+inf through the same pydicom function yields exactly that range.
            bounds = apply_windowing(np.array([-np.inf, np.inf]), ds, index=0)
            return out, float(bounds[0]), float(bounds[1])
        except _READ_ERRORS:
            if report is not None:
                report.note("invalid VOI LUT / window ignored (full value range shown)")
    bits_stored = int(ds.get("BitsStored", 16) or 16)
    rescaled = "RescaleSlope" in ds or "RescaleIntercept" in ds or bool(ds.get("ModalityLUTSequence"))
    if bits_stored <= 8 and int(ds.get("PixelRepresentation", 0) or 0) == 0 and not rescaled:
        # 8-bit unsigned data without a window are already display values: keep them.
        return values, 0.0, float(2**bits_stored - 1)
    # No VOI in the file: show the image's own value range, as viewers do.
    return values, float(np.min(values)), float(np.max(values))


def read_dicom_image(source: str | Path | Any, report: ImportReport | None = None) -> CXRImage:
    """Read one 2-D DICOM image (file path or pydicom Dataset) as a display-ready `CXRImage`.

    The pixels are uint8 (8-bit sources) or uint16, 0 = black, with the modality LUT and
    the first VOI LUT or window applied and MONOCHROME1 inverted. `view` comes from View
    Position (or the View Code Sequence), `pixel_spacing_mm` from Pixel Spacing or Imager
    Pixel Spacing, and `source` is the file name only.

    Raises `InputError` for a file that is not DICOM, is cut short, has no pixel data, is a
    multi-frame (3-D) object, or cannot be decoded.
    """
    import pydicom

    if isinstance(source, pydicom.Dataset):
        ds = source
        name: str | Path = str(getattr(ds, "filename", None) or "<dataset>")
    else:
        name = Path(source)
        ds = read_dicom_dataset(name, report=report)
    pixels = dicom_display_pixels(ds, name, report)
    return CXRImage(
        pixels=pixels,
        view=_view(ds),
        source=dicom_source_name(name, ds),
        pixel_spacing_mm=_pixel_spacing(ds, report),
    )


# ---------------------------------------------------------------- importing

@dataclass
class DicomStudy:
    """The files of one study, found by a header-only pass."""

    key: str  # Study Instance UID; for a file without one its SOP Instance UID or file stem
    files: list[tuple[tuple, Path, bool]] = field(default_factory=list)  # (sort key, path, named by the user)

    @property
    def paths(self) -> list[tuple[Path, bool]]:
        return [(p, named) for _, p, named in sorted(self.files, key=lambda f: f[0])]


def _sources(paths: Iterable[str | Path]) -> list[tuple[Path, bool]]:
    """Files to look at, each with whether the user named it (file or glob) or it was found
    inside a folder. A folder may hold files that are not DICOM at all; a named file must be."""
    out: list[tuple[Path, bool]] = []
    seen: set[Path] = set()
    for s in paths:
        found_in_folder = Path(s).is_dir()
        for p in expand_paths([s]):
            if p not in seen:
                seen.add(p)
                out.append((p, not found_in_folder))
    return out


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def find_dicom_studies(paths: Iterable[str | Path], report: ImportReport, skip_bad: bool = False) -> list[DicomStudy]:
    """Group the DICOM files named by `paths` (files, folders searched recursively, globs)
    by Study Instance UID, reading headers only.

    Files inside a folder that are not DICOM (no DICM header, and not named `.dcm`) and
    DICOMDIR index files are skipped and counted; any other file that cannot be read
    raises `InputError` (with `skip_bad`: skipped and counted).
    """
    studies: dict[str, DicomStudy] = {}
    for path, named in _sources(paths):
        try:
            ds = read_dicom_dataset(path, stop_before_pixels=True)
        except InputError as e:
            if not named and e.problem.startswith("not a DICOM file") and path.suffix.lower() not in (".dcm", ".dicom"):
                report.skip("file in folder is not DICOM")
                continue
            if not skip_bad:
                raise
            report.skip_file(e, "unreadable DICOM file")
            continue
        if str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "")) == _DICOMDIR_SOP_CLASS:
            report.skip("DICOMDIR index file")
            continue
        uid = str(ds.get("StudyInstanceUID", "") or "").strip()
        if not uid:
            # One case per file, keyed like `medfuse import dicom-ecg` does, so that both
            # importers give a file the same case id.
            report.note("DICOM file without a Study Instance UID (one case per file)")
            uid = str(ds.get("SOPInstanceUID", "") or "").strip() or path.stem
        order = (_int(ds.get("SeriesNumber")), _int(ds.get("InstanceNumber")), str(path))
        studies.setdefault(uid, DicomStudy(key=uid)).files.append((order, path, named))
    return list(studies.values())


def import_dicom(paths: Iterable[str | Path], report: ImportReport, skip_bad: bool = False,
                 all_modalities: bool = False, studies: list[DicomStudy] | None = None) -> Iterator[PatientCase]:
    """One `PatientCase` per study among the DICOM files named by `paths`.

    Each chest image of the study becomes a `CXRImage` (see `read_dicom_image`); a
    DICOM waveform ECG of the study becomes the case's `ecg`. `case_id` is a hash of the
    Study Instance UID and `patient_id` a hash of the Patient ID. Images of other
    modalities (CT, MR, ...) are skipped and counted unless `all_modalities`. A named file
    that is unreadable, has no pixel data or is 3-D raises `InputError` (with `skip_bad`:
    skipped and counted); objects without pixels found inside folders (DICOMDIR,
    structured reports) are skipped and counted. `studies` may pass the result of
    `find_dicom_studies` (the CLI does, to size its progress bar).
    """
    import pydicom

    # Lazily: ecg_dicom imports pydicom at module level, and most imports have no ECG.
    from medfuse.io import ecg_dicom

    accepted = None if all_modalities else RADIOGRAPH_MODALITIES
    for study in studies if studies is not None else find_dicom_studies(paths, report, skip_bad):
        images: list[CXRImage] = []
        ecg: ECG | None = None
        first_ds = None
        sources: list[str] = []
        modalities: set[str] = set()
        for path, named in study.paths:
            try:
                ds = read_dicom_dataset(path, report=report)
                has_waveform, has_pixels = "WaveformSequence" in ds, _has_pixels(ds)
                if not has_waveform and not has_pixels:
                    if named:
                        raise InputError(path, "DICOM file has no pixel data")
                    report.skip("DICOM object without pixel data or waveform")
                    continue
                modality = str(ds.get("Modality", "") or "").strip().upper()
                if has_pixels and accepted is not None and modality not in accepted:
                    report.skip(f"DICOM image of modality {modality} (not a radiograph)")
                    has_pixels = False
                    if not has_waveform:
                        continue
                if has_waveform:
                    if ecg is not None:
                        report.skip("second DICOM ECG in the same study")
                    else:
                        ecg = ecg_dicom.read_dicom_ecg(ds, report)
                        ecg.source = dicom_source_name(path, ds)
                if has_pixels:
                    images.append(read_dicom_image(ds, report))
            except InputError as e:
                # Name the file as the user gave it, even when the dataset was passed on.
                if not skip_bad:
                    raise InputError(path, e.problem) from None
                report.skip_file(InputError(path, e.problem), "unreadable DICOM file")
                continue
            first_ds = first_ds if first_ds is not None else ds
            sources.append(dicom_source_name(path, ds))
            if modality:
                modalities.add(modality)
        if first_ds is None or (not images and ecg is None):
            continue
        patient = str(first_ds.get("PatientID", "") or "").strip()
        yield PatientCase(
            case_id=pseudonym(study.key, "dcm"),
            patient_id=pseudonym(patient, "pt") if patient else None,
            time=study_time(first_ds),
            demographics=dicom_demographics(first_ds, report),
            cxr=images,
            ecg=ecg,
            provenance={
                "importer": "dicom",
                "sources": sources,
                "modalities": sorted(modalities),
                "pydicom": pydicom.__version__,
            },
        )
