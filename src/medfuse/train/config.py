"""Typed configs of the training stages: every field is a YAML key AND a CLI flag, with help text.

`medfuse train STAGE --config FILE [--field value ...]`: the YAML file gives the values, a
flag overrides one (`--batch-size 8` sets `batch_size`). Unknown keys are one ConfigError
naming the key; so are values of the wrong type.

The stages (DESIGN.md, training):
1. `encoders` — the fusion model: disease BCE + per-modality auxiliary heads, InfoNCE between
   image / ECG tokens and their report / ECG-reading text (TRRG's contrastive pretraining),
   per-finding presence + box regression on the image patches; then the disease head is
   temperature-scaled and thresholded on the validation split.
2. `align` — the projector only (LLM and fusion frozen), on the per-modality QA tasks.
3. `sft` — LoRA + perception layer + disease head + projector, on all tasks.
4. `grpo` — LoRA only, group sampling on the diagnosis tasks, rewards = Jaccard + format (+ box IoU).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medfuse.errors import ConfigError, InputError


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class StageConfig:
    """What every stage shares: data, output, budget, optimiser, logging and resumption."""

    cohort: str = field(default="", metadata=_help("Cohort folder (case folders + index.parquet) to train on."))
    out: str = field(default="", metadata=_help("Checkpoint folder the stage writes (metrics.jsonl beside the weights)."))
    init: str | None = field(default=None, metadata=_help(
        "Checkpoint to start from (the previous stage's output); required for align, sft and grpo."))
    seed: int = field(default=0, metadata=_help("Seed for data order, dropout and sampling."))
    epochs: int = field(default=1, metadata=_help("Passes over the training data (max_steps stops earlier)."))
    max_steps: int | None = field(default=None, metadata=_help("Stop after this many optimiser steps."))
    batch_size: int = field(default=16, metadata=_help("Samples per optimiser step (per device)."))
    lr: float = field(default=1e-3, metadata=_help("Peak learning rate (AdamW, linear warm-up then cosine decay)."))
    weight_decay: float = field(default=1e-4, metadata=_help("AdamW weight decay."))
    warmup_steps: int = field(default=10, metadata=_help("Linear warm-up steps."))
    grad_clip: float = field(default=1.0, metadata=_help("Gradient norm clip (0: off)."))
    limit: int | None = field(default=None, metadata=_help("Use only the first N training cases (quick runs)."))
    split_seed: int = field(default=0, metadata=_help("Seed of the patient-level train/val/test split (80/10/10)."))
    threads: int | None = field(default=None, metadata=_help("torch CPU threads (default: torch's choice)."))
    log_every: int = field(default=10, metadata=_help("Log loss and throughput every N steps (metrics.jsonl)."))
    save_every: int = field(default=100, metadata=_help(
        "Write a resumable training state every N steps (a rerun of the same command resumes from it)."))
    overwrite: bool = field(default=False, metadata=_help("Replace an existing checkpoint at `out`."))
    quiet: bool = field(default=False, metadata=_help("No progress bar."))

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        if not self.cohort:
            raise ConfigError("cohort: required (a cohort folder)")
        if not self.out:
            raise ConfigError("out: required (the checkpoint folder to write)")
        for name in ("epochs", "batch_size", "log_every", "save_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name}: must be a positive integer, got {v!r}")
        for name in ("max_steps", "limit", "threads"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ConfigError(f"{name}: must be a positive integer or null, got {v!r}")
        if not isinstance(self.lr, int | float) or self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("warmup_steps, weight_decay and grad_clip must be >= 0")

    # ----------------------------------------------------------- serialisation
    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "config") -> StageConfig:
        """Build from a mapping; unknown keys and wrong types are ConfigErrors naming the key."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(f"{origin}: unknown key '{key}' for `train {cls.stage}` "
                                  f"(known: {', '.join(sorted(known))})")
        values = {k: _coerce(k, v, known[k].type) for k, v in data.items()}
        cfg = cls(**values)
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path | None, overrides: dict[str, Any] | None = None) -> StageConfig:
        """The YAML file's keys, then `overrides` (CLI flags) on top."""
        import yaml

        data: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            try:
                loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as e:
                raise InputError(path, f"cannot read ({e.__class__.__name__})") from None
            except yaml.YAMLError as e:
                raise InputError(path, f"invalid YAML ({str(e).splitlines()[0]})") from None
            if loaded is not None and not isinstance(loaded, dict):
                raise InputError(path, "expected a mapping of config keys")
            data.update(loaded or {})
        data.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls.from_dict(data, origin=str(path) if path is not None else "flags")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}

    stage = "stage"


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check a YAML value against the field's annotation (ints for floats are fine)."""
    hint = _resolve(annotation)
    if value is None:
        if type(None) in hint:
            return None
        raise ConfigError(f"{key}: must not be null")
    for t in hint:
        if t is type(None):
            continue
        if t is bool:
            if isinstance(value, bool):
                return value
            continue
        if t is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is str and isinstance(value, str | Path):
            return str(value)
        if t in (dict, list) and isinstance(value, t):
            return value
    names = "/".join(getattr(t, "__name__", str(t)) for t in hint)
    raise ConfigError(f"{key}: expected {names}, got {value!r}")


