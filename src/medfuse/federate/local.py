"""Local training at one site, and what travels: the trainable parameters named by `MedFuse.trainable_parts`.

`travelling_names(model, stage)` are the names (`fusion.…`) of the parameters that train in
the stage and are exchanged with the server; everything else (the language model, and in
the "fusion" stage the encoders) stays where it is. `SiteTrainer` holds a site's copy of
the fusion model and its featurized cases and trains them with the one training loop
(`medfuse.train.loop.run_loop`) on the encoder stage's objective (`EncoderObjective`),
plus the FedProx proximal term mu/2 * ||w - w_global||^2 over the travelling weights its data trains.
The centralised and local-only baselines train the same way (`SiteTrainer` on pooled or
one site's cases), so the comparison isolates the federation.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medfuse.federate.config import LR_SCHEDULES
from medfuse.record.case import PatientCase
from medfuse.train.common import seed_everything, shard
from medfuse.train.config import EncodersConfig
from medfuse.train.encoders import (
    EncoderData,
    EncoderObjective,
    calibrate,
    diagnosis_metrics,
    predict,
)
from medfuse.train.loop import (
    Stage,
    StepReport,
    loss_report,
    lr_factor,
    run_loop,
    train_only,
)


def stage_parts(model, stage: str) -> list[nn.Module | nn.Parameter]:
    """The parts of `model` (a MedFuse) that train in a federated `stage` (encoders | fusion)."""
    if stage == "encoders":
        return model.trainable_parts("encoders")
    if stage == "fusion":
        return model.fusion.trainable_parts("sft")  # what sits above the (frozen) encoders
    raise ValueError(f"unknown federated stage {stage!r} (encoders, fusion)")


def travelling_names(model, stage: str) -> list[str]:
    """Names of `model`'s parameters that train in `stage`, in module order: exactly what travels."""
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        train_only(model, stage_parts(model, stage))
        names = [n for n, p in model.named_parameters() if p.requires_grad]
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
    if not all(n.startswith("fusion.") for n in names):  # LoRA needs the LM objective: not a federated stage yet
        raise ValueError(f"stage {stage!r} trains parameters outside the fusion model")
    return names


def get_arrays(module: nn.Module, names: list[str], prefix: str = "fusion.") -> list[np.ndarray]:
    """The named parameters of `module` (names carry `prefix`) as float32 numpy arrays, in order."""
    params = dict(module.named_parameters())
    return [params[n.removeprefix(prefix)].detach().cpu().numpy().astype(np.float32, copy=True) for n in names]


@torch.no_grad()
def set_arrays(module: nn.Module, names: list[str], arrays: list[np.ndarray], prefix: str = "fusion.") -> None:
    """Copy `arrays` into the named parameters of `module` (shapes must match)."""
    params = dict(module.named_parameters())
    if len(arrays) != len(names):
        raise ValueError(f"expected {len(names)} arrays, got {len(arrays)}")
    for n, a in zip(names, arrays, strict=True):
        p = params[n.removeprefix(prefix)]
        p.copy_(torch.as_tensor(np.asarray(a), dtype=p.dtype).reshape(p.shape))


def mark_trained_and_add_proximal(travelling: list[nn.Parameter], anchor: list[torch.Tensor], trained: list[bool],
                                  terms: dict[str, torch.Tensor], mu: float) -> None:
    """After `backward`: mark which travelling tensors this step reached (a tensor no step
    reached is not averaged in), and with `mu` > 0 add FedProx's proximal term
    mu/2 ||w - w_global||^2 to the gradients of the reached tensors and to `terms["loss"]`."""
    reached = [p.grad is not None and bool(p.grad.any()) for p in travelling]
    trained[:] = [a or b for a, b in zip(trained, reached, strict=True)]
    if mu <= 0:
        return
    with torch.no_grad():
        gaps = [(p - a) if r else None for p, a, r in zip(travelling, anchor, reached, strict=True)]
        for p, gap in zip(travelling, gaps, strict=True):
            if gap is not None:
                p.grad.add_(gap, alpha=mu)
        terms["proximal"] = sum((g ** 2).sum() for g in gaps if g is not None) * (mu / 2)
        terms["loss"] = terms["loss"] + terms["proximal"]


