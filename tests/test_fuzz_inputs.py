"""A corpus of malformed and hostile inputs, generated at test time, run through the CLI.

Every entry must give exactly one line on stderr (`medfuse: error: ...`), a non-zero exit,
no traceback, nothing half-written in the output folder, and nothing read from outside
the input tree (a marker file beside the inputs must never reach an output or stdout).
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medfuse.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
MARKER = "MARKER-OUTSIDE-THE-INPUT-7f3a"

# Each entry: (id, build) where build(tmp: Path) -> argv; inputs live in tmp/"in", outputs in
# tmp/"out", the marker file in tmp/"secret.txt" (outside the input tree).
Case = tuple[str, Callable[[Path], list[str]]]


def _input(tmp: Path, name: str, data: bytes | str) -> Path:
    path = tmp / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def _out(tmp: Path) -> str:
    return str(tmp / "out")


def _nested(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def _nested_object(depth: int = 100_000) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def _junk(n: int = 2048, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _png_bytes(width: int = 8, height: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, format="PNG")
    return buf.getvalue()


def _png_bomb() -> bytes:
    """A tiny PNG whose header claims 60000 x 60000 pixels (a decompression bomb)."""
    png = bytearray(_png_bytes())
    # IHDR data starts at byte 16 (8 signature + 4 length + 4 type): width, height (big-endian)
    png[16:24] = struct.pack(">II", 60000, 60000)
    crc = zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF
    png[29:33] = struct.pack(">I", crc)
    return bytes(png)


def _wfdb(tmp: Path, header: str, data: bytes | None = None, name: str = "rec") -> Path:
    hea = _input(tmp, f"{name}.hea", header)
    if data is not None:
        _input(tmp, f"{name}.dat", data)
    return hea


def _wfdb_ok_data() -> bytes:
    return np.zeros((1000, 2), dtype="<i2").tobytes()


def _bundle(*resources: dict) -> str:
    return json.dumps({"resourceType": "Bundle", "type": "collection",
                       "entry": [{"fullUrl": f"urn:uuid:{i}", "resource": r} for i, r in enumerate(resources)]})


_PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-01-01"}
_ENCOUNTER = {"resourceType": "Encounter", "id": "e1", "status": "finished",
              "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
              "subject": {"reference": "Patient/p1"}}


def _document(url: str) -> dict:
    return {"resourceType": "DocumentReference", "id": "d1", "status": "current",
            "subject": {"reference": "Patient/p1"}, "context": {"encounter": [{"reference": "Encounter/e1"}]},
            "content": [{"attachment": {"contentType": "text/plain", "url": url}}]}


def _imaging_study(address: str) -> list[dict]:
    endpoint = {"resourceType": "Endpoint", "id": "ep1", "status": "active",
                "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                                   "code": "direct-project"},
                "payloadType": [{"text": "image"}], "address": address}
    study = {"resourceType": "ImagingStudy", "id": "s1", "status": "available",
             "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e1"},
             "endpoint": [{"reference": "Endpoint/ep1"}],
             "series": [{"uid": "1.2.3", "modality": {"code": "DX"},
                         "instance": [{"uid": "1.2.3.4", "sopClass": {"code": "1.2.840.10008.5.1.4.1.1.1.1"}}]}]}
    return [endpoint, study]


def _fhir(tmp: Path, text: str, name: str = "bundle.json") -> list[str]:
    return ["import", "fhir", str(_input(tmp, name, text)), "--out", _out(tmp)]


def _labs(tmp: Path, text: str | bytes, name: str = "labs.csv") -> list[str]:
    return ["import", "labs-csv", str(_input(tmp, name, text)), "--out", _out(tmp)]


_LAB_HEADER = "case_id,name,value,unit,loinc\n"


def _case_folder(tmp: Path, case: dict | str, extra: dict[str, bytes] | None = None) -> Path:
    folder = tmp / "in" / "case1"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "case.json").write_text(case if isinstance(case, str) else json.dumps(case), encoding="utf-8")
    for name, data in (extra or {}).items():
        (folder / name).write_bytes(data)
    return folder


def _case_with(**parts) -> dict:
    return {"case_id": "c1", **parts}


def _dicom_truncated(tmp: Path, fraction: float) -> Path:
    data = (FIXTURES / "dicom" / "RG1_UNCI.dcm").read_bytes()
    return _input(tmp, "trunc.dcm", data[: int(len(data) * fraction)])


def _dicom_header_only(tmp: Path) -> Path:
    import pydicom

    ds = pydicom.dcmread(FIXTURES / "dicom" / "RG1_UNCI.dcm")
    del ds.PixelData
    path = tmp / "in" / "nopixels.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


def _dicom_huge_dims(tmp: Path) -> Path:
    import pydicom

    ds = pydicom.dcmread(FIXTURES / "dicom" / "RG1_UNCI.dcm")
    ds.Rows, ds.Columns = 65535, 65535
    path = tmp / "in" / "huge.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path)
    return path


def _checkpoint_with(tmp: Path, name: str, data: str) -> str:
    """A copy of the shipped checkpoint with one file replaced."""
    from medfuse.model.locate import shipped_checkpoint

    folder = tmp / "in" / "ckpt"
    shutil.copytree(shipped_checkpoint(), folder)
    (folder / name).write_text(data, encoding="utf-8")
    return str(folder)


def _mimic(tmp: Path, tables: dict[str, bytes]) -> list[str]:
    root = tmp / "in" / "mimic"
    (root / "hosp").mkdir(parents=True, exist_ok=True)
    for name, data in tables.items():
        (root / "hosp" / name).write_bytes(data)
    return ["import", "mimic-iv", str(root), "--out", _out(tmp)]


def _yaml_config(tmp: Path, text: str) -> str:
    return str(_input(tmp, "config.yaml", text))


def _benchmark(tmp: Path, name: str, data: str | bytes) -> list[str]:
    path = _input(tmp, name, data)
    return ["eval", "run", "--model", "openai:http://127.0.0.1:9", "--benchmark", "medqa", "--data", str(path),
            "--out", _out(tmp), "--quiet"]


CORPUS: list[Case] = [
    # ---- DICOM
    ("dicom-empty", lambda t: ["import", "dicom", str(_input(t, "a.dcm", b"")), "--out", _out(t)]),
    ("dicom-junk", lambda t: ["import", "dicom", str(_input(t, "a.dcm", _junk())), "--out", _out(t)]),
    ("dicom-preamble-junk", lambda t: ["import", "dicom", str(_input(t, "a.dcm", b"\0" * 128 + b"DICM" + _junk(512))),
                                       "--out", _out(t)]),
    ("dicom-text", lambda t: ["import", "dicom", str(_input(t, "a.dcm", "not a dicom file\n")), "--out", _out(t)]),
    ("dicom-truncated-10pc", lambda t: ["import", "dicom", str(_dicom_truncated(t, 0.1)), "--out", _out(t)]),
    ("dicom-truncated-60pc", lambda t: ["import", "dicom", str(_dicom_truncated(t, 0.6)), "--out", _out(t)]),
    ("dicom-no-pixels", lambda t: ["import", "dicom", str(_dicom_header_only(t)), "--out", _out(t)]),
    ("dicom-huge-dims", lambda t: ["import", "dicom", str(_dicom_huge_dims(t)), "--out", _out(t)]),
    ("diagnose-dicom-junk", lambda t: ["diagnose", str(_input(t, "a.dcm", b"\0" * 128 + b"DICM" + _junk(64)))]),
    ("interpret-ecg-dicom-junk", lambda t: ["interpret", "ecg", str(_input(t, "e.dcm", _junk(300)))]),
    # ---- WFDB
    ("wfdb-empty-header", lambda t: ["import", "wfdb", str(_wfdb(t, "")), "--out", _out(t)]),
    ("wfdb-junk-header", lambda t: ["import", "wfdb", str(_wfdb(t, _junk().decode("latin-1"))), "--out", _out(t)]),
    ("wfdb-missing-dat", lambda t: ["import", "wfdb", str(_wfdb(t, "rec 2 500 1000\nrec.dat 16 200 16 0 0 0 0 I\n"
                                                                   "rec.dat 16 200 16 0 0 0 0 II\n")), "--out", _out(t)]),
    ("wfdb-fs-negative", lambda t: ["import", "wfdb", str(_wfdb(t, "rec 2 -500 1000\nrec.dat 16 200 16 0 0 0 0 I\n"
                                                                   "rec.dat 16 200 16 0 0 0 0 II\n", _wfdb_ok_data())),
                                    "--out", _out(t)]),
    ("wfdb-fs-huge", lambda t: ["import", "wfdb", str(_wfdb(t, "rec 2 1e12 1000\nrec.dat 16 200 16 0 0 0 0 I\n"
                                                               "rec.dat 16 200 16 0 0 0 0 II\n", _wfdb_ok_data())),
                                "--out", _out(t)]),
    ("wfdb-zero-signals", lambda t: ["import", "wfdb", str(_wfdb(t, "rec 0 500 1000\n")), "--out", _out(t)]),
    ("wfdb-truncated-dat", lambda t: ["import", "wfdb", str(_wfdb(t, "rec 2 500 1000\nrec.dat 16 200 16 0 0 0 0 I\n"
                                                                     "rec.dat 16 200 16 0 0 0 0 II\n", b"\x01\x02\x03")),
                                      "--out", _out(t)]),
    ("wfdb-signal-count-mismatch", lambda t: ["import", "wfdb", str(_wfdb(t, "rec 3 500 1000\nrec.dat 16 200 16 0 0 0 0 I\n",
                                                                           _wfdb_ok_data())), "--out", _out(t)]),
    ("interpret-ecg-junk-header", lambda t: ["interpret", "ecg", str(_wfdb(t, "garbage line\n", _junk()))]),
    # ---- images
    ("png-empty", lambda t: ["import", "image", str(_input(t, "a.png", b"")), "--out", _out(t)]),
    ("png-junk", lambda t: ["import", "image", str(_input(t, "a.png", _junk())), "--out", _out(t)]),
    ("png-truncated", lambda t: ["import", "image", str(_input(t, "a.png", _png_bytes(64, 64)[:60])), "--out", _out(t)]),
    ("png-bomb", lambda t: ["import", "image", str(_input(t, "a.png", _png_bomb())), "--out", _out(t)]),
    ("png-bomb-skip-bad", lambda t: ["import", "image", str(_input(t, "a.png", _png_bomb())), "--out", _out(t),
                                     "--skip-bad"]),
    ("jpg-text", lambda t: ["import", "image", str(_input(t, "a.jpg", "hello\n")), "--out", _out(t)]),
    ("coco-nested", lambda t: ["import", "image", str(_input(t, "a.png", _png_bytes())), "--out", _out(t),
                               "--coco", str(_input(t, "coco.json", _nested_object()))]),
    ("nih-labels-junk", lambda t: ["import", "image", str(_input(t, "a.png", _png_bytes())), "--out", _out(t),
                                   "--labels-csv", str(_input(t, "labels.csv", _junk()))]),
    ("diagnose-png-bomb", lambda t: ["diagnose", str(_input(t, "a.png", _png_bomb()))]),
    # ---- FHIR
    ("fhir-empty", lambda t: _fhir(t, "")),
    ("fhir-null", lambda t: _fhir(t, "null")),
    ("fhir-list", lambda t: _fhir(t, "[1, 2, 3]")),
    ("fhir-nested-array", lambda t: _fhir(t, _nested())),
    ("fhir-nested-object", lambda t: _fhir(t, _nested_object())),
    ("fhir-wrong-type", lambda t: _fhir(t, json.dumps({"resourceType": "NotAThing", "id": "x"}))),
    ("fhir-junk", lambda t: ["import", "fhir", str(_input(t, "b.json", _junk())), "--out", _out(t)]),
    ("fhir-ndjson-broken", lambda t: _fhir(t, json.dumps(_PATIENT) + "\n{broken\n", name="Patient.ndjson")),
    ("fhir-gz-not-gzip", lambda t: ["import", "fhir", str(_input(t, "b.json.gz", b"plain text")), "--out", _out(t)]),
    ("fhir-attachment-parent", lambda t: _fhir(t, _bundle(_PATIENT, _ENCOUNTER, _document("../secret.txt")))),
    ("fhir-attachment-absolute", lambda t: _fhir(t, _bundle(_PATIENT, _ENCOUNTER, _document(str(t / "secret.txt"))))),
    ("fhir-attachment-file-url", lambda t: _fhir(t, _bundle(_PATIENT, _ENCOUNTER,
                                                            _document((t / "secret.txt").as_uri())))),
    ("fhir-endpoint-parent", lambda t: _fhir(t, _bundle(_PATIENT, _ENCOUNTER, *_imaging_study("../secret.txt")))),
    ("fhir-endpoint-file-url", lambda t: _fhir(t, _bundle(_PATIENT, _ENCOUNTER,
                                                          *_imaging_study((t / "secret.txt").as_uri())))),
    # ---- labs CSV
    ("labs-empty", lambda t: _labs(t, "")),
    ("labs-header-only", lambda t: _labs(t, _LAB_HEADER)),
    ("labs-missing-columns", lambda t: _labs(t, "foo,bar\n1,2\n")),
    ("labs-utf16", lambda t: _labs(t, (_LAB_HEADER + "c1,Glucose,5.5,mmol/L,2345-7\n").encode("utf-16"))),
    ("labs-junk", lambda t: _labs(t, _junk())),
    ("labs-glucose-1e308", lambda t: _labs(t, _LAB_HEADER + "c1,Glucose,1e308,mg/dL,2345-7\n")),
    ("labs-infinite", lambda t: _labs(t, _LAB_HEADER + "c1,Potassium,inf,mmol/L,2823-3\n")),
    ("labs-gz-not-gzip", lambda t: _labs(t, b"not gzip at all", name="labs.csv.gz")),
    # ---- case folders (case.json)
    ("case-empty", lambda t: ["show", str(_case_folder(t, ""))]),
    ("case-not-object", lambda t: ["show", str(_case_folder(t, "[1, 2]"))]),
    ("case-no-id", lambda t: ["show", str(_case_folder(t, {"age": 3}))]),
    ("case-nested", lambda t: ["show", str(_case_folder(t, _nested_object()))]),
    ("case-bad-types", lambda t: ["show", str(_case_folder(t, _case_with(demographics={"age": "old"})))]),
    ("case-ecg-outside", lambda t: ["interpret", "ecg", str(_case_folder(
        t, _case_with(ecg={"file": "../../secret.txt", "fs": 500, "leads": ["I"]})))]),
    ("case-cxr-absolute", lambda t: ["diagnose", str(_case_folder(
        t, _case_with(cxr=[{"file": str(t / "secret.txt"), "view": "PA"}])))]),
    ("case-ecg-missing-file", lambda t: ["interpret", "ecg", str(_case_folder(
        t, _case_with(ecg={"file": "ecg.hea", "fs": 500, "leads": ["I"]})))]),
    ("case-cxr-junk-file", lambda t: ["diagnose", str(_case_folder(
        t, _case_with(cxr=[{"file": "cxr.png", "view": "PA"}]), {"cxr.png": _junk()}))]),
    # ---- MIMIC-IV
    ("mimic-empty-hosp", lambda t: _mimic(t, {})),
    ("mimic-not-gzip", lambda t: _mimic(t, {"patients.csv.gz": b"junk", "admissions.csv.gz": b"junk",
                                            "labevents.csv.gz": b"junk", "d_labitems.csv.gz": b"junk"})),
    ("mimic-wrong-columns", lambda t: _mimic(t, {name: gzip.compress(b"a,b\n1,2\n") for name in
                                                 ("patients.csv.gz", "admissions.csv.gz", "labevents.csv.gz",
                                                  "d_labitems.csv.gz", "diagnoses_icd.csv.gz")})),
    # ---- configs
    ("synth-config-unknown-key", lambda t: ["synth", "--n", "2", "--out", _out(t),
                                            "--config", _yaml_config(t, "no_such_key: 1\n")]),
    ("synth-config-bad-yaml", lambda t: ["synth", "--n", "2", "--out", _out(t),
                                         "--config", _yaml_config(t, "a: [1, 2\n")]),
    ("synth-config-wrong-type", lambda t: ["synth", "--n", "2", "--out", _out(t),
                                           "--config", _yaml_config(t, "p_cxr: lots\n")]),
    ("synth-config-nested", lambda t: ["synth", "--n", "2", "--out", _out(t),
                                       "--config", _yaml_config(t, "a: " + "[" * 5000 + "]" * 5000 + "\n")]),
    ("synth-out-is-file", lambda t: ["synth", "--n", "2", "--out", str(_input(t, "file.txt", "x"))]),
    ("train-config-missing", lambda t: ["train", "encoders", "--config", str(t / "in" / "nope.yaml")]),
    ("train-config-junk", lambda t: ["train", "encoders", "--config", str(_input(t, "c.yaml", _junk()))]),
    # ---- eval
    ("eval-benchmark-junk", lambda t: _benchmark(t, "medqa.jsonl", _junk())),
    ("eval-benchmark-nested", lambda t: _benchmark(t, "medqa.json", _nested())),
    ("eval-benchmark-empty", lambda t: _benchmark(t, "medqa.jsonl", "")),
    ("eval-report-out-is-file", lambda t: ["eval", "report", str(t / "in"), "--out",
                                           str(_input(t, "report.txt", "x"))]),
    # ---- diagnose and model
    ("diagnose-unknown-kind", lambda t: ["diagnose", str(_input(t, "notes.xyz", "hello"))]),
    ("diagnose-model-not-checkpoint", lambda t: ["diagnose", str(FIXTURES / "ecg" / "100.hea"),
                                                 "--model", str((t / "in").mkdir(parents=True) or t / "in")]),
    ("checkpoint-nested-calibration", lambda t: ["diagnose", str(FIXTURES / "ecg" / "100.hea"), "--model",
                                                 _checkpoint_with(t, "calibration.json", _nested())]),
    ("checkpoint-config-not-mapping", lambda t: ["diagnose", str(FIXTURES / "ecg" / "100.hea"), "--model",
                                                 _checkpoint_with(t, "config.yaml", "- 1\n- 2\n")]),
    ("model-info-corrupt-metadata", lambda t: ["model", "info", str(_input(t, "metadata.json", "{oops").parent)]),
    ("model-info-nested-metadata", lambda t: ["model", "info", str(_input(t, "metadata.json", _nested()).parent)]),
    ("tasks-build-empty-cohort", lambda t: ["tasks", "build", str((t / "in").mkdir(parents=True) or t / "in"),
                                            "--out", _out(t)]),
]


def test_the_corpus_is_large_enough():
    assert len(CORPUS) >= 60
    assert len({name for name, _ in CORPUS}) == len(CORPUS)


def _written_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _assert_nothing_half_written(out: Path) -> None:
    if not out.exists():
        return
    for child in out.iterdir():
        # temporary folders of atomic writes must be gone; a case folder is whole (has case.json)
        assert not child.name.startswith("."), f"temporary file left behind: {child.name}"
        if child.is_dir():
            assert (child / "case.json").is_file(), f"half-written case folder: {child.name}"


@pytest.mark.parametrize("name,build", CORPUS, ids=[name for name, _ in CORPUS])
def test_malformed_input_gives_one_line_and_no_partial_output(name, build, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDFUSE_MODEL", str(tmp_path / "no-model-here"))  # never load the shipped model
    (tmp_path / "secret.txt").write_text(MARKER, encoding="utf-8")
    argv = build(tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    err_lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code != 0, f"{name}: exit status 0 (stderr: {captured.err[-300:]!r})"
    assert "Traceback" not in captured.err
    assert len(err_lines) == 1, f"{name}: expected one line on stderr, got {err_lines[-5:]}"
    assert err_lines[0].startswith("medfuse: error:"), err_lines[0]
    out = tmp_path / "out"
    _assert_nothing_half_written(out)
    assert MARKER not in captured.out + captured.err
    for path in _written_files(out):
        assert MARKER.encode() not in path.read_bytes(), f"{name}: content from outside the input in {path.name}"


@pytest.mark.parametrize("name", ["png-bomb", "fhir-nested-array", "case-ecg-outside", "labs-glucose-1e308"])
def test_malformed_input_from_a_real_process(name, tmp_path):
    # In a real process nothing captures warnings or logging: stderr must still be one line.
    build = dict(CORPUS)[name]
    (tmp_path / "secret.txt").write_text(MARKER, encoding="utf-8")
    argv = build(tmp_path)
    run = subprocess.run([sys.executable, "-m", "medfuse", *argv], capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "MEDFUSE_MODEL": str(tmp_path / "no-model-here"),
                              "HOME": str(tmp_path)})
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert len(lines) == 1 and lines[0].startswith("medfuse: error:"), lines[-5:]
    assert MARKER not in run.stdout
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
