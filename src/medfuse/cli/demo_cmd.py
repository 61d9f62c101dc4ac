"""`medfuse demo`: run what exists end to end on built-in defaults."""

from __future__ import annotations

from pathlib import Path

import typer

from medfuse.cli.output_paths import check_output_apart


def demo(
    out: Path = typer.Option(Path("demo_out"), help="Folder for the demo's outputs."),
    model: Path | None = typer.Option(None, "--model", help="Checkpoint to use (default: the shipped one)."),
    n: int = typer.Option(24, "--n", min=1, help="Cases in the fresh synthetic cohort."),
    seed: int = typer.Option(7, "--seed", min=0, help="Seed of the fresh cohort."),
    max_new_tokens: int = typer.Option(160, "--max-new-tokens", min=1, help="Tokens of reasoning generated per case."),
) -> None:
    """Import the bundled samples, generate a fresh cohort, diagnose it, print one result, write summary.html."""
    from medfuse.demo import run_demo

    check_output_apart(out, [model])
    run_demo(out, n_synth=n, seed=seed, model_path=model, max_new_tokens=max_new_tokens)
