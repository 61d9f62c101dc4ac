"""`medfuse demo`: run what exists end to end on built-in defaults."""

from __future__ import annotations

from pathlib import Path

import typer

from medfuse.cli.app import app


@app.command("demo")
def demo(out: Path = typer.Option(Path("demo_out"), help="Folder for the demo's outputs.")) -> None:
    """Import the bundled sample case and print it (later stages extend this)."""
    from medfuse.demo import run_demo

    run_demo(out)