def _resolve(annotation: Any) -> tuple[type, ...]:
    if isinstance(annotation, str):
        annotation = eval(annotation, {"dict": dict, "list": list, "str": str, "int": int, "float": float,  # noqa: S307
                                       "bool": bool, "None": None, "Any": Any})
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(_resolve(a)[0] if a is not type(None) else type(None) for a in typing.get_args(annotation))
    if origin is not None:
        return (origin,)
    return (annotation,)


@dataclass
class EncodersConfig(StageConfig):
    """`medfuse train encoders`: the fusion model and its encoders, from scratch (or `init`)."""

    stage = "encoders"
    model: dict[str, Any] = field(default_factory=dict, metadata=_help(
        "ModelConfig keys of a new model (fusion strategy, widths, ViT, LLM, ...); ignored with `init`."))
    tiny_llm: bool = field(default=False, metadata=_help("Use the tiny offline test LLM instead of `model.llm` (tests)."))
    epochs: int = field(default=10, metadata=_help("Passes over the training cases."))
    batch_size: int = field(default=32, metadata=_help("Cases per optimiser step."))
    lr: float = field(default=2e-3, metadata=_help("Peak learning rate."))
    contrastive_weight: float = field(default=0.2, metadata=_help(
        "Weight of the InfoNCE losses (image <-> report, ECG <-> ECG reading text); 0 turns them off."))
    contrastive_temperature: float = field(default=0.07, metadata=_help("InfoNCE softmax temperature."))
    finding_weight: float = field(default=1.0, metadata=_help(
        "Weight of the finding loss (presence BCE + L1 + GIoU on the boxes); 0 turns it off."))

    def validate(self) -> None:
        super().validate()
        for name in ("contrastive_weight", "finding_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0")
        if self.contrastive_temperature <= 0:
            raise ConfigError("contrastive_temperature: must be > 0")


@dataclass
class LMStageConfig(StageConfig):
    """What the language-model stages share."""

    tasks: str = field(default="", metadata=_help(
        "Instruction dataset (`medfuse tasks build` output); empty: built on the fly from the cohort."))
    task_types: list[str] = field(default_factory=list, metadata=_help(
        "Task types to train on (default: the stage's own: align = per-modality QA, sft = all)."))
    langs: list[str] = field(default_factory=lambda: ["en", "zh"], metadata=_help("Languages of the tasks to use."))
    max_samples: int | None = field(default=None, metadata=_help("Use at most N training samples (after shuffling)."))
    task_weights: dict[str, float] = field(default_factory=dict, metadata=_help(
        "Relative sampling weight per task type when max_samples picks a subset (default 1 each); "
        "e.g. {diagnosis: 4} makes diagnosis samples four times as likely to be kept."))
    eval_samples: int = field(default=32, metadata=_help("Validation samples scored at the end (0: none)."))
    max_target_tokens: int = field(default=160, metadata=_help("Targets are cut to this many tokens."))
    epochs: int = field(default=1, metadata=_help("Passes over the training samples (max_steps stops earlier)."))
    batch_size: int = field(default=4, metadata=_help("Samples per optimiser step."))
    lr: float = field(default=2e-4, metadata=_help("Peak learning rate."))

    def validate(self) -> None:
        super().validate()
        if not self.init:
            raise ConfigError(f"init: required for `train {self.stage}` (the previous stage's checkpoint)")
        for lang in self.langs:
            if lang not in ("en", "zh"):
                raise ConfigError(f"langs: unknown language {lang!r} (en, zh)")


