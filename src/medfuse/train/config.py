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

from dataclasses import dataclass
from typing import Any, ClassVar

from medfuse.config import YamlConfig, option
from medfuse.errors import ConfigError


@dataclass
class StageConfig(YamlConfig):
    """What every stage shares: data, output, budget, optimiser, logging and resumption."""

    cohort: str = option("", "Cohort folder (case folders + index.parquet) to train on.")
    out: str = option("", "Checkpoint folder the stage writes (metrics.jsonl beside the weights).")
    init: str | None = option(None,
        "Checkpoint to start from (the previous stage's output); required for align, sft and grpo.")
    seed: int = option(0, "Seed for data order, dropout and sampling.")
    epochs: int = option(1, "Passes over the training data (max_steps stops earlier).")
    max_steps: int | None = option(None, "Stop after this many optimiser steps.")
    batch_size: int = option(16, "Samples per optimiser step (per device).")
    lr: float = option(1e-3, "Peak learning rate (AdamW, linear warm-up then cosine decay).")
    weight_decay: float = option(1e-4, "AdamW weight decay.")
    warmup_steps: int = option(10, "Linear warm-up steps.")
    grad_clip: float = option(1.0, "Gradient norm clip (0: off).")
    limit: int | None = option(None, "Use only the first N training cases (quick runs).")
    split_seed: int = option(0, "Seed of the patient-level train/val/test split (80/10/10).")
    threads: int | None = option(None, "torch CPU threads (default: torch's choice).")
    log_every: int = option(10, "Log loss and throughput every N steps (metrics.jsonl).")
    save_every: int = option(100,
        "Write a resumable training state every N steps (a rerun of the same command resumes from it).")
    overwrite: bool = option(False, "Replace an existing checkpoint at `out`.")
    quiet: bool = option(False, "No progress bar.")

    stage: ClassVar[str] = "stage"

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key."""
        if not self.cohort:
            raise ConfigError("cohort: required (a cohort folder)")
        if not self.out:
            raise ConfigError("out: required (the checkpoint folder to write)")
        self.require_ints("epochs", "batch_size", "log_every", "save_every")
        self.require_ints("max_steps", "limit", "threads", nullable=True)
        if not isinstance(self.lr, int | float) or self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ConfigError("warmup_steps, weight_decay and grad_clip must be >= 0")

    @classmethod
    def unknown_key_scope(cls) -> str:
        return f" for `train {cls.stage}`"


@dataclass
class EncodersConfig(StageConfig):
    """`medfuse train encoders`: the fusion model and its encoders, from scratch (or `init`)."""

    stage: ClassVar[str] = "encoders"
    model: dict[str, Any] = option(
        factory=dict,
        help="ModelConfig keys of a new model (fusion strategy, widths, ViT, LLM, ...); ignored with `init`.")
    tiny_llm: bool = option(False, "Use the tiny offline test LLM instead of `model.llm` (tests).")
    epochs: int = option(10, "Passes over the training cases.")
    batch_size: int = option(32, "Cases per optimiser step.")
    lr: float = option(2e-3, "Peak learning rate.")
    contrastive_weight: float = option(0.2,
        "Weight of the InfoNCE losses (image <-> report, ECG <-> ECG reading text); 0 turns them off.")
    contrastive_temperature: float = option(0.07, "InfoNCE softmax temperature.")
    finding_weight: float = option(1.0,
        "Weight of the finding loss (presence BCE + L1 + GIoU on the boxes); 0 turns it off.")
    extra_cohorts: list[dict[str, Any]] = option(
        factory=list,
        help="More cohorts to train on beside `cohort` (train.mixed): [{path, weight, diseases, findings, boxes, "
             "fractions, name}]; each is split by patient on its own and its loss covers only the panel diseases "
             "(and image-level finding labels) it annotates.")

    def validate(self) -> None:
        super().validate()
        from medfuse.train.mixed import check_source_entries

        check_source_entries(self.extra_cohorts)
        for name in ("contrastive_weight", "finding_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0")
        if self.contrastive_temperature <= 0:
            raise ConfigError("contrastive_temperature: must be > 0")


@dataclass
class LMStageConfig(StageConfig):
    """What the language-model stages share."""

    tasks: str = option("",
        "Instruction dataset (`medfuse tasks build` output); empty: built on the fly from the cohort.")
    task_types: list[str] = option(
        factory=list, help="Task types to train on (default: the stage's own: align = per-modality QA, sft = all).")
    langs: list[str] = option(factory=lambda: ["en", "zh"], help="Languages of the tasks to use.")
    max_samples: int | None = option(None, "Use at most N training samples (after shuffling).")
    task_weights: dict[str, float] = option(
        factory=dict, help="Relative sampling weight per task type when max_samples picks a subset (default 1 each); "
        "e.g. {diagnosis: 4} makes diagnosis samples four times as likely to be kept.")
    eval_samples: int = option(32, "Validation samples scored at the end (0: none).")
    max_target_tokens: int = option(160, "Targets are cut to this many tokens.")
    epochs: int = option(1, "Passes over the training samples (max_steps stops earlier).")
    batch_size: int = option(4, "Samples per optimiser step.")
    lr: float = option(2e-4, "Peak learning rate.")

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

    stage: ClassVar[str] = "align"
    lr: float = option(1e-3, "Peak learning rate.")


@dataclass
class SFTConfig(LMStageConfig):
    """`medfuse train sft`: LoRA + perception layer + disease head + projector, on all tasks."""

    stage: ClassVar[str] = "sft"
    lora_r: int | None = option(None, "LoRA rank (default: the model config's lora_r).")
    lora_alpha: int | None = option(None, "LoRA alpha (default: the model config's).")
    disease_loss_weight: float = option(0.5,
        "Weight of the fusion model's disease loss added to the LM loss (keeps the head calibrated).")
    train_fusion: bool = option(True,
        "Also train the perception layer and disease head (false: LoRA + projector only).")


@dataclass
class GRPOConfig(LMStageConfig):
    """`medfuse train grpo`: group relative policy optimisation of the LoRA adapter."""

    stage: ClassVar[str] = "grpo"
    batch_size: int = option(2, "Prompts per step (each sampled group_size times).")
    group_size: int = option(4, "Completions sampled per prompt (G).")
    micro_batch: int = option(2,
        "Completions per forward/backward pass; the step's gradient is accumulated over them "
        "(a long prompt x 8 completions does not fit in 24 GB at once).")
    max_new_tokens: int = option(96, "Tokens generated per completion.")
    temperature: float = option(1.0, "Sampling temperature.")
    top_p: float = option(1.0, "Nucleus sampling threshold.")
    beta: float = option(0.04, "KL penalty weight against the model without LoRA (0: no reference).")
    epsilon: float = option(0.2, "PPO clip range (low and high).")
    loss_type: str = option("dapo", "Loss aggregation: grpo, bnpo, dr_grpo or dapo (TRL's).")
    scale_rewards: str = option("group", "Advantage scaling: group, batch or none (TRL's).")
    reward_weights: dict[str, float] = option(
        factory=lambda: _default_reward_weights(),
        help="Weight of each reward function in the summed reward (default: train.rewards.DEFAULT_WEIGHTS).")
    lr: float = option(5e-5, "Peak learning rate.")
    task_types: list[str] = option(
        factory=lambda: ["diagnosis"], help="Task types to sample prompts from.")

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
