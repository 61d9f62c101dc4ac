"""ECG importers: WFDB (MIT-BIH, PTB, PTB-XL, CinC 2015), DICOM waveform, CSV/NumPy arrays.

Fixtures are real records copied into tests/fixtures/ecg and tests/fixtures/dicom (see
their SOURCE files). Bad inputs are made from copies in tmp_path.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import wfdb
from pydicom.waveforms.numpy_handler import multiplex_array

from medfuse.cli import main
from medfuse.errors import InputError
from medfuse.io.base import ImportReport
from medfuse.io.ecg_array import read_ecg_array
from medfuse.io.ecg_dicom import import_dicom_ecg, read_dicom_ecg
from medfuse.io.ecg_leads import STANDARD_12
from medfuse.io.wfdb import find_wfdb_records, import_wfdb, read_wfdb
from medfuse.record.store import read_case, read_index, write_case

ECG_DIR = Path(__file__).parent / "fixtures" / "ecg"
DICOM_ECG = Path(__file__).parent / "fixtures" / "dicom" / "waveform_ecg.dcm"


def _copy_record(name: str, dest: Path, suffixes: tuple[str, ...] = (".hea", ".dat")) -> Path:
    for s in suffixes:
        shutil.copy(ECG_DIR / f"{name}{s}", dest / f"{name}{s}")
    return dest / name


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line_error(code: int, err: str, file_name: str) -> None:
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("medfuse: error: ") and file_name in lines[0]
    assert "Traceback" not in err


# ---------------------------------------------------------------- WFDB: real records

def test_mitbih_100_has_two_leads_at_360_hz_in_mv():
    ecg, details = read_wfdb(ECG_DIR / "100.hea")
    assert ecg.leads == ["MLII", "V5"]
    assert ecg.fs == 360
    assert ecg.signal.shape == (650000, 2)
    # Same millivolts as the wfdb package's own physical conversion, on its 200/mV grid.
    reference = wfdb.rdrecord(str(ECG_DIR / "100")).p_signal
    np.testing.assert_array_equal(ecg.signal, reference)
    assert ecg.adc_gain == 200
    assert (details["demographics"].age, details["demographics"].sex) == (69, "M")
    beats = ecg.annotations["reference_beats"]
    assert len(beats["sample"]) == len(beats["symbol"]) == 2273  # 2274 annotations minus one rhythm mark
    assert set(beats["symbol"]) == {"N", "A", "V"}
    assert ecg.annotations["rhythm_changes"][0]["rhythm"] == "(N"


def test_ptb_record_has_the_12_standard_names_plus_frank_leads_and_header_facts():
    ecg, details = read_wfdb(ECG_DIR / "s0010_re")
    assert ecg.leads[:12] == list(STANDARD_12)  # header says 'i', 'avr', 'v1', ...
    assert ecg.leads[12:] == ["vx", "vy", "vz"]  # Frank leads are kept, not renamed
    assert ecg.fs == 1000 and ecg.signal.shape == (38400, 15)
    demo = details["demographics"]
    assert (demo.age, demo.sex) == (81, "F")
    # 'Reason for admission: Myocardial infarction', 'Additional diagnoses: Diabetes mellitus'
    assert details["labels"].disease_names() == ["coronary artery disease", "diabetes mellitus"]


def test_ptbxl_upper_case_limb_leads_become_standard_names():
    ecg, _ = read_wfdb(ECG_DIR / "00001_lr.hea")
    assert ecg.leads == list(STANDARD_12)  # 'AVR' -> 'aVR'
    assert ecg.fs == 100 and ecg.signal.shape == (1000, 12)


def test_cinc_records_keep_ecg_and_count_skipped_monitor_channels():
    report = ImportReport("wfdb")
    cases = list(import_wfdb([ECG_DIR / "a103l.mat", ECG_DIR / "v102s.hea"], report))
    assert [c.case_id for c in cases] == ["a103l", "v102s"]
    assert all(c.ecg.leads == ["II", "V"] and c.ecg.fs == 250 for c in cases)
    assert report.skipped["non-ECG channel skipped (PLETH)"] == 2
    assert report.skipped["non-ECG channel skipped (RESP)"] == 1
    # v102s has invalid-sample codes in its ECG channels: kept as NaN and counted.
    assert report.notes["missing samples kept as NaN"] == int(np.isnan(cases[1].ecg.signal).sum()) > 0


def test_record_can_be_named_by_header_bare_name_signal_file_or_folder(tmp_path):
    _copy_record("100", tmp_path)
    _copy_record("a103l", tmp_path, (".hea", ".mat"))
    expected = [tmp_path / "100", tmp_path / "a103l"]
    assert find_wfdb_records([tmp_path]) == expected
    assert find_wfdb_records([tmp_path / "100.hea", tmp_path / "a103l.mat"]) == expected
    assert find_wfdb_records([tmp_path / "100", tmp_path / "100.dat"]) == [tmp_path / "100"]


@pytest.mark.parametrize("record", ["100", "s0010_re", "a103l", "v102s"])
def test_wfdb_case_round_trips_exactly(record, tmp_path):
    report = ImportReport("wfdb")
    (case,) = import_wfdb([ECG_DIR / record], report)
    back = read_case(write_case(case, tmp_path / case.case_id))
    assert back.ecg.leads == case.ecg.leads and back.ecg.fs == case.ecg.fs
    # Bit-for-bit, including the CinC records whose leads have different ADC gains.
    assert np.array_equal(back.ecg.signal, case.ecg.signal, equal_nan=True)
    assert back.demographics == case.demographics


def test_microvolt_header_is_converted_to_millivolts(tmp_path):
    digital = np.array([[100, -250], [0, 1000], [-3, 7]], dtype=np.int16)  # (samples, leads)
    wfdb.wrsamp("uv", fs=500, units=["uV", "uV"], sig_name=["ii", "avl"], d_signal=digital, fmt=["16", "16"],
                adc_gain=[2.0, 2.0], baseline=[0, 0], write_dir=str(tmp_path))
    ecg, _ = read_wfdb(tmp_path / "uv.hea")
    assert ecg.leads == ["II", "aVL"]
    # 2 units per uV -> 100 units = 50 uV = 0.05 mV
    np.testing.assert_allclose(ecg.signal, digital / 2.0 / 1000.0)
    assert ecg.adc_gain == 2000.0
    back = read_case(write_case(next(import_wfdb([tmp_path / "uv"], ImportReport("w"))), tmp_path / "case"))
    assert np.array_equal(back.ecg.signal, ecg.signal)


def test_challenge_style_header_comments_give_demographics_and_codes(tmp_path):
    # PhysioNet/CinC 2020-2021 headers: '#Age: 74', '#Sex: Male', '#Dx: <SNOMED CT codes>'.
    wfdb.wrsamp("A0001", fs=500, units=["mV"], sig_name=["I"], d_signal=np.zeros((5, 1), dtype=np.int16),
                fmt=["16"], adc_gain=[1000.0], baseline=[0], write_dir=str(tmp_path),
                comments=["Age: 74", "Sex: Male", "Dx: 164889003,59118001", "Rx: Unknown"])
    (case,) = import_wfdb([tmp_path / "A0001.hea"], ImportReport("wfdb"))
    assert (case.demographics.age, case.demographics.sex) == (74, "M")
    assert case.labels.source_codes == ["SNOMED:164889003", "SNOMED:59118001"]
    # the diagnosis line is a label, not part of the recording kept as input
    assert case.ecg.annotations["header_comments"] == ["Age: 74", "Sex: Male", "Rx: Unknown"]


def test_cpsc_abbreviations_in_dx_become_their_snomed_codes(tmp_path):
    # early Challenge-2020 (CPSC 2018) headers write abbreviations, not codes
    wfdb.wrsamp("A0079", fs=500, units=["mV"], sig_name=["I"], d_signal=np.zeros((5, 1), dtype=np.int16),
                fmt=["16"], adc_gain=[1000.0], baseline=[0], write_dir=str(tmp_path),
                comments=["Age: 77", "Dx: AF,RBBB,XYZ"])
    (case,) = import_wfdb([tmp_path / "A0079.hea"], ImportReport("wfdb"))
    assert case.labels.source_codes == ["SNOMED:164889003", "SNOMED:59118001", "label:XYZ"]


def test_record_without_ecg_channels_is_skipped_and_counted(tmp_path):
    wfdb.wrsamp("abp", fs=125, units=["mmHg"], sig_name=["ABP"], d_signal=np.arange(10, dtype=np.int16)[:, None],
                fmt=["16"], adc_gain=[1.0], baseline=[0], write_dir=str(tmp_path))
    report = ImportReport("wfdb")
    assert list(import_wfdb([tmp_path], report)) == []
    assert report.skipped["record without ECG channels"] == 1


# ---------------------------------------------------------------- WFDB: bad input

def test_truncated_dat_is_one_clear_error_and_writes_no_case(tmp_path, capsys):
    record = _copy_record("100", tmp_path)
    with open(f"{record}.dat", "r+b") as fh:
        fh.truncate(1_000_000)
    with pytest.raises(InputError) as err:
        read_wfdb(record)
    assert err.value.path.endswith("100.dat") and "shorter than its header" in err.value.problem
    out = tmp_path / "cohort"
    code, _, stderr = _cli(["import", "wfdb", f"{record}.hea", "--out", str(out)], capsys)
    _assert_one_line_error(code, stderr, "100.dat")
    assert not (out / "100").exists()
    assert not any(p.name.startswith(".") for p in out.iterdir()) if out.exists() else True


@pytest.mark.parametrize(
    ("record_line", "problem"),
    [
        ("100 3 360 650000", "3 signal(s)"),  # signal count does not match the data
        ("100 2 360 700000", "shorter than its header"),  # length longer than the data
        ("100 2 360 600000", "does not match its header"),  # length shorter than the data
    ],
)
def test_header_that_does_not_match_its_data_is_rejected(tmp_path, record_line, problem):
    record = _copy_record("100", tmp_path)
    lines = (ECG_DIR / "100.hea").read_text().splitlines()
    signal_lines = [ln for ln in lines if ln.startswith("100.dat")]
    if record_line.split()[1] == "3":
        signal_lines.append(signal_lines[-1].replace("V5", "V6"))
    (tmp_path / "100.hea").write_text("\n".join([record_line, *signal_lines]) + "\n")
    with pytest.raises(InputError) as err:
        read_wfdb(record)
    assert err.value.path.endswith("100.dat")
    assert problem in err.value.problem


def test_header_naming_a_missing_data_file_names_both(tmp_path, capsys):
    shutil.copy(ECG_DIR / "100.hea", tmp_path / "100.hea")
    with pytest.raises(InputError) as err:
        read_wfdb(tmp_path / "100.hea")
    assert err.value.path.endswith("100.hea") and "'100.dat', which does not exist" in err.value.problem
    code, _, stderr = _cli(["import", "wfdb", str(tmp_path / "100"), "--out", str(tmp_path / "c")], capsys)
    _assert_one_line_error(code, stderr, "100.hea")


def test_malformed_header_and_missing_record_are_input_errors(tmp_path):
    (tmp_path / "junk.hea").write_bytes(b"\x00\x01 not a header\n")
    with pytest.raises(InputError, match="junk.hea: not a valid WFDB header"):
        read_wfdb(tmp_path / "junk.hea")
    with pytest.raises(InputError, match="no such WFDB record"):
        read_wfdb(tmp_path / "nothing")


# ---------------------------------------------------------------- DICOM waveform

def test_dicom_ecg_reads_rhythm_strip_in_mv_with_measurements():
    ecg = read_dicom_ecg(DICOM_ECG)
    assert ecg.leads == list(STANDARD_12)
    assert ecg.fs == 1000
    assert ecg.signal.shape == (10000, 12)  # the 10 s rhythm group, not the 1.2 s median beat
    ds = pydicom.dcmread(DICOM_ECG)
    np.testing.assert_allclose(ecg.signal, ds.waveform_array(0) / 1000.0, rtol=0, atol=1e-12)  # uV -> mV
    assert ecg.adc_gain == 800  # 1.25 uV per raw unit
    assert ecg.annotations["intervals_ms"] == {"RR": 982, "PR": 161, "QRS": 75, "QT": 368, "QTc": 370}
    assert ecg.annotations["axes_deg"] == {"P": 74, "QRS": 52, "T": 57}
    assert ecg.annotations["statements"] == ["RITMO SINUSALE", "ECG NORMALE"]
    # The device's QRS fiducials fall on the R peaks of lead II in the rhythm strip.
    lead_ii = ecg.lead("II")
    beats = [f["Fiducial Point"] for f in ecg.annotations["fiducials"] if f["group"] >= 100]
    assert len(beats) == 10
    assert all(abs(int(np.argmax(lead_ii[b - 40:b + 40])) - 40) <= 5 for b in beats)


def _reordered_copy(tmp_path: Path, order: list[int]) -> Path:
    ds = pydicom.dcmread(DICOM_ECG)
    group = ds.WaveformSequence[0]
    raw = multiplex_array(ds, 0, as_raw=True)  # (samples, channels) int16
    channels = list(group.ChannelDefinitionSequence)
    group.ChannelDefinitionSequence = [copy.deepcopy(channels[i]) for i in order]
    group.WaveformData = np.ascontiguousarray(raw[:, order]).tobytes()
    path = tmp_path / "reordered.dcm"
    ds.save_as(path)
    return path


def test_dicom_leads_are_found_by_label_not_position(tmp_path):
    original = read_dicom_ecg(DICOM_ECG)
    order = [11, 5, 1, 0, 7, 3, 2, 9, 4, 10, 6, 8]  # lead II is now the 3rd channel, V6 the 1st
    shuffled = read_dicom_ecg(_reordered_copy(tmp_path, order))
    assert shuffled.leads == list(STANDARD_12)
    for lead in ("II", "I", "V6", "aVR"):
        np.testing.assert_array_equal(shuffled.lead(lead), original.lead(lead))
    assert not np.array_equal(shuffled.lead("II"), original.lead("V6"))


def test_dicom_ecg_case_has_demographics_and_round_trips_exactly(tmp_path):
    (case,) = import_dicom_ecg([DICOM_ECG], ImportReport("dicom-ecg"))
    assert (case.demographics.age, case.demographics.sex) == (42, "F")
    # Ids are pseudonyms: the file's Patient ID and UIDs never reach the case.
    ds = pydicom.dcmread(DICOM_ECG, stop_before_pixels=True)
    assert case.patient_id.startswith("pt-") and case.case_id.startswith("dcm-")
    assert all(str(v) not in case.model_dump_json() for v in (ds.PatientID, ds.StudyInstanceUID, ds.SOPInstanceUID))
    back = read_case(write_case(case, tmp_path / case.case_id))
    assert np.array_equal(back.ecg.signal, case.ecg.signal)
    assert back.ecg.annotations["intervals_ms"]["QTc"] == 370


def test_dicom_without_waveform_sequence_is_rejected(tmp_path):
    ds = pydicom.dcmread(DICOM_ECG)
    del ds.WaveformSequence
    path = tmp_path / "no_waveform.dcm"
    ds.save_as(path)
    with pytest.raises(InputError) as err:
        read_dicom_ecg(path)
    assert err.value.path.endswith("no_waveform.dcm") and "no Waveform Sequence" in err.value.problem


def test_dicom_with_waveform_data_cut_short_is_rejected(tmp_path):
    ds = pydicom.dcmread(DICOM_ECG)
    ds.WaveformSequence[0].WaveformData = ds.WaveformSequence[0].WaveformData[:5000]
    path = tmp_path / "short.dcm"
    ds.save_as(path)
    with pytest.raises(InputError, match="short.dcm: waveform data cut short"):
        read_dicom_ecg(path)


def test_non_dicom_file_is_rejected(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("not a dicom file\n")
    with pytest.raises(InputError, match="notes.dcm: not a DICOM file"):
        read_dicom_ecg(path)


# ---------------------------------------------------------------- CSV / NumPy arrays

@pytest.fixture
def ptbxl_signal() -> np.ndarray:
    return wfdb.rdrecord(str(ECG_DIR / "00001_lr")).p_signal  # (1000, 12) mV


def test_csv_with_header_npy_and_microvolt_csv_agree(tmp_path, ptbxl_signal):
    names = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    np.savetxt(tmp_path / "mv.csv", ptbxl_signal, delimiter=",", header=",".join(names), comments="", fmt="%.3f")
    np.savetxt(tmp_path / "uv.csv", np.round(ptbxl_signal * 1000), delimiter=";", fmt="%d")
    np.save(tmp_path / "mv.npy", ptbxl_signal)
    from_csv = read_ecg_array(tmp_path / "mv.csv", fs=100)
    from_uv = read_ecg_array(tmp_path / "uv.csv", fs=100, leads=names, unit="uV")
    from_npy = read_ecg_array(tmp_path / "mv.npy", fs=100, leads=names)
    for ecg in (from_csv, from_uv, from_npy):
        assert ecg.leads == list(STANDARD_12) and ecg.fs == 100
        np.testing.assert_array_equal(ecg.signal, ptbxl_signal)
    picked = read_ecg_array(tmp_path / "mv.csv", fs=100, leads=["V1", "II"])
    assert picked.leads == ["V1", "II"]
    np.testing.assert_array_equal(picked.lead("II"), ptbxl_signal[:, 1])


def test_array_case_round_trips_exactly_on_its_detected_grid(tmp_path, ptbxl_signal):
    from medfuse.record.case import PatientCase

    np.save(tmp_path / "x.npy", ptbxl_signal)
    ecg = read_ecg_array(tmp_path / "x.npy", fs=100, leads=list(STANDARD_12))
    assert ecg.adc_gain == 1000  # PTB-XL is stored in whole microvolts
    back = read_case(write_case(PatientCase(case_id="x", ecg=ecg), tmp_path / "case"))
    assert np.array_equal(back.ecg.signal, ecg.signal)


def test_physionet_csv_export_with_time_and_units_rows(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("'Elapsed time','II','PLETH'\n'seconds','uV','NU'\n0.000,100,0.5\n0.004,,0.6\n0.008,-50,0.7\n")
    report = ImportReport("ecg-array")
    ecg = read_ecg_array(path, fs=250, report=report)
    assert ecg.leads == ["II"]
    np.testing.assert_array_equal(ecg.signal[:, 0], [0.1, np.nan, -0.05])
    assert report.notes["time/index column ignored"] == 1
    assert report.notes["missing samples kept as NaN"] == 1
    assert report.skipped["non-ECG channel skipped (PLETH)"] == 1


def test_csv_with_a_non_numeric_cell_is_rejected(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("I,II\n0.1,0.2\n0.3,oops\n")
    with pytest.raises(InputError, match=r"bad.csv: line 3, column 'II': not a number"):
        read_ecg_array(path, fs=500)
    out = tmp_path / "cohort"
    code, _, stderr = _cli(["import", "ecg-array", str(path), "--fs", "500", "--out", str(out)], capsys)
    _assert_one_line_error(code, stderr, "bad.csv")
    assert "oops" not in stderr  # the record's content is not echoed
    assert not (out / "bad").exists()


def test_missing_sampling_rate_is_an_error_and_writes_nothing(tmp_path, capsys, ptbxl_signal):
    np.savetxt(tmp_path / "a.csv", ptbxl_signal, delimiter=",", header=",".join(STANDARD_12), comments="")
    out = tmp_path / "cohort"
    code, _, stderr = _cli(["import", "ecg-array", str(tmp_path / "a.csv"), "--out", str(out)], capsys)
    _assert_one_line_error(code, stderr, "a.csv")
    assert "--fs" in stderr
    assert not out.exists()


def test_npy_needs_matching_lead_names_and_is_never_transposed_by_guess(tmp_path, ptbxl_signal):
    np.save(tmp_path / "t.npy", ptbxl_signal.T)  # (leads, samples): wrong way round
    with pytest.raises(InputError, match="no lead names"):
        read_ecg_array(tmp_path / "t.npy", fs=100)
    with pytest.raises(InputError, match="looks like \\(leads, samples\\)"):
        read_ecg_array(tmp_path / "t.npy", fs=100, leads=list(STANDARD_12))


# ---------------------------------------------------------------- CLI

def test_cli_imports_a_folder_of_records_into_an_indexed_cohort(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    _copy_record("s0010_re", src, (".hea", ".dat", ".xyz"))
    _copy_record("v102s", src)
    out = tmp_path / "cohort"
    code, stdout, _ = _cli(["import", "wfdb", str(src), "--out", str(out), "--json"], capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["cases_written"] == 2
    assert summary["skipped"] == {"non-ECG channel skipped (PLETH)": 1, "non-ECG channel skipped (RESP)": 1}
    assert summary["per_disease"] == {"coronary artery disease": 1, "diabetes mellitus": 1}
    index = read_index(out)
    assert sorted(index["case_id"]) == ["s0010_re", "v102s"] and index["has_ecg"].all()
    # A second run keeps existing cases unless asked to overwrite.
    code, stdout, _ = _cli(["import", "wfdb", str(src), "--out", str(out), "--json"], capsys)
    assert json.loads(stdout)["skipped"]["case already in the cohort (use --overwrite)"] == 2
    code, stdout, _ = _cli(["import", "wfdb", str(src), "--out", str(out), "--json", "--overwrite"], capsys)
    assert json.loads(stdout)["cases_written"] == 2


def test_cli_skip_bad_counts_an_unreadable_record_and_goes_on(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    _copy_record("v102s", src)
    shutil.copy(ECG_DIR / "100.hea", src / "100.hea")  # its .dat is missing
    out = tmp_path / "cohort"
    code, stdout, _ = _cli(["import", "wfdb", str(src), "--out", str(out), "--json", "--skip-bad"], capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert summary["cases_written"] == 1 and summary["skipped"]["unreadable WFDB record"] == 1


def test_cli_ecg_array_writes_a_case(tmp_path, capsys, ptbxl_signal):
    np.save(tmp_path / "rec1.npy", ptbxl_signal)
    out = tmp_path / "cohort"
    code, stdout, _ = _cli(["import", "ecg-array", str(tmp_path / "rec1.npy"), "--fs", "100",
                            "--leads", ",".join(STANDARD_12), "--out", str(out), "--json"], capsys)
    assert code == 0 and json.loads(stdout)["cases_written"] == 1
    case = read_case(out / "rec1")
    assert case.ecg.leads == list(STANDARD_12) and case.ecg.fs == 100
    np.testing.assert_array_equal(case.ecg.signal, ptbxl_signal)


# ---------------------------------------------------------------- implausible rates, hostile headers, --skip-bad

def _run(capsys, *args: str) -> tuple[int, str, list[str]]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def _record(folder: Path, rate: str, data_name: str = "rec.dat") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rec.dat").write_bytes(np.zeros((1000, 2), dtype="<i2").tobytes())
    hea = folder / "rec.hea"
    hea.write_text(f"rec 2 {rate} 1000\n{data_name} 16 200 16 0 0 0 0 I\n{data_name} 16 200 16 0 0 0 0 II\n")
    return hea


@pytest.mark.parametrize("rate", ["-500", "1e12", "10", "0.001"])
def test_wfdb_implausible_sampling_rate_is_refused(tmp_path, capsys, rate):
    # Before: wfdb read '-500' and '1e12' as its default 250 Hz (and '10' was kept), silently.
    hea = _record(tmp_path / "in", rate)
    with pytest.raises(InputError, match="implausible ECG sampling rate"):
        read_wfdb(hea)
    code, _, err = _run(capsys, "import", "wfdb", str(hea), "--out", str(tmp_path / "out"))
    assert code == 2 and len(err) == 1 and "implausible ECG sampling rate" in err[0] and str(hea) in err[0]
    assert not (tmp_path / "out").exists()


def test_wfdb_header_naming_data_outside_its_folder_is_refused(tmp_path):
    (tmp_path / "secret.dat").write_bytes(np.zeros((1000, 2), dtype="<i2").tobytes())
    hea = _record(tmp_path / "in", "500", data_name="link.dat")
    (tmp_path / "in" / "link.dat").symlink_to(tmp_path / "secret.dat")
    with pytest.raises(InputError, match="outside the record's folder"):
        read_wfdb(hea)


def test_ecg_array_implausible_fs_is_a_one_line_usage_error(tmp_path, capsys):
    csv = tmp_path / "e.csv"
    csv.write_text("I,II\n" + "0.1,0.2\n" * 100)
    code, _, err = _run(capsys, "import", "ecg-array", str(csv), "--fs", "1e12", "--out", str(tmp_path / "out"))
    assert code == 2 and len(err) == 1 and "--fs: implausible ECG sampling rate" in err[0]


def test_dicom_waveform_with_implausible_rate_is_refused():
    ds = pydicom.dcmread(DICOM_ECG)
    ds.WaveformSequence[0].SamplingFrequency = "1000000"
    with pytest.raises(InputError, match="implausible ECG sampling rate"):
        read_dicom_ecg(ds)


@pytest.mark.parametrize("header", ["", "garbage line\n", "\x00\x01\x02\xff" * 50])
def test_wfdb_skip_bad_names_the_skipped_record(tmp_path, capsys, header):
    bad = tmp_path / "in" / "bad.hea"
    bad.parent.mkdir(parents=True)
    bad.write_text(header, encoding="latin-1")
    code, _, err = _run(capsys, "import", "wfdb", str(bad), "--out", str(tmp_path / "out"))
    assert code == 2 and len(err) == 1 and err[0].startswith("medfuse: error: ") and "bad.hea" in err[0]
    good = tmp_path / "in" / "100.hea"
    shutil.copy(ECG_DIR / "100.hea", good)
    shutil.copy(ECG_DIR / "100.dat", tmp_path / "in" / "100.dat")
    code, out, _ = _run(capsys, "import", "wfdb", str(good), str(bad), "--out", str(tmp_path / "out"), "--skip-bad",
                        "--json")
    summary = json.loads(out)
    assert code == 0 and summary["cases_written"] == 1
    assert [s["file"] for s in summary["skipped_files"]] == [str(bad)]