class SiteTrainer:
    """A site's fusion model copy and featurized cases; `train` runs local epochs from given weights.

    `lr_schedule` "global": the site's local steps walk one warm-up + cosine schedule laid
    over the whole federation (round r's steps continue where round r-1's stopped), so
    its learning rate falls as a centralised run's would, instead of warming up and
    decaying again inside every short local run ("local"). `keep_optimizer`: the site's
    AdamW moments carry over from round to round (they are its own statistics and never
    travel) instead of restarting from zero each round.
    """

    def __init__(self, name: str, cases: list[PatientCase], model, names: list[str], stage: str, *,
                 batch_size: int, lr: float, warmup_steps: int, finding_weight: float, workdir: Path,
                 cohort: str, data: EncoderData | None = None, lr_schedule: str = "global",
                 keep_optimizer: bool = False):
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {lr_schedule!r} ({', '.join(LR_SCHEDULES)})")
        self.lr_schedule = lr_schedule
        self.keep_optimizer = keep_optimizer
        self._optimizer: torch.optim.Optimizer | None = None
        self.name = name
        self.names = names
        self.stage = stage
        self.n_cases = len(cases)
        self.fusion = copy.deepcopy(model.fusion)
        self.data = data or EncoderData.build(cases, model, with_texts=False)  # featurized once per site
        self.workdir = workdir / name
        self.settings = {"cohort": cohort, "batch_size": batch_size, "lr": lr, "warmup_steps": warmup_steps,
                         "finding_weight": finding_weight, "quiet": True,
                         # The contrastive terms need a sentence encoder at every site; federated
                         # training uses the supervised terms only.
                         "contrastive_weight": 0.0, "save_every": 10**9, "log_every": 10**9}
        fusion_names = {n.removeprefix("fusion.") for n in names}
        train_only(self.fusion, [p for n, p in self.fusion.named_parameters() if n in fusion_names])
        self.objective = EncoderObjective(self.fusion, EncodersConfig.from_dict(
            {**self.settings, "out": str(self.workdir / "unused")}))
        self._runs = 0

    def get_arrays(self) -> list[np.ndarray]:
        return get_arrays(self.fusion, self.names)

    def set_arrays(self, arrays: list[np.ndarray]) -> None:
        set_arrays(self.fusion, self.names, arrays)

    def local_steps(self, epochs: float) -> int:
        """Optimiser steps of `epochs` local epochs (a fraction of an epoch: that share of one
        epoch's batches, at least one step)."""
        return max(1, math.ceil(epochs * -(-self.n_cases // self.settings["batch_size"]) - 1e-9))

    def lr_factors(self, epochs: float, server_round: int, rounds: int) -> list[float]:
        """The LR factor of each local step of round `server_round` (1-based) of `rounds`,
        `epochs` local epochs each (with "local": the same schedule every round)."""
        per_round = self.local_steps(epochs)
        offset, total = ((server_round - 1) * per_round, rounds * per_round) if self.lr_schedule == "global" \
            else (0, per_round)
        return [lr_factor(offset + s, self.settings["warmup_steps"], total) for s in range(per_round)]

    def train(self, epochs: float, seed: int, mu: float = 0.0, server_round: int = 1, rounds: int = 1
              ) -> dict[str, Any]:
        """`epochs` local epochs through `run_loop`, from the weights set on entry (the global model).

        A fractional `epochs` (e.g. 0.25: more rounds of less local work for the same total
        epochs) runs `local_steps(epochs)` steps on a fresh shuffle of the site's cases.

        The learning rate follows `lr_factors` (one round of one: the loop's own schedule);
        with `keep_optimizer` the site's AdamW state continues from its previous round.

        FedProx (`mu` > 0): the gradient of mu/2 * ||w - w_global||^2 is added to every
        travelling weight the site's data trains. A weight no local case reaches (the
        encoder of a modality the site lacks) has no loss gradient and stays at w_global,
        which is the proximal term's own minimum; putting the term on it would only let
        Adam's per-weight normalisation blow its tiny gradient up into full-size steps.
        Returns the mean loss, the step count and `trained`: per travelling tensor, whether
        the site's data gave it a non-zero gradient.
        """
        self._runs += 1
        out = self.workdir / f"run{self._runs}"
        cfg = EncodersConfig.from_dict({**self.settings, "out": str(out), "epochs": math.ceil(epochs - 1e-9),
                                        "max_steps": self.local_steps(epochs), "seed": seed})
        seed_everything(seed)
        fusion_names = {n.removeprefix("fusion.") for n in self.names}
        travelling = [p for n, p in self.fusion.named_parameters() if n in fusion_names]
        anchor = [p.detach().clone() for p in travelling]
        trained = [False] * len(travelling)
        losses: list[float] = []
        freeze_encoders = self.stage == "fusion"

        def step(idx: np.ndarray, objective: nn.Module, accelerator) -> StepReport:
            objective.train()
            if freeze_encoders:  # frozen encoders run as at inference (no dropout)
                objective.fusion.encoders.eval()
            batch = {k: v.to(accelerator.device) for k, v in self.data.batch(shard(idx, accelerator)).items()}
            terms = objective(batch)
            accelerator.backward(terms["loss"])
            mark_trained_and_add_proximal(travelling, anchor, trained, terms, mu)
            losses.append(float(terms["loss"].detach()))
            return loss_report(terms, samples=len(idx))

        factors = self.lr_factors(epochs, server_round, rounds)
        optimizer = self._optimizer
        if optimizer is None and self.keep_optimizer:
            # the same parameters and settings run_loop's own AdamW would get
            optimizer = self._optimizer = torch.optim.AdamW(
                [p for p in self.objective.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
        run = run_loop(cfg, out, Stage(f"federated {self.name}", self.objective, self.n_cases, step,
                                       optimizer=optimizer, lr_schedule=lambda s: factors[min(s, len(factors) - 1)]))
        run.log.close()
        return {"loss": float(np.mean(losses)) if losses else float("nan"), "steps": run.steps, "trained": trained}


def evaluate_fusion(model, fusion: nn.Module, val_cases: list[PatientCase], test_cases: list[PatientCase],
                    val: EncoderData | None = None, test: EncoderData | None = None,
                    findings_trained: bool = False) -> dict[str, Any]:
    """Calibrate `model` (with `fusion` in place) on the validation cases, then score the
    held-out test cases at the fitted thresholds: {"validation": …, "held_out": …}."""
    model.fusion = fusion
    model.card["findings_trained"] = findings_trained
    validation = calibrate(model, val_cases, val)
    test = test or EncoderData.build(test_cases, model, with_texts=False)
    held_out = diagnosis_metrics(model.head, predict(fusion, test), model.panel.keys)
    return {"validation": validation["diagnosis"], "held_out": held_out}


def held_out_decisions(model, test: EncoderData) -> tuple[np.ndarray, np.ndarray]:
    """(labels, decisions), both (n, D) 0/1, of a calibrated `model` on featurized cases:
    the per-case rows a paired bootstrap of two arms' macro-F1 resamples."""
    pred = predict(model.fusion, test)
    probs = model.head.predict_proba(pred["logits"])
    return pred["labels"].astype(int), (probs >= np.asarray(model.head.thresholds)[None, :]).astype(int)
