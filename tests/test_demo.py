"""`medfuse demo` runs end to end offline on built-in defaults."""

from __future__ import annotations

from medfuse.cli import main
from medfuse.record import read_case


def test_demo_imports_samples_and_interprets_a_synthetic_case(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # the real bundled records were imported through the real importers
    ecg_case = read_case(tmp_path / "sample_cohort" / "00001_lr")
    assert ecg_case.ecg.signal.shape == (1000, 12) and ecg_case.ecg.fs == 100
    cxr_case = read_case(tmp_path / "sample_cohort" / "00000001_000")
    assert cxr_case.cxr[0].pixels.shape == (512, 512)
    assert [f.label for f in cxr_case.labels.findings] == ["Cardiomegaly"]
    # a synthetic cohort with its datasheet, and an interpreted case printed
    assert (tmp_path / "synth_cohort" / "DATASHEET.md").is_file()
    assert "interpreted evidence:" in out
    assert "[labs[" in out or "[ecg:" in out
