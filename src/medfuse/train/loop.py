"""The one training loop every stage runs: optimiser, schedule, backward, clip, log, save, resume.

A stage says what trains and how one step's loss is made; the loop does the rest:

    out = start_stage(cfg)                           # output check, threads, seeds
    train_only(model, model.trainable_parts("sft"))  # freeze all but the stage's parts
    run = run_loop(cfg, out, Stage("sft", objective, len(data), step))
    ...                                              # calibrate, evaluate, fill the model card
    run.finish(model)                                # checkpoint + metrics.jsonl, state dropped

`Stage.step(idx, module, accelerator)` takes the indices of one batch, runs the forward
pass(es) and `accelerator.backward` (GRPO samples, scores and accumulates over
micro-batches there) and returns a `StepReport`; the loop zeroes the gradients before it,
then clips, steps the AdamW optimiser and the warm-up + cosine schedule (`lr_factor`),
logs every `log_every` steps to metrics.jsonl and writes the resumable state every
`save_every` steps. A rerun of an interrupted command replays the data order up to the
saved step and continues from there.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medfuse.errors import InputError
from medfuse.train.common import check_output, seed_everything
from medfuse.train.config import StageConfig

STATE_DIR = ".train_state"  # beside the output folder while a stage runs; removed at the end
METRICS_FILE = "metrics.jsonl"


@dataclass
class StepReport:
    """What one step tells the loop: the progress-bar text and the step's metrics.jsonl fields."""

    postfix: dict[str, str]
    values: Callable[[], dict[str, Any]]  # called on logged steps only, after the optimiser step
    samples: int = 0  # samples trained on, for the throughput field


def loss_report(losses: dict[str, Any], samples: int) -> StepReport:
    """The report of a step whose objective returned its loss terms (`"loss"`: the total)."""
    return StepReport(postfix={"loss": f"{float(losses['loss'].detach()):.3f}"},
                      values=lambda: {k: round(float(v.detach()), 5) for k, v in losses.items() if torch.is_tensor(v)},
                      samples=samples)


@dataclass
class Stage:
    """What a training stage hands the loop."""

    name: str  # "encoders", "align", "sft", "grpo": the metrics rows' stage and the progress bar's label
    module: nn.Module  # what the accelerator prepares; its parameters that require gradients are optimised
    n_items: int  # training items per epoch; the steps get shuffled batches of their indices
    step: Callable[[np.ndarray, nn.Module, Any], StepReport]  # (indices, prepared module, accelerator)
    throughput: str | None = None  # metrics field of samples per second ("cases_per_s"); None: not logged
    # The resumable state holds the whole module (buffers too), or only its trainable tensors
    # (the LM stages: not the frozen 135M backbone).
    trainable_state_only: bool = False
    # A run that continues a longer schedule (a federated site's round) brings its own
    # optimiser (its state kept across runs) and LR factor per step of this run;
    # None: a fresh AdamW and the warm-up + cosine schedule over this run (`lr_factor`).
    optimizer: torch.optim.Optimizer | None = None
    lr_schedule: Callable[[int], float] | None = None


@dataclass
class StageRun:
    """A finished loop: its step count and time, the trained (unwrapped) module and the open metrics log."""

    steps: int
    seconds: float
    module: nn.Module
    n_trainable: int
    log: MetricsLog
    out: Path
    state: ResumableState = field(repr=False)
    accelerator: Any = field(repr=False)

    def finish(self, model: nn.Module) -> None:
        """Write `model` as the checkpoint, move metrics.jsonl into it, drop the resumable state."""
        finish_stage(model, self.out, self.log, self.state, self.accelerator)


