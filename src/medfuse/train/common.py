"""What the training stages share besides the loop (`train.loop`): seeds, patient-level splits,
the output check and a process's share of a batch."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from medfuse.errors import InputError
from medfuse.record.case import PatientCase
from medfuse.record.store import check_output_apart
from medfuse.train.config import StageConfig


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


def check_output(cfg: StageConfig) -> Path:
    """The output folder, refusing to replace a finished checkpoint without `overwrite`."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not cfg.overwrite:
        raise InputError(out, "folder is not empty (set overwrite: true or pass --overwrite)")
    return out


def shard(idx: np.ndarray, accelerator) -> np.ndarray:
    """This process's share of a batch (data parallel: each process takes every n-th sample)."""
    n = accelerator.num_processes
    return idx if n == 1 else idx[accelerator.process_index :: n]


