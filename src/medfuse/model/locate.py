"""Where a checkpoint comes from: `--model`, else $MEDFUSE_MODEL, else the shipped one."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from medfuse.errors import MedfuseError

# Environment variable naming a default checkpoint folder (for servers and notebooks).
MODEL_ENV = "MEDFUSE_MODEL"


class NoModelError(MedfuseError):
    """No checkpoint was named and none is installed."""


def shipped_checkpoint() -> Path:
    """The checkpoint folder installed with the package (`medfuse/data/checkpoint`)."""
    return Path(str(resources.files("medfuse").joinpath("data").joinpath("checkpoint")))


def resolve_checkpoint(model: Path | None) -> Path:
    """`model` when given, else $MEDFUSE_MODEL, else the shipped checkpoint."""
    if model is not None:
        return model
    env = os.environ.get(MODEL_ENV)
    if env:
        return Path(env)
    shipped = shipped_checkpoint()
    if (shipped / "metadata.json").is_file():
        return shipped
    raise NoModelError(
        "no trained medfuse checkpoint is installed; pass --model CKPT "
        "(to try the pipeline with random weights: medfuse model init --out CKPT --tiny)"
    )


def quiet_transformers() -> None:
    """Turn off transformers' weight-loading progress bars (they interleave with our output)
    and the deprecation notice peft triggers on every load (not the user's concern)."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*", category=FutureWarning)