def start_stage(cfg: StageConfig) -> Path:
    """The checked output folder; torch threads and every seed set from the config."""
    out = check_output(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    return out


def train_only(model: nn.Module, parts: Iterable[nn.Module | nn.Parameter]) -> list[nn.Parameter]:
    """Freeze every parameter of `model` but those of `parts`; returns the trainable ones."""
    for p in model.parameters():
        p.requires_grad_(False)
    for part in parts:
        for p in part.parameters() if isinstance(part, nn.Module) else [part]:
            p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


class TrainableView(nn.Module):
    """Only the trainable tensors of a module, for the resumable state (not the frozen backbone)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self._module = [module]  # a list, so that the module is not registered as a child

    def state_dict(self, *args, **kwargs):
        """The module's state entries of parameters that require gradients."""
        m = self._module[0]
        names = {n for n, p in m.named_parameters() if p.requires_grad}
        return {k: v for k, v in m.state_dict().items() if k in names}

    def load_state_dict(self, state, strict: bool = True):
        """Load the saved trainable entries into the module, leaving the frozen ones as they are."""
        return self._module[0].load_state_dict(state, strict=False)


def run_loop(cfg: StageConfig, out: Path, stage: Stage) -> StageRun:
    """Train `stage.module` for `cfg.epochs` (at most `cfg.max_steps` steps), resuming a saved state."""
    from tqdm import tqdm

    params = [p for p in stage.module.parameters() if p.requires_grad]
    optimizer = stage.optimizer or torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-stage.n_items // cfg.batch_size)
    total = min(cfg.max_steps or 10**12, steps_per_epoch * cfg.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, stage.lr_schedule or (lambda s: lr_factor(s, cfg.warmup_steps, total)))
    accelerator = make_accelerator()
    module, optimizer = accelerator.prepare(stage.module, optimizer)

    def saved() -> nn.Module:
        plain = accelerator.unwrap_model(module)
        return TrainableView(plain) if stage.trainable_state_only else plain

    state = ResumableState(cfg)
    step = 0
    if state.exists():
        step, _ = state.load(saved(), optimizer, scheduler)
    log = stage_log(out, stage.name, accelerator)
    rng = np.random.default_rng(cfg.seed)
    bar = tqdm(total=total, initial=step, disable=cfg.quiet, desc=f"train {stage.name}", unit="step")
    speed = Throughput()
    done = 0
    start = time.perf_counter()
    for _epoch in range(cfg.epochs):
        for idx in epoch_batches(stage.n_items, cfg.batch_size, rng):
            if done < step:  # resumed: replay the data order up to the saved step
                done += 1
                continue
            if step >= total:
                break
            optimizer.zero_grad(set_to_none=True)
            report = stage.step(idx, module, accelerator)
            if cfg.grad_clip:
                accelerator.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            done += 1
            speed.add(report.samples)
            bar.update(1)
            bar.set_postfix(**report.postfix)
            if step % cfg.log_every == 0 or step == total:
                rate = {stage.throughput: speed.rate()} if stage.throughput else {}
                log.log(step, lr=scheduler.get_last_lr()[0], **rate, **report.values())
            if step % cfg.save_every == 0 and step < total and accelerator.is_main_process:
                state.save(step, saved(), optimizer, scheduler)
    bar.close()
    return StageRun(steps=step, seconds=time.perf_counter() - start, module=accelerator.unwrap_model(module),
                    n_trainable=sum(p.numel() for p in params), log=log, out=out, state=state,
                    accelerator=accelerator)


# ---------------------------------------------------------------------- the loop's parts


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 at `total` steps."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Shuffled index batches over n items (the last short batch kept)."""
    order = rng.permutation(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


class Throughput:
    """Samples per second over the last logging window."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.samples = 0

    def add(self, n: int) -> None:
        self.samples += n

    def rate(self) -> float:
        dt = time.perf_counter() - self.start
        r = self.samples / dt if dt > 0 else 0.0
        self.start, self.samples = time.perf_counter(), 0
        return round(r, 2)


def make_accelerator():
    """An `accelerate.Accelerator`: the GPU(s) when CUDA is there, else the CPU (`accelerate launch` for several)."""
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


class MetricsLog:
    """Append-only JSON Lines metrics (+ TensorBoard / MLflow when they are installed and asked for)."""

    def __init__(self, path: Path, stage: str, enabled: bool = True):
        self.path = path
        self.stage = stage
        self.enabled = enabled  # False on the non-main processes of a data-parallel run
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tb = None
        if os.environ.get("MEDFUSE_TENSORBOARD"):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:
                self._tb = None
        self._mlflow = None
        if os.environ.get("MLFLOW_TRACKING_URI"):
            try:
                import mlflow

                self._mlflow = mlflow
            except ImportError:
                self._mlflow = None

    def log(self, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        row = {"stage": self.stage, "step": step, "time": round(time.time(), 3), **values}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False, default=float) + "\n")
        numeric = {k: float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(f"{self.stage}/{k}", v, step)
        if self._mlflow is not None:
            self._mlflow.log_metrics({f"{self.stage}.{k}": v for k, v in numeric.items()}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def stage_log(out: Path, stage: str, accelerator=None) -> MetricsLog:
    """The stage's metrics log, written beside `out` while it runs (the checkpoint folder is
    created atomically at the end) and moved into it by `finish_stage`."""
    enabled = accelerator is None or accelerator.is_main_process
    return MetricsLog(out.with_name(f".{out.name}.{METRICS_FILE}"), stage, enabled=enabled)


class ResumableState:
    """A training state folder (trainable weights, optimiser, scheduler, step, RNG) for resumption.

    Written every `save_every` steps to `<out>.train_state/` beside the checkpoint folder
    (atomically: a temporary folder renamed over the old one); a rerun of the same command
    with the same config picks it up and continues at the saved step. Removed when the
    stage finishes and the checkpoint is written.
    """

    def __init__(self, cfg: StageConfig):
        out = Path(cfg.out)
        self.folder = out.with_name(f".{out.name}{STATE_DIR}")
        self.config = cfg.as_dict()

    def exists(self) -> bool:
        return (self.folder / "state.pt").is_file()

    def save(self, step: int, module: torch.nn.Module, optimizer, scheduler, extra: dict | None = None) -> None:
        tmp = self.folder.with_name(self.folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        trainable = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        torch.save({"step": step, "module": trainable, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "config": self.config, "extra": extra or {},
                    "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}},
                   tmp / "state.pt")
        shutil.rmtree(self.folder, ignore_errors=True)
        tmp.rename(self.folder)

    def load(self, module: torch.nn.Module, optimizer, scheduler) -> tuple[int, dict]:
        """Restore into the given objects; returns (step, extra). A state from another config is refused."""
        state = torch.load(self.folder / "state.pt", map_location="cpu", weights_only=False)
        saved = {k: v for k, v in state["config"].items() if k not in ("quiet", "max_steps", "save_every", "log_every")}
        now = {k: v for k, v in self.config.items() if k not in ("quiet", "max_steps", "save_every", "log_every")}
        if saved != now:
            changed = sorted(k for k in now if saved.get(k) != now.get(k))
            raise InputError(self.folder, f"a resumable state from a different config ({', '.join(changed)}); "
                                          "delete it or restore the config")
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        return int(state["step"]), dict(state.get("extra") or {})

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def finish_stage(model, out: Path, log: MetricsLog, state: ResumableState, accelerator=None) -> None:
    """Write the checkpoint (main process only), move the metrics log into it, drop the resumable state."""
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if accelerator is None or accelerator.is_main_process:
        model.save(out, overwrite=True)
    log.close()
    if log.path.exists():
        log.path.replace(out / METRICS_FILE)
    state.clear()
