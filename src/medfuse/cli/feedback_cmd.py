"""`medfuse feedback`: clinician feedback recorded by `medfuse serve`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from medfuse.errors import InputError

feedback_app = typer.Typer(help="Clinician feedback from the review service.", no_args_is_help=True)


@feedback_app.command("export")
def export_cmd(
    db: str = typer.Option(..., "--db", help="The service's database URL (e.g. sqlite:///medfuse-serve.db)."),
    out: Path = typer.Option(..., "--out", "-o", help="Preference pairs, JSON Lines (prompt/chosen/rejected)."),
) -> None:
    """Export reviewed decisions as preference pairs for DPO / GRPO (TRL's format), atomically."""
    from medfuse.serve.db import ReviewStore
    from medfuse.serve.preferences import export_preference_pairs

    if out.exists() and out.is_dir():
        raise InputError(out, "is a folder; --out takes a .jsonl file name")
    if db.startswith("sqlite:///") and db != "sqlite:///:memory:" and not Path(db[len("sqlite:///"):]).is_file():
        raise InputError(db[len("sqlite:///"):], "no such database file")
    store = ReviewStore(db)
    try:
        counts = export_preference_pairs(store, out)
    finally:
        store.close()
    print(f"{counts['pairs']} pair(s) ({counts['sentence']} sentence, {counts['response']} response) from "
          f"{counts['reviewed_cases']} reviewed of {counts['cases']} case(s) -> {out}", file=sys.stderr)
