"""`medfuse synth`: generate a synthetic multimodal cohort with known ground truth."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer


def synth(
    n: int | None = typer.Option(None, "--n", help="Number of cases (default: the config's, 100)."),
    seed: int | None = typer.Option(None, "--seed", help="Master seed; the same seed gives a byte-identical cohort."),
    out: Path = typer.Option(..., "--out", help="Cohort folder to write (case folders, index.parquet, DATASHEET.md); "
                                                "new or empty unless --overwrite."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty folder: replace case folders of "
                                                              "the same id, keep (and index) the others."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes; the output does not depend on it."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of SynthConfig keys (modality probabilities, ...)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Generate N synthetic patients (CXR, 12-lead ECG, labs, vitals, notes, genomics) into OUT.

    Ctrl-C keeps the cases finished so far as a complete cohort (index and datasheet
    included: the cohort --n <that count> gives) and removes the rest of what it wrote.
    """
    from medfuse.synth.cohort import SynthConfig, SynthInterrupted, synth_cohort

    cfg = SynthConfig.from_yaml(config) if config is not None else SynthConfig()
    try:
        summary = synth_cohort(n=n, seed=seed, out=out, config=cfg, workers=workers, progress=not quiet,
                               overwrite=overwrite)
    except SynthInterrupted as stop:
        kept = stop.summary["n"] if stop.summary else 0
        what = (f"kept the first {kept} case(s) as a complete cohort in {out} (index.parquet and DATASHEET.md "
                f"written; the same as --n {kept})" if kept else "no case was complete")
        print(f"medfuse: interrupted after {kept} of {stop.requested} case(s): {what}; removed the rest",
              file=sys.stderr)
        raise typer.Exit(130) from None
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
