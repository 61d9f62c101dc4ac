"""The patient case: validation, lossless case-folder round trip, cohort index and splits."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from medfuse.errors import InputError
from medfuse.record import (
    ECG,
    CXRImage,
    Demographics,
    Diagnosis,
    Finding,
    LabResult,
    Labels,
    Note,
    PatientCase,
    Variant,
    VitalSigns,
    patient_split,
    read_case,
    read_index,
    write_case,
    write_index,
)

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def full_case(case_id: str = "case-001", patient_id: str = "p1") -> PatientCase:
    rng = np.random.default_rng(0)
    signal = np.round(rng.normal(0, 0.3, size=(5000, 12)) * 1000) / 1000  # on the 1 uV grid
    return PatientCase(
        case_id=case_id,
        patient_id=patient_id,
        time=dt.datetime(2150, 1, 2, 3, 4, 5),
        demographics=Demographics(age=67, sex="F"),
        cxr=[
            CXRImage(pixels=rng.integers(0, 255, size=(240, 256), dtype=np.uint8), view="PA",
                     findings=[Finding(label="consolidation", boxes=[[100, 200, 400, 600]])]),
            CXRImage(pixels=rng.integers(0, 65535, size=(64, 48), dtype=np.uint16), view="LATERAL"),
        ],
        ecg=ECG(signal=signal, fs=500, leads=LEADS),
        labs=[
            LabResult(name="Creatinine", code="creatinine", loinc="2160-0", value=2.4, unit="mg/dL",
                      ref_low=0.5, ref_high=1.2, flag="H", time=dt.datetime(2150, 1, 2, 5)),
            LabResult(name="Troponin T", value=0.01, censored="<", value_text="<0.01", unit="ng/mL"),
        ],
        vitals=[VitalSigns(heart_rate=112, sbp=95, dbp=60, temperature=38.6, spo2=91, resp_rate=24)],
        notes=[Note(text="咳嗽三天，发热。无胸痛。", type="history", lang="zh")],
        genomics=[Variant(gene="EGFR", hgvs="p.L858R", vaf=0.31)],
        labels=Labels(
            diagnoses=[Diagnosis(name="pneumonia", icd10="J18.9"), Diagnosis(name="sepsis", icd10="A41.9")],
            findings=[Finding(label="consolidation", boxes=[[100, 200, 400, 600]])],
            report="Right lower lobe consolidation.",
        ),
        provenance={"importer": "test"},
    )


def test_round_trip_is_lossless(tmp_path):
    case = full_case()
    write_case(case, tmp_path / "a")
    back = read_case(tmp_path / "a")
    assert np.array_equal(back.ecg.signal, case.ecg.signal)
    assert back.ecg.leads == LEADS and back.ecg.fs == 500
    for a, b in zip(back.cxr, case.cxr):
        assert a.pixels.dtype == b.pixels.dtype
        assert np.array_equal(a.pixels, b.pixels)
    # everything in case.json survives, and a second write/read is byte-identical
    write_case(back, tmp_path / "b")
    again = read_case(tmp_path / "b")
    assert again.model_dump() == back.model_dump()
    assert (tmp_path / "a" / "case.json").read_bytes() == (tmp_path / "b" / "case.json").read_bytes()
    assert back.labs[1].censored == "<" and back.notes[0].text.startswith("咳嗽")
    assert back.labels.disease_names() == ["pneumonia", "sepsis"]


def test_ecg_off_grid_is_rounded_to_adc_gain(tmp_path):
    sig = np.array([[0.12345], [-1.00049]])
    write_case(PatientCase(case_id="x", ecg=ECG(signal=sig, fs=250, leads=["II"])), tmp_path / "x")
    back = read_case(tmp_path / "x").ecg.signal
    assert np.allclose(back, sig, atol=0.5 / 1000)


def test_ecg_large_amplitude_uses_32_bit(tmp_path):
    sig = np.array([[40.0], [-45.5], [0.001]])  # beyond int16 at 1000/mV
    write_case(PatientCase(case_id="big", ecg=ECG(signal=sig, fs=100, leads=["I"])), tmp_path / "big")
    assert np.array_equal(read_case(tmp_path / "big").ecg.signal, sig)


def test_validation_rejects_bad_parts():
    with pytest.raises(ValueError):
        Finding(label="x", boxes=[[10, 10, 5, 20]])
    with pytest.raises(ValueError):
        Finding(label="x", boxes=[[0, 0, 1000, 10]])
    with pytest.raises(ValueError):
        ECG(signal=np.zeros((10, 2)), fs=500, leads=["I"])
    with pytest.raises(ValueError):
        CXRImage(pixels=np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError):
        PatientCase(case_id="bad id/with slash")


def test_modalities_and_first_vitals():
    case = full_case()
    assert case.modalities() == ["cxr", "ecg", "labs", "vitals", "notes", "genomics"]
    assert PatientCase(case_id="empty").modalities() == []
    c = PatientCase(case_id="v", vitals=[
        VitalSigns(time=dt.datetime(2150, 1, 1, 12), heart_rate=80, sbp=120),
        VitalSigns(time=dt.datetime(2150, 1, 1, 8), heart_rate=100),
    ])
    v = c.first_vitals()
    assert v.heart_rate == 100 and v.sbp == 120


def test_summary_lists_modalities_flagged_labs_and_labels_without_identifiers():
    from medfuse.record.summary import summarise_case

    lines = summarise_case(full_case())
    text = "\n".join(lines)
    assert lines[0] == "case case-001" and "  demographics: 67 y, F" in lines
    assert "  modalities: cxr, ecg, labs, vitals, notes, genomics" in lines
    assert "     H Creatinine: 2.4 mg/dL (ref 0.5-1.2)" in lines and "labs: 2 result(s), 1 flagged" in text
    assert "ecg: 12 lead(s)" in text and "labels: pneumonia, sepsis" in text
    assert "p1" not in text  # the patient id is not printed


def test_corrupt_case_json_is_one_clear_error(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "case.json").write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON"):
        read_case(tmp_path / "c")
    (tmp_path / "c" / "case.json").write_text(json.dumps({"case_id": "c", "demographics": {"age": -3}}))
    with pytest.raises(InputError, match="demographics.age"):
        read_case(tmp_path / "c")


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import medfuse.record.store as store

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store, "write_wfdb", boom)
    with pytest.raises(RuntimeError):
        write_case(full_case(), tmp_path / "case-001")
    assert list(tmp_path.iterdir()) == []


def test_index_and_patient_level_split(tmp_path):
    for i in range(30):
        write_case(PatientCase(case_id=f"c{i:02d}", patient_id=f"p{i // 3}",
                               labels=Labels(diagnoses=[Diagnosis(name="pneumonia")] if i % 2 else [])),
                   tmp_path / f"c{i:02d}")
    df = write_index(tmp_path)
    assert len(df) == 30 and (tmp_path / "index.parquet").is_file()
    assert read_index(tmp_path)["diagnoses"].tolist().count("pneumonia") == 15
    split = patient_split(df, seed=1)
    # every patient in exactly one split; same seed -> same assignment, regardless of row order
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    shuffled = patient_split(df.sample(frac=1, random_state=3), seed=1).sort_values("case_id")
    assert shuffled["split"].tolist() == split.sort_values("case_id")["split"].tolist()
    assert set(split["split"]) <= {"train", "val", "test"}
    with pytest.raises(ValueError):
        patient_split(df, fractions=(0.5, 0.5, 0.5))


# ---------------------------------------------------------------- hostile case folders

def _hostile_case(tmp_path: Path, **parts) -> Path:
    (tmp_path / "secret.txt").write_text("SECRET")
    folder = tmp_path / "case"
    folder.mkdir()
    (folder / "case.json").write_text(json.dumps({"case_id": "c1", **parts}))
    return folder


@pytest.mark.parametrize("name", ["../secret.txt", "../../etc/passwd", "/etc/passwd", "link.png"])
@pytest.mark.parametrize("modality", ["cxr", "ecg"])
def test_case_json_cannot_name_files_outside_its_folder(tmp_path, name, modality):
    parts = {"cxr": [{"file": name}]} if modality == "cxr" else {"ecg": {"file": name, "fs": 500, "leads": ["I"]}}
    folder = _hostile_case(tmp_path, **parts)
    (folder / "link.png").symlink_to(tmp_path / "secret.txt")  # a link leading out counts as outside
    (folder / "link.png.hea").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(InputError, match="outside the case folder"):
        read_case(folder)


def test_ecg_header_in_a_case_folder_cannot_name_data_outside_or_an_odd_rate(tmp_path):
    folder = _hostile_case(tmp_path, ecg={"file": "ecg", "fs": 500, "leads": ["I"]})
    (folder / "data.dat").symlink_to(tmp_path / "secret.txt")  # wfdb refuses '../' names, not links
    (folder / "ecg.hea").write_text("ecg 1 500 4\ndata.dat 16 200 16 0 0 0 0 I\n")
    with pytest.raises(InputError, match="outside the record's folder"):
        read_case(folder)
    (folder / "ecg.dat").write_bytes(np.zeros(4, dtype="<i2").tobytes())
    (folder / "ecg.hea").write_text("ecg 1 -500 4\necg.dat 16 200 16 0 0 0 0 I\n")  # wfdb reads it as 250 Hz
    with pytest.raises(InputError, match="implausible ECG sampling rate -500 Hz"):
        read_case(folder)


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000,
                                  "\x00\xff\xfe junk", ""])
def test_malformed_case_json_is_one_input_error(tmp_path, text):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "case.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(InputError, match="invalid JSON"):
        read_case(folder)


def test_decompression_bomb_png_in_a_case_folder_is_refused(tmp_path):
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    png = bytearray(buf.getvalue())
    png[16:24] = struct.pack(">II", 60000, 60000)  # IHDR width, height
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
    folder = _hostile_case(tmp_path, cxr=[{"file": "cxr_0.png"}])
    (folder / "cxr_0.png").write_bytes(bytes(png))
    with pytest.raises(InputError, match="decompression bomb"):
        read_case(folder)


def test_case_json_with_infinite_lab_value_is_refused(tmp_path):
    folder = _hostile_case(tmp_path, labs=[{"name": "Glucose", "value": float("inf")}])
    with pytest.raises(InputError, match="labs.0.value"):
        read_case(folder)


@pytest.mark.parametrize("overwrite", [False, True])
def test_interrupted_write_leaves_no_temporary_folder(tmp_path, monkeypatch, overwrite):
    import medfuse.record.store as store

    if overwrite:
        write_case(full_case(), tmp_path / "case-001")

    def interrupted(*a, **k):
        raise KeyboardInterrupt  # Ctrl-C while the ECG is being written

    monkeypatch.setattr(store, "write_wfdb", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_case(full_case(), tmp_path / "case-001")
    assert [p.name for p in tmp_path.iterdir()] == (["case-001"] if overwrite else [])
    if overwrite:
        assert read_case(tmp_path / "case-001").case_id == "case-001"  # the old case is intact


def test_interrupted_rename_puts_the_old_case_back(tmp_path, monkeypatch):
    write_case(full_case(), tmp_path / "case-001")
    real_rename = type(tmp_path).rename

    def rename(self, target):
        if self.name.startswith(".case-001.") and "old" not in self.name:
            raise KeyboardInterrupt  # between moving the old case away and moving the new one in
        return real_rename(self, target)

    monkeypatch.setattr(type(tmp_path), "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        write_case(full_case(), tmp_path / "case-001")
    assert [p.name for p in tmp_path.iterdir()] == ["case-001"]
