"""Stages 2 and 3, `medfuse train align` and `medfuse train sft`: the language-model side.

Both read instruction samples (`medfuse tasks build`; rows with `messages`, `case_dir`,
`task`, `lang`) whose cases are in the cohort's TRAINING split, fuse each sample's case
with the fusion model and train on the assistant message (causal-LM cross-entropy on the
target tokens only, `MedfuseLM.completion_logps`).
- align: only the projector learns (LLM and fusion model frozen): the fused tokens are
  mapped into the LLM's embedding space on the per-modality QA tasks (LLaVA stage 1).
- sft: a LoRA adapter on the LLM + the projector + the fusion model's perception layer,
  clue tokens and disease head (encoders frozen), on every task type; the fusion model's
  disease loss is added (`disease_loss_weight`) so the head stays trained, and the head is
  re-calibrated on the validation split afterwards.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from medfuse.errors import InputError
from medfuse.train.common import shard
from medfuse.train.config import LMStageConfig, SFTConfig
from medfuse.train.loop import Stage, StepReport, loss_report, run_loop, start_stage, train_only
from medfuse.train.task_data import TaskData

QA_TASKS = ("ecg_qa", "labs_qa", "vitals_qa", "cxr_qa")


def truncate_target(tokenizer, text: str, max_tokens: int) -> str:
    """The target cut to `max_tokens` tokens (long reports would dominate the batch cost)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


class LMObjective(nn.Module):
    """Fusion model + MedfuseLM; forward -> {"lm", "disease", "loss"}."""

    def __init__(self, fusion: nn.Module, lm: nn.Module, train_fusion: bool, disease_weight: float):
        super().__init__()
        self.fusion = fusion
        self.lm = lm
        self.train_fusion = train_fusion
        self.disease_weight = disease_weight

    def forward(self, prompts: list[str], targets: list[str], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.set_grad_enabled(self.train_fusion and torch.is_grad_enabled()):
            out = self.fusion(batch)
        logps, mask = self.lm.completion_logps(prompts, out, targets)  # (B, C)
        lm_loss = -(logps.sum() / mask.sum().clamp(min=1))
        losses = {"lm": lm_loss}
        total = lm_loss
        if self.train_fusion and self.disease_weight > 0 and "labels" in batch:
            losses["disease"] = self.fusion.loss(batch, out)
            total = total + self.disease_weight * losses["disease"]
        losses["loss"] = total
        return losses


def prepare_stage(cfg: LMStageConfig):
    """Load the init checkpoint (adding the LoRA adapter for sft) and freeze all but the stage's parts.

    Returns (model, train_fusion): whether the fusion model's upper parts train too (sft's `train_fusion`).
    """
    from medfuse.model import MedFuse

    model = MedFuse.load(cfg.init)
    train_fusion = isinstance(cfg, SFTConfig) and cfg.train_fusion
    if isinstance(cfg, SFTConfig) and not model.lm.has_lora:
        model.lm.add_lora(r=cfg.lora_r or model.config.lora_r, alpha=cfg.lora_alpha or model.config.lora_alpha)
    train_only(model, model.trainable_parts(cfg.stage, train_fusion=train_fusion))
    return model, train_fusion


def train_lm_stage(cfg: LMStageConfig, command: str | None = None) -> dict[str, Any]:
    """Run `align` or `sft` (by the config's type); returns a summary."""
    from medfuse.model.llm import chat_prompt

    stage = cfg.stage
    out = start_stage(cfg)
    model, train_fusion = prepare_stage(cfg)
    default_tasks = QA_TASKS if stage == "align" else None
    task_types = tuple(cfg.task_types) if cfg.task_types else (default_tasks or ALL_TASKS)
    prep_start = time.perf_counter()
    data = TaskData(cfg, "train", task_types, model, cfg.max_samples)
    if not len(data):
        raise InputError(cfg.tasks or cfg.cohort, f"no training samples of task types {', '.join(task_types)} "
                                                  f"in languages {', '.join(cfg.langs)}")
    prep_s = time.perf_counter() - prep_start
    tok = model.lm.tokenizer
    objective = LMObjective(model.fusion, model.lm, train_fusion,
                            getattr(cfg, "disease_loss_weight", 0.0))

    def step(idx: np.ndarray, objective: nn.Module, accelerator) -> StepReport:
        samples, batch = data.batch(shard(idx, accelerator))
        prompts = [chat_prompt(tok, s.user, s.system) for s in samples]
        targets = [truncate_target(tok, s.target, cfg.max_target_tokens) for s in samples]
        objective.train()
        fusion = accelerator.unwrap_model(objective).fusion
        # Frozen parts run as at inference (no dropout): the encoders always, all of the
        # fusion model when it is not trained.
        if not train_fusion:
            fusion.eval()
        elif hasattr(fusion, "encoders"):
            fusion.encoders.eval()
        losses = objective(prompts, targets, {k: v.to(accelerator.device) for k, v in batch.items()})
        accelerator.backward(losses["loss"])
        return loss_report(losses, samples=len(samples))

    run = run_loop(cfg, out, Stage(stage, objective, len(data), step, throughput="samples_per_s",
                                   trainable_state_only=True))
    model.eval()

    validation: dict[str, Any] = {}
    if train_fusion:
        from medfuse.train.encoders import calibrate_on_validation

        validation.update(calibrate_on_validation(model, cfg.cohort, cfg.split_seed,
                                                  None if cfg.limit is None else max(8, cfg.limit // 4)))
    if cfg.eval_samples:
        from medfuse.train.lm_eval import evaluate_answers

        validation["answers"] = evaluate_answers(model, cfg, cfg.eval_samples)
        run.log.log(run.steps, **{f"val_{k}": v for k, v in validation["answers"].items() if isinstance(v, int | float)})
    model.card.update({
        "stages": [*model.card.get("stages", []), {
            "stage": stage, "steps": run.steps, "samples": len(data), "trainable_parameters": run.n_trainable,
            "seconds": round(run.seconds, 1), "command": command, "config": cfg.as_dict(), "validation": validation}],
    })
    run.finish(model)
    return {"stage": stage, "steps": run.steps, "samples": len(data), "trainable_parameters": run.n_trainable,
            "prepare_s": round(prep_s, 1), "train_s": round(run.seconds, 1), "validation": validation, "out": str(out)}


ALL_TASKS = ("ecg_qa", "labs_qa", "vitals_qa", "cxr_qa", "diagnosis", "region_to_text", "text_to_region",
             "grounded_report", "report")
