"""The `medfuse` command as a user runs it: one-line errors, exit codes, `show`."""

from __future__ import annotations

import subprocess
import sys

from medfuse.cli import main
from medfuse.record import write_case

from test_record import full_case


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medfuse", *args], capture_output=True, text=True, timeout=120)


def test_show_summarises_a_case(tmp_path, capsys):
    write_case(full_case(), tmp_path / "case-001")
    assert main(["show", str(tmp_path / "case-001")]) == 0
    out = capsys.readouterr().out
    assert "modalities: cxr, ecg, labs, vitals, notes, genomics" in out
    assert "12 lead(s)" in out and "500 Hz, 10.0 s" in out
    assert " H Creatinine: 2.4 mg/dL (ref 0.5-1.2)" in out
    assert "labels: pneumonia, sepsis" in out


def test_bad_input_is_one_line_no_traceback(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "case.json").write_text("{oops")
    r = run("show", str(tmp_path / "broken"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "broken" in r.stderr and "invalid JSON" in r.stderr


def test_usage_errors_exit_2_without_traceback():
    for args in (("import", "fhir"), ("no-such-verb",)):
        r = run(*args)
        assert r.returncode == 2, args
        assert "Traceback" not in r.stderr
