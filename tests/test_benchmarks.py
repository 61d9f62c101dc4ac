"""`make bench` runs benchmarks/run_all.py: every benchmark it names exists and starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import run_all  # noqa: E402


def test_make_bench_target_runs_run_all():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "benchmarks/run_all.py" in makefile


@pytest.mark.parametrize("bench", run_all.BENCHES, ids=lambda b: b.name)
def test_each_benchmark_imports_and_parses_its_options(bench):
    # --help imports the script's module-level dependencies (medfuse modules that refactors
    # move) and parses its argument spec, without running the measurement.
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / bench.script), "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage" in run.stdout.lower()


def test_unknown_benchmark_name_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        run_all.main(["--only", "no_such_bench"])
    assert e.value.code == 2
    assert "no_such_bench" in capsys.readouterr().err
