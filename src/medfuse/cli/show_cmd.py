"""`medfuse show CASE`: a readable summary of one case folder."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def show(
    case_dir: Path = typer.Argument(..., help="A case folder (with case.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print case.json content (without bulk signals) instead."),
) -> None:
    """Print a readable summary of a case: modalities, flagged labs, ECG, images, labels."""
    from medfuse.record.store import read_case
    from medfuse.record.summary import summarise_case

    case = read_case(case_dir, load_bulk=not as_json)
    if as_json:
        print(json.dumps(case.model_dump(mode="json"), ensure_ascii=False))
        return
    print("\n".join(summarise_case(case)))
