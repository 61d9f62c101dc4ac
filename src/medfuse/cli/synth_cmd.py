"""`medfuse synth`: generate a synthetic multimodal cohort with known ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def synth(
    n: int | None = typer.Option(None, "--n", help="Number of cases (default: the config's, 100)."),
    seed: int | None = typer.Option(None, "--seed", help="Master seed; the same seed gives a byte-identical cohort."),
    out: Path = typer.Option(..., "--out", help="Cohort folder to write (case folders, index.parquet, DATASHEET.md)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes; the output does not depend on it."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of SynthConfig keys (modality probabilities, ...)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Generate N synthetic patients (CXR, 12-lead ECG, labs, vitals, notes, genomics) into OUT."""
    from medfuse.synth.cohort import SynthConfig, synth_cohort

    cfg = SynthConfig.from_yaml(config) if config is not None else SynthConfig()
    summary = synth_cohort(n=n, seed=seed, out=out, config=cfg, workers=workers, progress=not quiet)
    if as_json:
        print(json.dumps({k: v for k, v in summary.items() if k != "cooccurrence"}, ensure_ascii=False))
        return
    from rich.console import Console

    console = Console()
    total = summary["n"]
    console.print(f"[bold]synth[/bold]: {total} case(s) written to {out} in {summary['seconds']:.1f} s "
                  f"({summary['cases_per_s']:.1f} cases/s, {workers} worker(s)); see {out / 'DATASHEET.md'}")
    prev = ", ".join(f"{k} {v}" for k, v in summary["prevalence"].items() if v)
    console.print(f"  diseases: {prev or 'none'}; without any: {summary['n_diseases'].get(0, 0)}")
    mods = ", ".join(f"{k} {v}" for k, v in summary["modalities"].items())
    console.print(f"  modalities: {mods}")
