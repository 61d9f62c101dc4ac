"""`medfuse model init` (an untrained checkpoint) and `medfuse model info` (its model card).

`medfuse model evaluate` is added to `model_app` by `medfuse.cli.train_cmd`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from medfuse.cli.output_paths import check_output_apart
from medfuse.errors import InputError
from medfuse.model.locate import quiet_transformers

model_app = typer.Typer(help="Build and inspect medfuse model checkpoints.", no_args_is_help=True)


@model_app.command("init")
def model_init_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint folder to create."),
    config: Path | None = typer.Option(None, "--config", help="Model config YAML (keys of ModelConfig)."),
    tiny: bool = typer.Option(False, "--tiny", help="Use a tiny random 2-layer LLM (tests, quick pipeline checks)."),
    stats_from: Path | None = typer.Option(None, "--stats-from", help="Fit lab/vital statistics on this cohort's "
                                                                      "training split (default: unfitted)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing checkpoint folder."),
) -> None:
    """Build an UNTRAINED checkpoint (random weights) so the diagnose pipeline can be exercised."""
    from medfuse.model import MedFuse
    from medfuse.model.config import ModelConfig

    check_output_apart(out, [stats_from])
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise InputError(out, "already exists (use --overwrite to replace it)")
    cfg = ModelConfig.from_yaml(config) if config is not None else ModelConfig()
    stats = None
    if stats_from is not None:
        from medfuse.model.inputs import FeatureStats
        from medfuse.record.store import iter_cohort

        if not stats_from.is_dir():
            raise InputError(stats_from, "not a cohort folder")
        stats = FeatureStats.fit(iter_cohort(stats_from, load_bulk=False, split="train"))
        if stats.n_cases == 0:
            raise InputError(stats_from, "no training-split cases to fit statistics on")
    quiet_transformers()
    model = MedFuse.build(cfg, stats=stats, tiny_llm=tiny)
    model.save(out, overwrite=overwrite)
    print(f"wrote an untrained checkpoint to {out} (llm: {'tiny random' if tiny else cfg.llm}, fusion: {cfg.fusion})")


@model_app.command("info")
def model_info_cmd(checkpoint: Path = typer.Argument(..., help="Checkpoint folder.")) -> None:
    """Print a checkpoint's model card (metadata.json) without loading the weights."""
    from medfuse.record.store import read_json

    card_path = checkpoint / "metadata.json"
    if not card_path.is_file():
        raise InputError(checkpoint, "not a medfuse checkpoint (no metadata.json)")
    print(json.dumps(read_json(card_path), indent=2, ensure_ascii=False))
