"""`medfuse federate --cohort DIR --out CKPT [--sites K --rounds R --strategy fedavg|fedprox ...]`:
federated training across simulated hospitals (`medfuse.federate`), then a one-screen summary
(or the whole report with `--json`). Flags override the keys of `--config FILE`."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from medfuse.cli.output_paths import check_output_apart


def federate_cmd(
    cohort: Path | None = typer.Option(None, "--cohort",
                                       help="Cohort folder; its training patients are split into sites."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Checkpoint folder to write (federate.json inside)."),
    sites: int | None = typer.Option(None, "--sites", min=2, help="Number of sites (default 3)."),
    rounds: int | None = typer.Option(None, "--rounds", min=1, help="Federated rounds (default 3)."),
    local_epochs: float | None = typer.Option(None, "--local-epochs",
                                              help="Local epochs per round (default 1; a fraction such as 0.25 "
                                                   "runs that share of an epoch: more, shorter rounds)."),
    strategy: str | None = typer.Option(None, "--strategy", help="fedavg (default) or fedprox."),
    mu: float | None = typer.Option(None, "--mu", help="FedProx proximal weight (default 0.01)."),
    stage: str | None = typer.Option(None, "--stage",
                                     help="encoders (default: the whole fusion model), fusion (layers above "
                                          "the encoders; needs --model) or sft (the LLM's LoRA adapter + projector "
                                          "+ fusion layers on the SFT objective; needs --model)."),
    site_modalities: list[str] | None = typer.Option(None, "--site-modalities",
                                                     help="One per site, e.g. 'labs,notes' (repeat the flag)."),
    label_alpha: float | None = typer.Option(None, "--label-alpha", help="Dirichlet label-shift concentration (0.5)."),
    aggregation: str | None = typer.Option(None, "--aggregation",
                                           help="mean (default: FedAvg's case-weighted mean) or normalised (FedNova)."),
    server_lr: float | None = typer.Option(None, "--server-lr", help="Server learning rate on the average (1)."),
    server_momentum: float | None = typer.Option(None, "--server-momentum",
                                                 help="Server momentum (FedAvgM; default 0: none)."),
    dp_noise: float | None = typer.Option(None, "--dp-noise", help="DP noise multiplier z (needs --dp-clip)."),
    dp_clip: float | None = typer.Option(None, "--dp-clip", help="Clip each site's update to this L2 norm."),
    delta: float | None = typer.Option(None, "--delta", help="DP delta for the reported epsilon (1e-5)."),
    secagg: bool | None = typer.Option(None, "--secagg/--no-secagg", help="Flower SecAgg+ secure aggregation."),
    model: Path | None = typer.Option(None, "--model", help="Checkpoint to start from (default: a new model)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file of federate keys (model_config, ...)."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Cases per local step (16)."),
    lr: float | None = typer.Option(None, "--lr", help="Local learning rate (2e-3)."),
    lr_schedule: str | None = typer.Option(None, "--lr-schedule",
                                           help="global (default: one schedule over all rounds) or local "
                                                "(warm-up + cosine inside every round)."),
    keep_optimizer: bool | None = typer.Option(None, "--keep-optimizer/--reset-optimizer",
                                               help="Each site keeps its AdamW state across rounds (default: reset)."),
    seed: int | None = typer.Option(None, "--seed", min=0, help="Seed of sites, weights, data order, noise."),
    split_seed: int | None = typer.Option(None, "--split-seed", min=0, help="Seed of the train/val/test split."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Use only the first N training cases."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
    overwrite: bool | None = typer.Option(None, "--overwrite/--no-overwrite", help="Replace an existing --out."),
    quiet: bool | None = typer.Option(None, "--quiet/--no-quiet", help="No per-round lines."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON."),
) -> None:
    """Train across hospitals with Flower (FedAvg/FedProx, DP, SecAgg+); only trainable weights travel."""
    from medfuse.federate import FederateConfig, federate
    from medfuse.model.locate import quiet_transformers

    if local_epochs is not None and local_epochs.is_integer():
        local_epochs = int(local_epochs)  # whole epochs stay an int (the LoRA stage counts steps with it)
    flags = {"cohort": cohort, "out": out, "sites": sites, "rounds": rounds, "local_epochs": local_epochs,
             "strategy": strategy, "mu": mu, "stage": stage, "site_modalities": site_modalities or None,
             "label_alpha": label_alpha, "aggregation": aggregation, "server_lr": server_lr,
             "server_momentum": server_momentum,
             "dp_noise": dp_noise, "dp_clip": dp_clip, "delta": delta, "secagg": secagg,
             "model": model, "batch_size": batch_size, "lr": lr,
             "lr_schedule": lr_schedule, "keep_optimizer": keep_optimizer, "seed": seed, "split_seed": split_seed,
             "limit": limit, "threads": threads, "overwrite": overwrite, "quiet": quiet or (True if as_json else None)}
    from medfuse.config import read_yaml_mapping
    from medfuse.federate.lora import FederatedSFTConfig, federate_lm, summary_lines

    sft = (stage or (read_yaml_mapping(config).get("stage") if config else None)) == "sft"
    cfg = (FederatedSFTConfig if sft else FederateConfig).from_yaml(
        config, {k: str(v) if isinstance(v, Path) else v for k, v in flags.items()})
    # --overwrite replaces the output folder: it must not be, hold or lie inside an input.
    check_output_apart(cfg.out, [cfg.cohort, cfg.model, config])
    quiet_transformers()
    command = "medfuse " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["federate"] else None
    report = (federate_lm if sft else federate)(cfg, command=command).report
    if as_json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    elif sft:
        print("\n".join(summary_lines(report, cfg.out)))
    else:
        print_summary(report, cfg.out)


def print_summary(report: dict[str, Any], out: str) -> None:
    """Sites, per-round figures, what travelled, privacy and the held-out scores, as plain lines."""
    for s in report["sites"]:
        print(f"{s['name']}: {s['cases']} cases, modalities {', '.join(s['modalities'])}")
    for r in report["rounds_detail"]:
        eps = "" if r.get("epsilon") is None else f", epsilon {r['epsilon']}"
        print(f"round {r['round']}: train loss {r.get('train_loss')}, val macro-F1 {r['val_macro_f1']}, "
              f"{r['bytes_down']:,} B down / {r['bytes_up']:,} B up{eps}")
    t = report["travelling"]
    print(f"travelled: {t['tensors']} tensors, {t['parameters']:,} parameters; {t['not_sent_parameters']:,} never sent")
    p = report["privacy"]
    if p["dp"]:
        eps = "infinite (no noise)" if p["epsilon"] is None else p["epsilon"]
        print(f"privacy: epsilon {eps} at delta {p['delta']} ({p['unit']})")
    h = report["held_out"]
    print(f"held out ({h['n_samples']} cases): macro-F1 {h['macro_f1']}, micro-F1 {h['micro_f1']}, "
          f"macro AUROC {h['macro_auroc']}")
    print(f"wrote {out} (report: {out}/federate.json)")
