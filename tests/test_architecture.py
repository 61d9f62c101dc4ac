"""The layer order of the package, declared in pyproject.toml and checked by import-linter.

A package imports only from the packages below it (cli > serve > demo > html_summary > federate >
train > eval | explain > tasks > model > interpret | synth | io > formats > knowledge > record >
config > errors), and no
two sibling modules or packages import each other, directly or round a loop.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is a dev dependency (pip install -e '.[dev]')"
    run = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "2 kept, 0 broken" in run.stdout


def test_documented_model_exports_are_what_they_say():
    # `from medfuse.model import diagnose` once returned the submodule of that name (a
    # submodule attribute shadows the package's lazy exports), so the documented call failed.
    import medfuse.model as model_pkg
    from medfuse.model import diagnose, diagnose_many

    for name in model_pkg.__all__:
        value = getattr(model_pkg, name)
        assert not isinstance(value, type(model_pkg)), f"medfuse.model.{name} is a module, not the export"
    assert callable(diagnose) and callable(diagnose_many)
