"""Federated SFT: the language model's LoRA adapter trained across sites with Flower (`medfuse federate --stage sft`).

The other federated stages (`run.federate`) train only the fusion model; this one trains
what `medfuse train sft` trains: the LoRA adapter on the LLM, the LLM projector and (with
`train_fusion`) the fusion model's layers above the encoders, on the SFT objective
(`lm_stages.LMObjective`: causal-LM cross-entropy on the assistant message + the disease
loss).

1. The cohort's training patients are divided into sites as `federate` divides them
   (`run.load_splits`: label shift, each site only its own modalities).
2. Each site builds its instruction samples from ITS OWN cases with the builders
   `medfuse tasks build` uses (`tasks.build_case_samples`), on the case as the site
   recorded it, so a clinic without ECGs has no ECG questions (`SiteTaskData`). No sample,
   case or feature leaves the site.
3. Flower runs the rounds with `run.py`'s strategy (FedAvg / FedProx, DP, SecAgg+,
   per-tensor averaging over the sites that trained a tensor) and `LocalGrid` (protobuf
   on the wire, bytes counted). Each site (`LoraSiteTrainer`, behind `run.py`'s
   `SiteClient`) starts from the global weights and takes `local_steps` optimiser steps
   through the one training loop (`train.loop.run_loop`). Only the travelling tensors
   (`lora_travelling_names`: `lora_A`/`lora_B` of every adapted layer, `lm.projector.*`,
   `fusion.*` above the encoders) go over the wire; the frozen LLM base never does.
4. After each round the coordinator scores the global model's LM loss on instruction
   samples of its validation cases; at the end it scores the held-out (test) samples'
   LM loss, re-calibrates the disease head on the validation split, optionally decodes
   diagnosis answers on test prompts (answer Jaccard), and writes a normal checkpoint
   (the LoRA adapter saved as an adapter) with `federate.json` inside.

In this in-process simulation the sites' model copies share the frozen base tensors
(`site_copy`) as hospitals would each hold the same published base: only the travelling
tensors are per-site.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medfuse.config import option
from medfuse.errors import ConfigError, InputError
from medfuse.federate.client import SiteClient, site_client_app
from medfuse.federate.config import FederateConfig
from medfuse.federate.local import (
    evaluate_fusion,
    get_arrays,
    mark_trained_and_add_proximal,
    set_arrays,
)
from medfuse.federate.run import (
    FIRST_NODE_ID,
    CohortSplits,
    FederatedRun,
    _privacy,
    _strategy,
    _workflow,
    load_splits,
    start_run,
    write_checkpoint_and_report,
)
from medfuse.federate.transport import LocalGrid
from medfuse.record.case import PatientCase
from medfuse.train.common import seed_everything, shard
from medfuse.train.config import SFTConfig
from medfuse.train.lm_stages import ALL_TASKS, LMObjective, truncate_target
from medfuse.train.loop import (
    Stage,
    StepReport,
    loss_report,
    lr_factor,
    run_loop,
    train_only,
)
from medfuse.train.task_data import TaskData, _sample

__all__ = ["FederatedSFTConfig", "LoraSiteTrainer", "SiteTaskData", "federate_lm", "lm_loss", "lora_travelling_names",
           "summary_lines"]

# What a travelling tensor is, by name: the report counts each group.
TRAVEL_GROUPS = ("lora", "projector", "fusion")


@dataclass
class FederatedSFTConfig(FederateConfig):
    """`medfuse federate --stage sft`: the LoRA adapter (+ projector, fusion layers) trained across sites."""

    stage: str = option("sft", "sft: the language model's LoRA adapter, projector and fusion layers travel.")
    batch_size: int = option(4, "Instruction samples per local optimiser step.")
    lr: float = option(2e-4, "Peak local learning rate (AdamW; one warm-up + cosine schedule over all rounds).")
    warmup_steps: int = option(2, "Warm-up steps of the learning-rate schedule.")
    local_steps: int | None = option(8,
        "Optimiser steps per site per round (null: local_epochs passes over the site's samples).")
    samples_per_site: int | None = option(None, "At most N instruction samples per site (drawn case by case, seeded).")
    task_types: list[str] = option(factory=list, help="Task types to train on (default: all of `medfuse tasks`).")
    langs: list[str] = option(factory=lambda: ["en", "zh"], help="Languages of the instruction samples.")
    max_target_tokens: int = option(160, "Targets are cut to this many tokens.")
    lora_r: int | None = option(None, "LoRA rank of an adapter added to a model without one (default: its config's).")
    lora_alpha: int | None = option(None, "LoRA alpha of an added adapter (default: the model config's).")
    disease_loss_weight: float = option(0.5,
        "Weight of the fusion model's disease loss added to the LM loss at each site (with train_fusion).")
    train_fusion: bool = option(True,
        "The fusion model's layers above the encoders train and travel too (false: LoRA + projector only).")
    eval_samples: int = option(32,
        "Instruction samples of the coordinator's validation (every round) and test (at the end) cases "
        "whose LM loss is scored.")
    answer_samples: int = option(0,
        "Held-out diagnosis prompts answered by greedy decoding at the end (answer Jaccard; 0: none).")

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key (the shared keys as `medfuse federate` checks them)."""
        if self.stage != "sft":
            raise ConfigError(f"stage: federated language-model training is stage sft, got {self.stage!r}")
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(FederateConfig)}
        FederateConfig(**{**shared, "stage": "encoders"})  # runs FederateConfig.validate on the shared keys
        if not self.model:
            raise ConfigError("model: required for stage sft (the checkpoint whose language model is fine-tuned)")
        self.require_ints("local_steps", "samples_per_site", nullable=True)
        self.require_ints("max_target_tokens", "eval_samples")
        self.require_ints("answer_samples", minimum=0)
        self.require_ints("lora_r", "lora_alpha", nullable=True)
        for lang in self.langs:
            if lang not in ("en", "zh"):
                raise ConfigError(f"langs: unknown language {lang!r} (en, zh)")
        for task in self.task_types:
            if task not in ALL_TASKS:
                raise ConfigError(f"task_types: unknown task {task!r} ({', '.join(ALL_TASKS)})")
        if self.disease_loss_weight < 0:
            raise ConfigError("disease_loss_weight: must be >= 0")

    def tasks(self) -> tuple[str, ...]:
        """The task types the sites train on."""
        return tuple(self.task_types) or ALL_TASKS

    def loop_config(self, out: Path, *, steps: int, n_samples: int, seed: int) -> SFTConfig:
        """The `SFTConfig` one local run of `steps` steps hands the training loop."""
        per_epoch = max(1, -(-n_samples // self.batch_size))
        return SFTConfig.from_dict({
            "cohort": self.cohort, "out": str(out), "init": self.model, "seed": seed, "split_seed": self.split_seed,
            "epochs": -(-steps // per_epoch), "max_steps": steps, "batch_size": self.batch_size, "lr": self.lr,
            "warmup_steps": self.warmup_steps, "langs": list(self.langs), "max_target_tokens": self.max_target_tokens,
            "quiet": True, "save_every": 10**9, "log_every": 10**9})


# ---------------------------------------------------------------------- what travels


def lora_travelling_names(model, train_fusion: bool = True) -> list[str]:
    """Names of `model`'s parameters that `MedFuse.trainable_parts("sft")` trains, in module
    order: the LoRA layers, the projector and (with `train_fusion`) the fusion layers above
    the encoders. Exactly what travels; the LLM's own weights are not among them."""
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        train_only(model, model.trainable_parts("sft", train_fusion=train_fusion))
        names = [n for n, p in model.named_parameters() if p.requires_grad]
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
    if not any("lora_" in n for n in names):
        raise ValueError("the model has no LoRA adapter (add one with model.lm.add_lora)")
    return names


def travel_group(name: str) -> str:
    """Which part a travelling tensor belongs to: "lora", "projector" or "fusion"."""
    if "lora_" in name:
        return "lora"
    return "projector" if name.startswith("lm.projector.") else "fusion"


def site_copy(model, names: list[str]):
    """A copy of `model` whose travelling tensors are its own and whose frozen tensors
    (the LLM base, the encoders) and tokenizer are shared with `model`."""
    travelling = set(names)
    memo: dict[int, Any] = {id(p): p for n, p in model.named_parameters() if n not in travelling}
    memo[id(model.lm.tokenizer)] = model.lm.tokenizer
    return copy.deepcopy(model, memo)


def prepare_lm_model(cfg: FederatedSFTConfig):
    """The starting model: the `model` checkpoint, with a new LoRA adapter when it has none."""
    from medfuse.model import MedFuse

    model = MedFuse.load(cfg.model)
    if not model.lm.has_lora:
        model.lm.add_lora(r=cfg.lora_r or model.config.lora_r, alpha=cfg.lora_alpha or model.config.lora_alpha)
    model.eval()
    return model


# ---------------------------------------------------------------------- a site's data and training


class SiteTaskData(TaskData):
    """Instruction samples built from in-memory cases (a site's own, as it recorded them),
    with the fused inputs of their cases: `TaskData`'s contract without the cohort folder.

    Cases are taken in a seeded order until `limit` samples are reached; the phrasing of
    each sample depends on (seed, case, task, language) only, so pooling several sites'
    cases gives exactly the union of their samples.
    """

    def __init__(self, cases: list[PatientCase], model, task_types: tuple[str, ...], langs: tuple[str, ...],
                 seed: int, limit: int | None = None, order_seed: int = 0):
        from medfuse.interpret.case import interpret_case
        from medfuse.model.inputs import featurize_many
        from medfuse.tasks.build import build_case_samples

        rng = np.random.default_rng(order_seed)
        self._cases: dict[str, PatientCase] = {}
        samples = []
        for i in rng.permutation(len(cases)):
            case = cases[int(i)]
            rows = build_case_samples(case, interpret_case(case), panel=model.panel, langs=langs, seed=seed,
                                      tasks=list(task_types))
            new = [s for row in rows for s in _sample(row)]
            if new:
                self._cases[case.case_id] = case
                samples.extend(new)
            if limit is not None and len(samples) >= limit:
                break
        self.samples = [samples[int(i)] for i in rng.permutation(len(samples))][:limit]
        self.model = model
        used = sorted({s.case_id for s in self.samples})
        chosen = [self._cases[cid] for cid in used]
        items = featurize_many(chosen, model.config, model.stats, model.panel) if chosen else []
        self.features = {c.case_id: it for c, it in zip(chosen, items, strict=True)}

    @classmethod
    def pooled(cls, parts: list[TaskData], seed: int = 0) -> SiteTaskData:
        """The union of several sites' samples (shuffled, seeded): exactly what a centralised
        run on the same data would train on."""
        pooled = cls.__new__(cls)
        pooled.model = parts[0].model
        pooled._cases = {cid: c for part in parts for cid, c in part._cases.items()}
        pooled.features = {cid: f for part in parts for cid, f in part.features.items()}
        samples = [s for part in parts for s in part.samples]
        pooled.samples = [samples[int(i)] for i in np.random.default_rng(seed).permutation(len(samples))]
        return pooled


def prompts_and_targets(model, data: TaskData, max_target_tokens: int) -> tuple[list[str], list[str]]:
    """Each sample's chat-formatted prompt and its target cut to `max_target_tokens` tokens."""
    from medfuse.model.llm import chat_prompt

    tok = model.lm.tokenizer
    return ([chat_prompt(tok, s.user, s.system) for s in data.samples],
            [truncate_target(tok, s.target, max_target_tokens) for s in data.samples])


@torch.no_grad()
def lm_loss(model, data: TaskData, max_target_tokens: int, batch_size: int = 8) -> float:
    """Mean per-token cross-entropy of the targets of `data`'s samples (the SFT LM loss, no dropout)."""
    model.eval()
    prompts, targets = prompts_and_targets(model, data, max_target_tokens)
    device = next(model.lm.projector.parameters()).device
    total, tokens = 0.0, 0
    for start in range(0, len(data), batch_size):
        idx = range(start, min(len(data), start + batch_size))
        _, batch = data.batch(idx)
        out = model.fusion({k: v.to(device) for k, v in batch.items()})
        logps, mask = model.lm.completion_logps([prompts[i] for i in idx], out, [targets[i] for i in idx])
        total -= float(logps.sum())
        tokens += int(mask.sum())
    return total / tokens if tokens else float("nan")


class LoraSiteTrainer:
    """A site's model copy (own travelling tensors) and instruction samples; `train` runs
    `local_steps` SFT steps from given weights. Same interface as `local.SiteTrainer`
    (`get_arrays`, `set_arrays`, `train`, `n_cases`), so `SiteClient` drives either.

    The learning rate walks one warm-up + cosine schedule over all rounds (round r's steps
    continue where round r-1's stopped); with `keep_optimizer` the site's AdamW moments
    carry over from round to round (they never travel).
    """

    def __init__(self, name: str, cases: list[PatientCase], model, names: list[str], cfg: FederatedSFTConfig,
                 workdir: Path, order_seed: int = 0, data: TaskData | None = None):
        self.name = name
        self.names = names
        self.cfg = cfg
        self.n_cases = len(cases)
        self.model = site_copy(model, names)
        self.data = data or SiteTaskData(cases, self.model, cfg.tasks(), tuple(cfg.langs), cfg.seed,
                                          cfg.samples_per_site, order_seed=order_seed)
        if not len(self.data):
            raise InputError(cfg.cohort, f"{name}: its cases give no instruction samples of task types "
                                         f"{', '.join(cfg.tasks())} in languages {', '.join(cfg.langs)}")
        self.prompts, self.targets = prompts_and_targets(self.model, self.data, cfg.max_target_tokens)
        travelling = set(names)
        train_only(self.model, [p for n, p in self.model.named_parameters() if n in travelling])
        self.objective = LMObjective(self.model.fusion, self.model.lm, cfg.train_fusion, cfg.disease_loss_weight)
        self.workdir = workdir / name
        self.history: list[dict[str, Any]] = []  # per local run: mean losses and steps (stays at the site)
        self._optimizer: torch.optim.Optimizer | None = None
        self._runs = 0

    def get_arrays(self) -> list[np.ndarray]:
        return get_arrays(self.model, self.names, prefix="")

    def set_arrays(self, arrays: list[np.ndarray]) -> None:
        set_arrays(self.model, self.names, arrays, prefix="")

    def steps_per_round(self, epochs: int) -> int:
        """`local_steps`, or `epochs` passes over the site's samples when it is null."""
        return self.cfg.local_steps or -(-len(self.data) // self.cfg.batch_size) * epochs

    def lr_factors(self, epochs: int, server_round: int, rounds: int) -> list[float]:
        """The LR factor of each local step of round `server_round` (1-based) of `rounds`."""
        per_round = self.steps_per_round(epochs)
        offset, total = ((server_round - 1) * per_round, rounds * per_round) if self.cfg.lr_schedule == "global" \
            else (0, per_round)
        return [lr_factor(offset + s, self.cfg.warmup_steps, total) for s in range(per_round)]

    def train(self, epochs: int, seed: int, mu: float = 0.0, server_round: int = 1, rounds: int = 1) -> dict[str, Any]:
        """One round's local SFT steps through `run_loop`, from the weights set on entry.

        FedProx (`mu` > 0) adds the gradient of mu/2 * ||w - w_global||^2 to every
        travelling tensor the site's data reaches, as `SiteTrainer` does. Returns the mean
        total loss, the mean LM loss, the step count and `trained` (per travelling tensor,
        whether the site's data gave it a non-zero gradient).
        """
        self._runs += 1
        out = self.workdir / f"run{self._runs}"
        steps = self.steps_per_round(epochs)
        loop_cfg = self.cfg.loop_config(out, steps=steps, n_samples=len(self.data), seed=seed)
        seed_everything(seed)
        travelling_set = set(self.names)
        travelling = [p for n, p in self.model.named_parameters() if n in travelling_set]
        anchor = [p.detach().clone() for p in travelling]
        trained = [False] * len(travelling)
        losses: list[float] = []
        lm_losses: list[float] = []
        train_fusion = self.cfg.train_fusion

        def step(idx: np.ndarray, objective: nn.Module, accelerator) -> StepReport:
            idx = shard(idx, accelerator)
            _, batch = self.data.batch(idx)
            objective.train()
            fusion = accelerator.unwrap_model(objective).fusion
            # Frozen parts run as at inference (no dropout), as in `medfuse train sft`.
            if not train_fusion:
                fusion.eval()
            elif hasattr(fusion, "encoders"):
                fusion.encoders.eval()
            terms = objective([self.prompts[i] for i in idx], [self.targets[i] for i in idx],
                              {k: v.to(accelerator.device) for k, v in batch.items()})
            accelerator.backward(terms["loss"])
            mark_trained_and_add_proximal(travelling, anchor, trained, terms, mu)
            losses.append(float(terms["loss"].detach()))
            lm_losses.append(float(terms["lm"].detach()))
            return loss_report(terms, samples=len(idx))

        factors = self.lr_factors(epochs, server_round, rounds)
        optimizer = self._optimizer
        if optimizer is None and self.cfg.keep_optimizer:
            optimizer = self._optimizer = torch.optim.AdamW(
                [p for p in self.objective.parameters() if p.requires_grad], lr=loop_cfg.lr,
                weight_decay=loop_cfg.weight_decay)
        run = run_loop(loop_cfg, out, Stage(f"federated sft {self.name}", self.objective, len(self.data), step,
                                            throughput="samples_per_s", trainable_state_only=True,
                                            optimizer=optimizer,
                                            lr_schedule=lambda s: factors[min(s, len(factors) - 1)]))
        run.log.close()
        self.model.eval()
        result = {"loss": float(np.mean(losses)) if losses else float("nan"),
                  "lm_loss": float(np.mean(lm_losses)) if lm_losses else float("nan"),
                  "steps": run.steps, "trained": trained}
        self.history.append({k: v for k, v in result.items() if k != "trained"})
        return result


class LoraSiteClient(SiteClient):
    """`SiteClient` whose fit reply also carries the site's mean local LM loss (a scalar)."""

    def fit(self, parameters, config):
        arrays, weight, metrics = super().fit(parameters, config)
        return arrays, weight, {**metrics, "lm_loss": float(self.trainer.history[-1]["lm_loss"])}


def _record_site_lm_loss(strategy, sink: dict[int, float]) -> None:
    """Keep the case-weighted mean of the sites' reported local LM loss per round (from the replies)."""
    aggregate = strategy.aggregate_fit

    def aggregate_fit(server_round, results, failures):
        rows = [(res.num_examples, float(res.metrics["lm_loss"])) for _, res in results if "lm_loss" in res.metrics]
        if rows:
            sink[server_round] = sum(w * v for w, v in rows) / (sum(w for w, _ in rows) or 1)
        return aggregate(server_round, results, failures)

    strategy.aggregate_fit = aggregate_fit


# ---------------------------------------------------------------------- the run


def federate_lm(cfg: FederatedSFTConfig, command: str | None = None, keep_uplink: bool = False,
                splits: CohortSplits | None = None) -> FederatedRun:
    """Run federated SFT as `cfg` describes and write its checkpoint + report (see the module doc)."""
    from flwr.app import Context, RecordDict
    from flwr.server import ServerConfig
    from flwr.server.compat.legacy_context import LegacyContext

    out = start_run(cfg)
    started = time.perf_counter()
    splits = splits or load_splits(cfg)
    sites = splits.sites
    model = prepare_lm_model(cfg)
    names = lora_travelling_names(model, cfg.train_fusion)
    langs, tasks = tuple(cfg.langs), cfg.tasks()
    # The coordinator's own held-out samples: its validation cases (every round) and test cases (at the end).
    val_data = SiteTaskData(splits.val, model, tasks, langs, cfg.seed, cfg.eval_samples, order_seed=cfg.seed + 1)
    if not len(val_data):
        raise InputError(cfg.cohort, "its validation cases give no instruction samples to score the LM loss on")
    rounds: list[dict[str, Any]] = []
    latest: dict[str, Any] = {}
    site_lm_loss: dict[int, float] = {}

    def evaluate_global(server_round: int, arrays: list[np.ndarray], config) -> tuple[float, dict[str, Any]]:
        set_arrays(model, names, arrays, prefix="")
        latest["arrays"], latest["round"] = arrays, server_round
        loss = lm_loss(model, val_data, cfg.max_target_tokens)
        rounds.append({"round": server_round, "val_lm_loss": round(loss, 5)})
        if not cfg.quiet:
            print(f"round {server_round}: val LM loss {loss:.4f}", flush=True)
        return loss, {"val_lm_loss": loss}

    with tempfile.TemporaryDirectory(prefix="medfuse-federate-sft-") as tmp:  # the sites' local training logs
        trainers = [LoraSiteTrainer(s.name, s.cases, model, names, cfg, Path(tmp), order_seed=cfg.seed + 10 * (i + 1))
                    for i, s in enumerate(sites)]
        unweighted = cfg.dp_clip > 0
        clients = [LoraSiteClient(t, cfg.seed, i, unweighted) for i, t in enumerate(trainers)]
        apps = {FIRST_NODE_ID + i: site_client_app(c, clip=cfg.dp_clip > 0, secagg=cfg.secagg)
                for i, c in enumerate(clients)}
        grid = LocalGrid(apps, keep_uplink=keep_uplink)
        strategy = _strategy(cfg, trainers[0].get_arrays(), evaluate_global)
        _record_site_lm_loss(strategy, site_lm_loss)
        context = LegacyContext(Context(1, 0, {}, RecordDict(), {}), config=ServerConfig(num_rounds=cfg.rounds),
                                strategy=strategy)
        total_weight = len(sites) if unweighted else sum(t.n_cases for t in trainers)
        _workflow(cfg, total_weight)(grid, context)
    if latest.get("round") != cfg.rounds:
        raise RuntimeError(f"the federation stopped after round {latest.get('round')} of {cfg.rounds}")
    fed_s = time.perf_counter() - started

    train_loss = {r: m for r, m in context.history.metrics_distributed_fit.get("train_loss", [])}
    traffic = grid.bytes_per_round()
    for row in rounds:
        r = row["round"]
        if r in train_loss:
            row["train_loss"] = round(float(train_loss[r]), 5)
        if r in site_lm_loss:
            row["train_lm_loss"] = round(site_lm_loss[r], 5)
        if r > 0:
            row["bytes_down"], row["bytes_up"] = traffic.get(r, {}).get("down", 0), traffic.get(r, {}).get("up", 0)
            row["messages"] = traffic.get(r, {}).get("messages", 0)

    set_arrays(model, names, latest["arrays"], prefix="")
    test_data = SiteTaskData(splits.test, model, tasks, langs, cfg.seed, cfg.eval_samples, order_seed=cfg.seed + 2)
    held_out: dict[str, Any] = {"lm_loss": round(lm_loss(model, test_data, cfg.max_target_tokens), 5),
                                "lm_samples": len(test_data)}
    validation: dict[str, Any] = {"lm_loss": rounds[-1]["val_lm_loss"], "lm_samples": len(val_data)}
    if cfg.train_fusion:  # the disease head trained: re-calibrate it, as `medfuse train sft` does
        scores = evaluate_fusion(model, model.fusion, splits.val, splits.test,
                                 findings_trained=bool(model.card.get("findings_trained")))
        validation["diagnosis"], held_out["diagnosis"] = scores["validation"], scores["held_out"]
    if cfg.answer_samples:
        held_out["answers"] = held_out_answers(model, cfg, cfg.answer_samples)
    report = {
        "what": "medfuse federate: federated SFT of the language model's LoRA adapter across sites (Flower)",
        "strategy": cfg.strategy, "mu": cfg.mu if cfg.strategy == "fedprox" else None, "stage": "sft",
        "rounds": cfg.rounds, "local_steps": trainers[0].steps_per_round(cfg.local_epochs),
        "secure_aggregation": "flower secagg+" if cfg.secagg else None,
        "privacy": _privacy(cfg),
        "sites": [{**s.summary(), "instruction_samples": len(t.data)} for s, t in zip(sites, trainers, strict=True)],
        "coordinator": {"validation_cases": len(splits.val), "held_out_cases": len(splits.test)},
        "travelling": travelling_summary(model, names),
        "rounds_detail": [r for r in rounds if r["round"] > 0],
        "initial": next((r for r in rounds if r["round"] == 0), None),
        "bytes_total": {"down": sum(t["down"] for t in traffic.values()), "up": sum(t["up"] for t in traffic.values())},
        "validation": validation, "held_out": held_out, "seconds": round(fed_s, 1),
        "command": command, "config": cfg.as_dict(),
    }
    previous = model.card.get("training_data")
    model.card.update({
        "trained": True,
        "training_data": f"{previous}; then federated SFT: {len(sites)} sites, "
                         f"{sum(len(t.data) for t in trainers)} instruction samples from "
                         f"{sum(len(s.cases) for s in sites)} training cases of cohort "
                         f"'{Path(cfg.cohort).resolve().name}' (patient-level split, seed {cfg.split_seed})",
        "stages": [*model.card.get("stages", []), {
            "stage": "federated sft", "rounds": cfg.rounds, "strategy": cfg.strategy,
            "local_steps": report["local_steps"], "seconds": round(fed_s, 1), "command": command,
            "privacy": report["privacy"], "travelling_parameters": report["travelling"]["parameters"],
            "validation": validation}],
    })
    write_checkpoint_and_report(model, out, report, overwrite=cfg.overwrite)
    return FederatedRun(model=model, report=report, grid=grid, clients=clients, names=names)


def travelling_summary(model, names: list[str]) -> dict[str, Any]:
    """What travelled: tensor and parameter counts (per group), float32 payload bytes, what was never sent."""
    params = dict(model.named_parameters())
    sent = sum(params[n].numel() for n in names)
    groups = {g: {"tensors": sum(travel_group(n) == g for n in names),
                  "parameters": sum(params[n].numel() for n in names if travel_group(n) == g)} for g in TRAVEL_GROUPS}
    return {"tensors": len(names), "parameters": sent, "payload_bytes": 4 * sent, "groups": groups,
            "not_sent_parameters": sum(p.numel() for p in model.parameters()) - sent, "names": list(names)}


def held_out_answers(model, cfg: FederatedSFTConfig, n: int) -> dict[str, Any]:
    """Greedy-decoded diagnosis answers on `n` prompts of the cohort's test split (`lm_eval.evaluate_answers`)."""
    from medfuse.train.lm_eval import evaluate_answers

    return evaluate_answers(model, cfg.loop_config(Path(cfg.out), steps=1, n_samples=1, seed=cfg.seed), n,
                            split="test")




def summary_lines(report: dict[str, Any], out: str) -> list[str]:
    """The one-screen summary of a federated SFT report: sites, per-round losses and bytes, what travelled."""
    lines = [f"{s['name']}: {s['cases']} cases, {s['instruction_samples']} instruction samples, "
             f"modalities {', '.join(s['modalities'])}" for s in report["sites"]]
    first = report["initial"] or {}
    lines.append(f"round 0: val LM loss {first.get('val_lm_loss')}")
    lines += [f"round {r['round']}: site LM loss {r.get('train_lm_loss')}, val LM loss {r['val_lm_loss']}, "
              f"{r['bytes_down']:,} B down / {r['bytes_up']:,} B up" for r in report["rounds_detail"]]
    t = report["travelling"]
    groups = ", ".join(f"{g} {v['parameters']:,}" for g, v in t["groups"].items())
    lines.append(f"travelled: {t['tensors']} tensors, {t['parameters']:,} parameters ({groups}); "
                 f"{t['not_sent_parameters']:,} never sent")
    h = report["held_out"]
    line = f"held out: LM loss {h['lm_loss']} ({h['lm_samples']} samples)"
    if "diagnosis" in h:
        line += f", diagnosis macro-F1 {h['diagnosis']['macro_f1']}"
    if "answers" in h:
        line += f", answer Jaccard {h['answers'].get('mean_jaccard')} ({h['answers']['n']} prompts)"
    lines += [line, f"wrote {out} (report: {out}/federate.json)"]
    return lines
