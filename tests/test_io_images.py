"""Chest-image importers: DICOM (pydicom pipeline), PNG/JPEG, COCO boxes, NIH labels, CLI."""

from __future__ import annotations

import doctest
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from medfuse.cli import main
from medfuse.errors import InputError
from medfuse.io import dicom_header
from medfuse.io.base import ImportReport, pseudonym
from medfuse.io.cohort import write_cohort
from medfuse.io.dicom import import_dicom, read_dicom_image
from medfuse.io.image import import_images, read_image
from medfuse.record import boxes
from medfuse.record.store import read_case, read_index

FIX = Path(__file__).parent / "fixtures"
CXR = FIX / "cxr"
SIIM = CXR / "siim" / "siim_cr_jpeg_baseline.dcm"
RG1 = FIX / "dicom" / "RG1_UNCI.dcm"
CT = FIX / "dicom" / "CT_small.dcm"
NIH_PNG = CXR / "nih" / "00000001_000.png"
NIH_CSV = CXR / "nih" / "nih_labels.csv"
TBX = CXR / "tbx11k"
TBX_COCO = TBX / "tbx11k_subset_coco.json"


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def case_folders(cohort: Path) -> list[Path]:
    return [p for p in cohort.iterdir() if p.is_dir()] if cohort.exists() else []