@dataclass
class AlignConfig(LMStageConfig):
    """`medfuse train align`: the projector only, on per-modality physiological QA."""

    stage = "align"
    lr: float = field(default=1e-3, metadata=_help("Peak learning rate."))


@dataclass
class SFTConfig(LMStageConfig):
    """`medfuse train sft`: LoRA + perception layer + disease head + projector, on all tasks."""

    stage = "sft"
    lora_r: int | None = field(default=None, metadata=_help("LoRA rank (default: the model config's lora_r)."))
    lora_alpha: int | None = field(default=None, metadata=_help("LoRA alpha (default: the model config's)."))
    disease_loss_weight: float = field(default=0.5, metadata=_help(
        "Weight of the fusion model's disease loss added to the LM loss (keeps the head calibrated)."))
    train_fusion: bool = field(default=True, metadata=_help(
        "Also train the perception layer and disease head (false: LoRA + projector only)."))


@dataclass
class GRPOConfig(LMStageConfig):
    """`medfuse train grpo`: group relative policy optimisation of the LoRA adapter."""

    stage = "grpo"
    batch_size: int = field(default=2, metadata=_help("Prompts per step (each sampled group_size times)."))
    group_size: int = field(default=4, metadata=_help("Completions sampled per prompt (G)."))
    micro_batch: int = field(default=2, metadata=_help(
        "Completions per forward/backward pass; the step's gradient is accumulated over them "
        "(a long prompt x 8 completions does not fit in 24 GB at once)."))
    max_new_tokens: int = field(default=96, metadata=_help("Tokens generated per completion."))
    temperature: float = field(default=1.0, metadata=_help("Sampling temperature."))
    top_p: float = field(default=1.0, metadata=_help("Nucleus sampling threshold."))
    beta: float = field(default=0.04, metadata=_help("KL penalty weight against the model without LoRA (0: no reference)."))
    epsilon: float = field(default=0.2, metadata=_help("PPO clip range (low and high)."))
    loss_type: str = field(default="dapo", metadata=_help("Loss aggregation: grpo, bnpo, dr_grpo or dapo (TRL's)."))
    scale_rewards: str = field(default="group", metadata=_help("Advantage scaling: group, batch or none (TRL's)."))
    reward_weights: dict[str, float] = field(default_factory=lambda: _default_reward_weights(), metadata=_help(
        "Weight of each reward function in the summed reward (default: train.rewards.DEFAULT_WEIGHTS)."))
    lr: float = field(default=5e-5, metadata=_help("Peak learning rate."))
    task_types: list[str] = field(default_factory=lambda: ["diagnosis"], metadata=_help(
        "Task types to sample prompts from."))

    def validate(self) -> None:
        super().validate()
        if self.group_size < 2:
            raise ConfigError("group_size: must be >= 2 (advantages are relative to the group)")
        if self.loss_type not in ("grpo", "bnpo", "dr_grpo", "dapo"):
            raise ConfigError(f"loss_type: must be grpo, bnpo, dr_grpo or dapo, got {self.loss_type!r}")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ConfigError(f"scale_rewards: must be group, batch or none, got {self.scale_rewards!r}")


def _default_reward_weights() -> dict[str, float]:
    from medfuse.train.rewards import DEFAULT_WEIGHTS

    return dict(DEFAULT_WEIGHTS)


STAGES: dict[str, type[StageConfig]] = {
    "encoders": EncodersConfig, "align": AlignConfig, "sft": SFTConfig, "grpo": GRPOConfig,
}
