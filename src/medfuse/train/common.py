"""What every training stage shares: data splits, the metrics log, resumable state, schedules.

Runs go through `accelerate.Accelerator`, so the same config runs on the CPU, one GPU or
several (`accelerate launch -m medfuse.cli train sft --config ...`): each stage wraps its
trainable parts in one `nn.Module` whose forward returns the loss, and lets the
accelerator place it, wrap it for data parallelism and do the backward pass.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfuse.errors import InputError
from medfuse.record.case import PatientCase
from medfuse.train.config import StageConfig

STATE_DIR = ".train_state"  # inside the output folder while a stage runs; removed at the end
METRICS_FILE = "metrics.jsonl"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def split_cases(cohort: str | Path, split: str, limit: int | None = None, seed: int = 0) -> list[PatientCase]:
    """The cases of one patient-level split (80/10/10 by hashed patient id), in case-id order."""
    from medfuse.record.store import patient_split, read_case, read_index

    cohort = Path(cohort)
    if not cohort.is_dir():
        raise InputError(cohort, "no such cohort folder")
    index = read_index(cohort)
    if index.empty:
        raise InputError(cohort, "the cohort has no cases")
    df = patient_split(index, seed=seed)
    folders = sorted(df.loc[df["split"] == split, "folder"])
    if limit is not None:
        folders = folders[:limit]
    return [read_case(cohort / f) for f in folders]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0.1 at `total` steps."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


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
        self.config = cfg.to_dict()

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


def check_output(cfg: StageConfig) -> Path:
    """The output folder, refusing to replace a finished checkpoint without `overwrite`."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise InputError(out, "folder is not empty (set overwrite: true or pass --overwrite)")
    return out


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


def shard(idx: np.ndarray, accelerator) -> np.ndarray:
    """This process's share of a batch (data parallel: each process takes every n-th sample)."""
    n = accelerator.num_processes
    return idx if n == 1 else idx[accelerator.process_index :: n]


def make_accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())