def one_line_error(err: str, path_part: str) -> str:
    """The CLI's error output: exactly one line, naming the file, no traceback."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("medfuse: error: ") and path_part in lines[0], err
    assert "Traceback" not in err
    return lines[0]


def modified_ct(tmp_path: Path, name: str, **changes) -> Path:
    """A copy of CT_small.dcm with some attributes changed (None deletes one)."""
    ds = pydicom.dcmread(CT)
    for key, value in changes.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    out = tmp_path / name
    ds.save_as(out)
    return out


# ---------------------------------------------------------------- boxes

def test_doctests_pass():
    for module in (boxes, dicom_header):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_grid_boxes_round_trip_within_half_a_step():
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = int(rng.integers(64, 4000)), int(rng.integers(64, 4000))
        x1, x2 = sorted(rng.uniform(0, w, 2))
        y1, y2 = sorted(rng.uniform(0, h, 2))
        back = boxes.grid_to_pixel(boxes.pixel_to_grid([x1, y1, x2, y2], w, h), w, h)
        assert np.allclose(back, [x1, y1, x2, y2], atol=max(w, h) / 999 / 2 + 1e-9)


# ---------------------------------------------------------------- DICOM reading

def test_siim_jpeg_baseline_decodes_to_1024_square_matching_an_independent_decoder():
    img = read_dicom_image(SIIM)
    assert img.pixels.shape == (1024, 1024) and img.pixels.dtype == np.uint8
    assert (img.width, img.height, img.bits) == (1024, 1024, 8)
    assert img.view == "PA" and img.pixel_spacing_mm == (0.168, 0.168)
    assert img.source == SIIM.name
    # The JPEG stream inside the DICOM, decoded by Pillow's libjpeg: the same picture up to
    # IDCT rounding (8-bit MONOCHROME2 without a window is shown as stored).
    ds = pydicom.dcmread(SIIM)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    reference = np.asarray(Image.open(io.BytesIO(frame)).convert("L"), dtype=np.int16)
    diff = np.abs(img.pixels.astype(np.int16) - reference)
    assert diff.max() <= 2 and diff.mean() < 0.05
    assert img.pixels.std() > 20  # a real radiograph, not a flat decode


def test_real_monochrome1_cr_is_windowed_and_inverted():
    img = read_dicom_image(RG1)
    assert img.pixels.dtype == np.uint16 and img.pixels.shape == (1955, 1841)
    assert img.view == "PA" and img.pixel_spacing_mm is None  # the file's 0\0 spacing is ignored
    raw = pydicom.dcmread(RG1).pixel_array.astype(np.float64)
    # DICOM LINEAR window (PS3.3 C.11.2.1.2.1), centre 15000, width 30000, then inverted.
    c, w = 15000 - 0.5, 30000 - 1
    expected = 65535 - np.rint(np.clip((raw - c) / w + 0.5, 0, 1) * 65535)
    assert np.abs(img.pixels.astype(np.float64) - expected).max() <= 1
    # After inversion the lungs are dark: the brightest raw values are now the darkest pixels.
    assert img.pixels[raw == raw.max()].max() < img.pixels[raw == raw.min()].min()


def test_monochrome1_is_the_exact_mirror_of_monochrome2(tmp_path):
    mono2 = read_dicom_image(CT).pixels
    mono1 = read_dicom_image(modified_ct(tmp_path, "m1.dcm", PhotometricInterpretation="MONOCHROME1")).pixels
    assert mono2.dtype == mono1.dtype == np.uint16
    assert np.array_equal(mono1, 65535 - mono2)


def test_window_is_applied_after_the_rescale_to_hounsfield_units(tmp_path):
    # Soft-tissue window 40/400 HU. Without the modality LUT first (intercept -1024) the
    # stored values would sit 1024 above the window and the whole image would be white.
    img = read_dicom_image(modified_ct(tmp_path, "w.dcm", WindowCenter=40, WindowWidth=400))
    hu = pydicom.pixels.apply_modality_lut(pydicom.dcmread(CT).pixel_array, pydicom.dcmread(CT))
    assert np.all(img.pixels[hu <= -160] == 0)
    assert np.all(img.pixels[hu > 240] == 65535)
    inside = (hu > -100) & (hu < 200)
    assert inside.any() and np.all((img.pixels[inside] > 0) & (img.pixels[inside] < 65535))


def test_voi_lut_sequence_wins_over_the_window(tmp_path):
    ds = pydicom.dcmread(CT)
    hu = ds.pixel_array.astype(np.int64) - 1024  # Rescale Intercept -1024
    # An inverting 12-bit VOI LUT over 0..1023 HU, beside a window it must take precedence over.
    lut = (4095 - np.arange(1024) * 4).astype("<u2")
    item = pydicom.Dataset()
    item.add_new(0x00283002, "US", [1024, 0, 12])  # LUT Descriptor: entries, first input, bits
    item.add_new(0x00283006, "OW", lut.tobytes())  # LUT Data
    ds.VOILUTSequence = [item]
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.save_as(tmp_path / "lut.dcm")
    pixels = read_dicom_image(tmp_path / "lut.dcm").pixels
    looked_up = lut[np.clip(hu, 0, 1023)].astype(np.float64)  # inputs outside the LUT clamp to its ends
    expected = np.rint((looked_up - lut.min()) / (lut.max() - lut.min()) * 65535)
    assert np.array_equal(pixels, expected.astype(np.uint16))


def test_invalid_window_falls_back_to_the_value_range_and_is_counted(tmp_path):
    report = ImportReport("dicom")
    img = read_dicom_image(modified_ct(tmp_path, "w0.dcm", WindowCenter=40, WindowWidth=0), report)
    assert np.array_equal(img.pixels, read_dicom_image(CT).pixels)
    assert report.notes["invalid VOI LUT / window ignored (full value range shown)"] == 1


@pytest.mark.parametrize("syntax", [pydicom.uid.RLELossless, pydicom.uid.JPEG2000Lossless], ids=["rle", "j2k"])
def test_lossless_compressed_copies_decode_to_the_same_pixels(tmp_path, syntax):
    ds = pydicom.dcmread(CT)
    ds.compress(syntax)  # RLE natively, JPEG 2000 through pylibjpeg-openjpeg
    ds.save_as(tmp_path / "c.dcm")
    assert np.array_equal(read_dicom_image(tmp_path / "c.dcm").pixels, read_dicom_image(CT).pixels)


def test_undecodable_transfer_syntax_is_an_input_error(tmp_path):
    ds = pydicom.dcmread(CT)
    ds.compress(pydicom.uid.RLELossless)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML  # video: no image decoder
    ds.save_as(tmp_path / "video.dcm")
    with pytest.raises(InputError, match=r"cannot decode DICOM pixel data \(MPEG2"):
        read_dicom_image(tmp_path / "video.dcm")


@pytest.mark.parametrize(
    ("source", "keep"),
    [(s, k) for s in (SIIM, CT) for k in (700, 1500, 0.3, 0.6, 0.95)] + [(CT, -1)],
)
def test_dicom_cut_short_is_an_input_error(tmp_path, source, keep):
    # Cut inside the header (700/1500 bytes), inside the pixel data, and (native data, whose
    # last element has a declared length) one byte short.
    data = source.read_bytes()
    size = len(data) - 1 if keep == -1 else int(len(data) * keep) if keep < 1 else keep
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:size])
    with pytest.raises(InputError) as e:
        read_dicom_image(cut)
    assert "cut short" in e.value.problem and e.value.path == str(cut)


def test_dicom_without_pixel_data_is_an_input_error(tmp_path):
    path = modified_ct(tmp_path, "nopix.dcm", PixelData=None)
    with pytest.raises(InputError, match="no pixel data"):
        read_dicom_image(path)


def test_multiframe_dicom_is_rejected_as_3d(tmp_path):
    ds = pydicom.dcmread(CT)
    ds.NumberOfFrames = 3
    ds.PixelData = ds.PixelData * 3  # three 128x128 slices: a volume
    path = tmp_path / "volume.dcm"
    ds.save_as(path)
    with pytest.raises(InputError, match=r"3-D volume \(3 frames\)"):
        read_dicom_image(path)


def test_text_file_named_dcm_is_not_dicom(tmp_path):
    fake = tmp_path / "fake.dcm"
    fake.write_text("not a DICOM file\n")
    with pytest.raises(InputError, match="not a DICOM file"):
        read_dicom_image(fake)


# ---------------------------------------------------------------- DICOM importing

def test_dicom_study_becomes_one_case_with_hashed_ids(tmp_path):
    # A second view of the same study: same Study Instance UID, another instance.
    ds = pydicom.dcmread(SIIM)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.ViewPosition = "LL"
    ds.PatientAge = "042Y"
    ds.InstanceNumber = 2
    folder = tmp_path / "study"
    folder.mkdir()
    shutil.copy(SIIM, folder / "a.dcm")
    ds.save_as(folder / "b.dcm")
    (folder / "README.txt").write_text("notes about the study")

    report = ImportReport("dicom")
    [case] = list(import_dicom([folder], report))
    raw = pydicom.dcmread(SIIM)
    assert [img.view for img in case.cxr] == ["PA", "LATERAL"]
    assert case.case_id.startswith("dcm-") and raw.StudyInstanceUID not in case.model_dump_json()
    assert case.patient_id == dicom_header.pseudonym(raw.PatientID, "pt")
    assert str(raw.PatientID) not in (case.patient_id or "")
    assert case.demographics.age == 62 and case.demographics.sex == "M"
    assert report.skipped["file in folder is not DICOM"] == 1


def test_age_string_in_years_and_other_modalities_skipped(tmp_path):
    aged = modified_ct(tmp_path, "aged.dcm", PatientAge="042Y", Modality="DX")
    [case] = list(import_dicom([aged], ImportReport("dicom")))
    assert case.demographics.age == 42
    report = ImportReport("dicom")
    assert list(import_dicom([CT], report)) == []  # a CT slice is not a radiograph
    assert report.skipped["DICOM image of modality CT (not a radiograph)"] == 1
    assert len(list(import_dicom([CT], ImportReport("dicom"), all_modalities=True))) == 1


def test_dicom_ecg_in_the_study_lands_on_the_case(tmp_path):
    ecg_ds = pydicom.dcmread(pydicom.data.get_testdata_file("waveform_ecg.dcm"))
    ecg_ds.StudyInstanceUID = pydicom.dcmread(SIIM, stop_before_pixels=True).StudyInstanceUID
    ecg_ds.save_as(tmp_path / "ecg.dcm")
    shutil.copy(SIIM, tmp_path / "cxr.dcm")
    [case] = list(import_dicom([tmp_path / "cxr.dcm", tmp_path / "ecg.dcm"], ImportReport("dicom")))
    assert len(case.cxr) == 1 and case.ecg is not None
    assert case.ecg.fs == 1000 and case.ecg.signal.shape == (10000, 12)
    assert case.ecg.leads[:3] == ["I", "II", "III"] and case.ecg.source == "ecg.dcm"


def test_dicom_import_round_trip_keeps_16_bit_pixels(tmp_path):
    report = ImportReport("dicom")
    write_cohort(import_dicom([RG1], report), tmp_path / "cohort", report, quiet=True)
    [folder] = case_folders(tmp_path / "cohort")
    back = read_case(folder)
    original = read_dicom_image(RG1).pixels
    assert back.cxr[0].pixels.dtype == np.uint16
    assert np.array_equal(back.cxr[0].pixels, original)
    # The file name holds part of the fixture's Patient Name (CompressedSamples^RG1): stored as a pseudonym.
    assert back.cxr[0].view == "PA" and back.cxr[0].source == pseudonym("RG1_UNCI.dcm", "file") + ".dcm"


# ---------------------------------------------------------------- PNG / JPEG

def test_png_import_round_trip_keeps_pixels_and_nih_labels(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "import", "image", str(NIH_PNG), "--labels-csv", str(NIH_CSV),
                           "--out", str(tmp_path / "c"), "--json")
    assert code == 0 and json.loads(out)["cases_written"] == 1
    case = read_case(tmp_path / "c" / "00000001_000")
    original = np.asarray(Image.open(NIH_PNG))
    assert case.cxr[0].pixels.dtype == np.uint8 and np.array_equal(case.cxr[0].pixels, original)
    assert [f.label for f in case.labels.findings] == ["Cardiomegaly"] and case.labels.findings[0].boxes == []
    assert case.labels.diagnoses == []  # cardiomegaly is a finding, not a panel disease
    assert (case.patient_id, case.demographics.age, case.demographics.sex) == ("1", 57, "M")
    assert case.cxr[0].view == "PA"
    # NIH gives the spacing of the 2682x2749 original; the 512 px copy has larger pixels.
    assert case.cxr[0].pixel_spacing_mm == pytest.approx((0.143 * 2749 / 512, 0.143 * 2682 / 512))
    assert read_index(tmp_path / "c")["n_findings"].tolist() == [1]


def test_nih_pneumonia_label_becomes_a_panel_diagnosis(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("Image Index,Finding Labels\n00000001_000.png,Pneumonia|Pleural_Thickening\n")
    [case] = list(import_images([NIH_PNG], ImportReport("image"), labels_csv=csv))
    assert [f.label for f in case.labels.findings] == ["Pneumonia", "Pleural Thickening"]
    assert case.labels.disease_names() == ["pneumonia"]


def test_nih_no_finding_is_a_known_negative_and_unlisted_images_are_counted(tmp_path):
    shutil.copy(NIH_PNG, tmp_path / "00027426_000.png")  # the CSV's "No Finding" row
    shutil.copy(NIH_PNG, tmp_path / "unlisted.png")
    report = ImportReport("image")
    cases = {c.case_id: c for c in import_images([tmp_path], report, labels_csv=NIH_CSV)}
    assert cases["00027426_000"].labels is not None and cases["00027426_000"].labels.findings == []
    assert cases["00027426_000"].demographics.age == 53
    assert cases["unlisted"].labels is None
    assert report.notes["image not in the labels CSV"] == 1


def test_sixteen_bit_png_stays_sixteen_bit_and_rgb_becomes_gray(tmp_path):
    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(64, 48) * 21).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    img = read_image(tmp_path / "deep.png")
    assert img.pixels.dtype == np.uint16 and np.array_equal(img.pixels, ramp)
    tb = TBX / "imgs" / "tb" / "tb0005.png"
    assert Image.open(tb).mode == "RGB"
    gray = read_image(tb).pixels
    assert gray.shape == (512, 512) and gray.dtype == np.uint8
    assert np.array_equal(gray, np.asarray(Image.open(tb).convert("L")))


def test_coco_boxes_land_on_the_grid(tmp_path):
    report = ImportReport("image")
    cases = {c.case_id: c for c in import_images([TBX / "imgs"], report, coco=TBX_COCO)}
    # tb0005 bbox [381.834, 126.873, 40.237, 44.566] px on 512x512:
    # 381.834/512*999 = 745.02, 126.873/512*999 = 247.55, 422.071/512*999 = 823.53, 171.439/512*999 = 334.51
    [finding] = cases["tb0005"].labels.findings
    assert finding.label == "ActiveTuberculosis" and finding.boxes == [[745, 248, 824, 335]]
    assert cases["tb0005"].cxr[0].findings == []  # ground truth is a label, not an input
    # two boxes of one category on one image share a finding
    [finding] = cases["tb0007"].labels.findings
    assert finding.label == "ObsoletePulmonaryTuberculosis" and len(finding.boxes) == 2
    assert finding.boxes[1] == [281, 103, 527, 330]
    # listed in the COCO file without annotations: a known negative, not "unknown"
    assert cases["h0001"].labels is not None and cases["h0001"].labels.findings == []


def test_coco_boxes_follow_a_resized_copy(tmp_path):
    # Annotations were drawn on 512x512; a 256x256 copy still gets the same grid box.
    (tmp_path / "tb").mkdir()
    Image.open(TBX / "imgs" / "tb" / "tb0005.png").resize((256, 256)).save(tmp_path / "tb" / "tb0005.png")
    report = ImportReport("image")
    [case] = list(import_images([tmp_path / "tb" / "tb0005.png"], report, coco=TBX_COCO))
    assert case.labels.findings[0].boxes == [[745, 248, 824, 335]]
    assert report.notes["image size differs from its COCO entry (boxes scaled)"] == 1


def test_broken_coco_annotations_are_counted_not_fatal(tmp_path):
    data = json.loads(TBX_COCO.read_text())
    data["annotations"] += [
        {"id": 90, "image_id": 1, "category_id": 1, "bbox": [10, 10, -5, 4]},
        {"id": 91, "image_id": 1, "category_id": 77, "bbox": [10, 10, 5, 4]},
        {"id": 92, "image_id": 999, "category_id": 1, "bbox": [10, 10, 5, 4]},
        {"id": 93, "image_id": 1, "category_id": 1, "segmentation": [[1, 2, 3, 4]]},
    ]
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps(data))
    report = ImportReport("image")
    cases = {c.case_id: c for c in import_images([TBX / "imgs" / "tb"], report, coco=coco)}
    assert cases["tb0005"].labels.findings[0].boxes == [[745, 248, 824, 335]]
    assert sum(report.skipped.values()) == 4


def test_multiframe_image_and_truncated_png_are_input_errors(tmp_path):
    frames = [Image.fromarray(np.full((32, 32), v, dtype=np.uint8)) for v in (0, 128, 255)]
    frames[0].save(tmp_path / "stack.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(InputError, match="3 frames"):
        read_image(tmp_path / "stack.tif")
    data = NIH_PNG.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut short"):
        read_image(tmp_path / "cut.png")


# ---------------------------------------------------------------- CLI and bad input

def _text_file(tmp_path: Path, name: str) -> Path:
    p = tmp_path / name
    p.write_text("this is a text file, not an image\n")
    return p


def _no_pixels(tmp_path: Path) -> Path:
    return modified_ct(tmp_path, "nopix.dcm", PixelData=None, Modality="CR")


def _cut_short(tmp_path: Path) -> Path:
    p = tmp_path / "cut.dcm"
    p.write_bytes(SIIM.read_bytes()[:60000])
    return p


def _volume(tmp_path: Path) -> Path:
    ds = pydicom.dcmread(CT)
    ds.Modality, ds.NumberOfFrames, ds.PixelData = "DX", 2, ds.PixelData * 2
    p = tmp_path / "vol.dcm"
    ds.save_as(p)
    return p


@pytest.mark.parametrize(
    ("verb", "make", "problem"),
    [
        ("dicom", _no_pixels, "no pixel data"),
        ("dicom", _cut_short, "cut short"),
        ("dicom", lambda t: _text_file(t, "note.dcm"), "not a DICOM file"),
        ("dicom", _volume, "3-D volume"),
        ("image", lambda t: _text_file(t, "note.png"), "not an image file"),
    ],
    ids=["no-pixels", "cut-short", "text-as-dcm", "volume", "text-as-png"],
)
def test_cli_bad_input_exits_nonzero_with_one_line_and_no_case(tmp_path, capsys, verb, make, problem):
    bad = make(tmp_path)
    cohort = tmp_path / "cohort"
    code, _, err = run_cli(capsys, "import", verb, str(bad), "--out", str(cohort))
    assert code == 2
    line = one_line_error(err, str(bad))
    assert problem in line
    assert case_folders(cohort) == []


def test_cli_bad_coco_file_stops_before_writing(tmp_path, capsys):
    coco = tmp_path / "coco.json"
    coco.write_text("{not json")
    code, _, err = run_cli(capsys, "import", "image", str(NIH_PNG), "--coco", str(coco), "--out", str(tmp_path / "c"))
    assert code == 2 and "invalid JSON" in one_line_error(err, str(coco))
    assert not (tmp_path / "c").exists()


def test_cli_skip_bad_keeps_good_files_and_counts_the_rest(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SIIM, folder / "good.dcm")
    _cut_short(folder)
    code, out, _ = run_cli(capsys, "import", "dicom", str(folder), "--out", str(tmp_path / "c"), "--skip-bad", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["cases_written"] == 1
    assert summary["skipped"] == {"unreadable DICOM file": 1}
    # importing again without --overwrite keeps the case and says so
    code, out, _ = run_cli(capsys, "import", "dicom", str(folder / "good.dcm"), "--out", str(tmp_path / "c"), "--json")
    assert code == 0 and json.loads(out)["skipped"] == {"case already in the cohort (use --overwrite)": 1}


def test_cli_takes_an_absolute_recursive_glob(tmp_path, capsys):
    pattern = str(TBX.resolve() / "**" / "*.png")
    code, out, _ = run_cli(capsys, "import", "image", pattern, "--coco", str(TBX_COCO), "--out", str(tmp_path / "c"),
                           "--json")
    assert code == 0 and json.loads(out)["cases_written"] == 3
    assert sorted(read_index(tmp_path / "c")["case_id"]) == ["h0001", "tb0005", "tb0007"]


# ---------------------------------------------------------------- hostile images and identifiers in file names

def _png_bomb() -> bytes:
    """A tiny PNG whose header claims 60000 x 60000 pixels."""
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    png[16:24] = struct.pack(">II", 60000, 60000)  # IHDR width, height
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
    return bytes(png)


def test_decompression_bomb_png_is_one_line_or_skipped_and_named(tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_bomb())
    with pytest.raises(InputError, match="decompression bomb"):
        read_image(bomb)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "import", "image", str(bomb), "--out", str(out))
    assert code == 2 and "decompression bomb" in one_line_error(err, "bomb.png")
    # --skip-bad with nothing else to import: still one line and a failure, naming the file.
    code, _, err = run_cli(capsys, "import", "image", str(bomb), "--out", str(out), "--skip-bad")
    assert code == 2 and "no case imported (skipped" in one_line_error(err, "bomb.png")
    code, stdout, _ = run_cli(capsys, "import", "image", str(bomb), str(NIH_PNG), "--out", str(out), "--skip-bad",
                              "--json")
    summary = json.loads(stdout)
    assert code == 0 and summary["cases_written"] == 1 and summary["skipped"]["unreadable image file"] == 1
    assert summary["skipped_files"][0]["file"] == str(bomb)


def test_dicom_claiming_huge_dimensions_is_refused_before_decoding(tmp_path):
    ds = pydicom.dcmread(RG1)
    ds.Rows, ds.Columns = 65535, 65535
    with pytest.raises(InputError, match="decompression bomb"):
        read_dicom_image(ds)


def test_nested_coco_json_is_one_line(tmp_path, capsys):
    coco = tmp_path / "coco.json"
    coco.write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    code, _, err = run_cli(capsys, "import", "image", str(NIH_PNG), "--out", str(tmp_path / "o"), "--coco", str(coco))
    assert code == 2 and "nested too deep" in one_line_error(err, "coco.json")


def test_sop_instance_uid_file_names_never_reach_the_cohort(tmp_path, capsys):
    raw = pydicom.dcmread(SIIM, stop_before_pixels=True)
    uid = str(raw.SOPInstanceUID)
    named = tmp_path / f"{uid}.dcm"  # how PACS exports name their files
    shutil.copy(SIIM, named)
    out = tmp_path / "out"
    code, _, _ = run_cli(capsys, "import", "dicom", str(named), "--out", str(out), "--json")
    assert code == 0
    written = [p for p in out.rglob("*") if p.is_file()]
    for identifier in (uid, str(raw.StudyInstanceUID), str(raw.PatientID)):
        for path in written:
            assert identifier not in path.name and identifier.encode() not in path.read_bytes(), path.name
    [case] = [read_case(p) for p in out.iterdir() if p.is_dir()]
    assert case.cxr[0].source == dicom_header.dicom_source_name(named, raw)
    assert case.cxr[0].source.startswith("file-") and case.cxr[0].source.endswith(".dcm")


def test_jpeg_exif_orientation_is_applied_and_noted_only_when_set(tmp_path):
    pixels = np.zeros((20, 40), dtype=np.uint8)
    pixels[:, :10] = 255  # a bright band on the left edge
    upright, turned = tmp_path / "upright.jpg", tmp_path / "turned.jpg"
    Image.fromarray(pixels).save(upright, quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(pixels).save(turned, quality=95, exif=exif)

    report = ImportReport("image")
    assert read_image(upright, report).pixels.shape == (20, 40)
    assert not report.notes  # nothing to turn: no note (every plain JPEG once got one)
    image = read_image(turned, report)
    assert image.pixels.shape == (40, 20) and image.pixels[:10].mean() > 200  # the band is now on top
    assert report.notes["JPEG EXIF orientation applied"] == 1
