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

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medfuse.errors import InputError
from medfuse.record.case import PatientCase
from medfuse.train.common import (
    ResumableState,
    Throughput,
    check_output,
    epoch_batches,
    finish_stage,
    lr_factor,
    make_accelerator,
    seed_everything,
    shard,
    stage_log,
)
from medfuse.train.config import AlignConfig, LMStageConfig, SFTConfig

QA_TASKS = ("ecg_qa", "labs_qa", "vitals_qa", "cxr_qa")


@dataclass
class Sample:
    """One instruction sample, ready for the model."""

    case_id: str
    task: str
    lang: str
    system: str | None
    user: str
    target: str
    answer_diseases: list[str]
    gold_boxes: str


def _messages(row: dict[str, Any]) -> tuple[str | None, str, str] | None:
    system, user, assistant = None, None, None
    for m in row["messages"]:
        role, content = m.get("role"), m.get("content", "")
        if role == "system":
            system = content
        elif role == "user" and user is None:
            user = content
        elif role == "assistant" and assistant is None:
            assistant = content
    if user is None or assistant is None:
        return None
    return system, user, assistant


class TaskData:
    """Samples of one split ("train", "val", "test" or "all") and the fused inputs of their cases.

    With `cfg.tasks` the rows come from that instruction dataset; without, they are built
    now from the cohort (`medfuse.tasks.build_case_samples`), case by case in a seeded
    order until `limit` samples are reached, so a quick run interprets only the cases it
    uses. Cases are read and featurized once each, however many samples they have.
    """

    def __init__(self, cfg: LMStageConfig, split: str, task_types: tuple[str, ...], model, limit: int | None):
        from medfuse.model.inputs import featurize_many
        from medfuse.record.store import patient_split, read_case, read_index

        cohort = Path(cfg.cohort)
        if not cohort.is_dir():
            raise InputError(cohort, "no such cohort folder")
        index = patient_split(read_index(cohort), seed=cfg.split_seed)
        folders = dict(zip(index["case_id"], index["folder"], strict=True))
        in_split = set(index["case_id"] if split == "all" else index.loc[index["split"] == split, "case_id"])
        rng = np.random.default_rng(cfg.seed + (0 if split == "train" else 1))
        langs = tuple(cfg.langs)
        self._cases: dict[str, PatientCase] = {}
        samples: list[Sample] = []
        weights = dict(getattr(cfg, "task_weights", None) or {})
        # With task weights a subset is drawn from a larger pool (3x), not the first `limit`.
        pool = limit if limit is None or not weights else 3 * limit
        if cfg.tasks:
            for row in load_task_rows(cfg):
                if row["case_id"] in in_split and row["task"] in task_types and row["lang"] in langs:
                    samples.extend(_sample(row))
        else:
            from medfuse.interpret.case import interpret_case
            from medfuse.tasks.build import build_case_samples

            ids = sorted(in_split)
            for i in rng.permutation(len(ids)):
                case = read_case(cohort / folders[ids[i]])
                rows = build_case_samples(case, interpret_case(case), case_dir=folders[ids[i]], panel=model.panel,
                                          langs=langs, seed=cfg.seed,
                                          tasks=[t for t in task_types if t != "qa"])
                new = [x for row in rows for x in _sample(row)]
                if new:
                    self._cases[case.case_id] = case
                    samples.extend(new)
                if pool is not None and len(samples) >= pool:
                    break
        if limit is not None and weights and len(samples) > limit:
            p = np.array([float(weights.get(s.task, 1.0)) for s in samples])
            keep = rng.choice(len(samples), size=limit, replace=False, p=p / p.sum())
            samples = [samples[i] for i in sorted(keep)]
        order = rng.permutation(len(samples))
        samples = [samples[i] for i in order][:limit]
        self.samples = samples
        self.model = model
        for cid in sorted({s.case_id for s in samples} - set(self._cases)):
            self._cases[cid] = read_case(cohort / folders[cid])
        used = {s.case_id for s in samples}
        cases = [c for cid, c in sorted(self._cases.items()) if cid in used]
        items = featurize_many(cases, model.config, model.stats, model.panel) if cases else []
        self.features = {c.case_id: it for c, it in zip(cases, items, strict=True)}

    def case(self, case_id: str) -> PatientCase:
        return self._cases[case_id]

    def __len__(self) -> int:
        return len(self.samples)

    def batch(self, idx) -> tuple[list[Sample], dict[str, torch.Tensor]]:
        from medfuse.model.inputs import collate

        chosen = [self.samples[int(i)] for i in idx]
        items = [self.features[s.case_id] for s in chosen]
        if any("labels" not in it for it in items):
            items = [{k: v for k, v in it.items() if k != "labels"} for it in items]
        return chosen, collate(items)


def _sample(row: dict[str, Any]) -> list[Sample]:
    parts = _messages(row)
    if parts is None:
        return []
    return [Sample(row["case_id"], row["task"], row["lang"], parts[0], parts[1], parts[2],
                   list(row.get("answer_diseases") or []), row.get("gold_boxes") or "[]")]


def load_task_rows(cfg: LMStageConfig) -> list[dict[str, Any]]:
    """Rows of the instruction dataset at `cfg.tasks`."""
    from datasets import load_from_disk

    path = Path(cfg.tasks)
    if not path.is_dir():
        raise InputError(path, "no such instruction dataset folder (medfuse tasks build writes one)")
    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise InputError(path, f"not a saved dataset ({e.__class__.__name__})") from None
    return [dict(r) for r in ds]


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


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def _trainable_fusion_parts(fusion: nn.Module) -> list[nn.Module]:
    """Perception layer, clue tokens and disease head (whichever the strategy has); encoders stay frozen."""
    parts = [getattr(fusion, name) for name in ("perception", "clues", "head", "joint", "aux_heads")
             if isinstance(getattr(fusion, name, None), nn.Module)]
    return parts


def prepare_stage(cfg: LMStageConfig, stage: str):
    """Load the init checkpoint and set which parameters train for `stage` (align or sft)."""
    from medfuse.model import MedFuse

    model = MedFuse.load(cfg.init)
    _freeze(model)
    if stage == "align":
        for p in model.lm.projector.parameters():
            p.requires_grad_(True)
        return model, False
    assert isinstance(cfg, SFTConfig)
    if not model.lm.has_lora:
        model.lm.add_lora(r=cfg.lora_r or model.config.lora_r, alpha=cfg.lora_alpha or model.config.lora_alpha)
    for name, p in model.lm.lm.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
    for p in model.lm.projector.parameters():
        p.requires_grad_(True)
    if cfg.train_fusion:
        for part in _trainable_fusion_parts(model.fusion):
            for p in part.parameters():
                p.requires_grad_(True)
        if hasattr(model.fusion, "type_embed"):
            model.fusion.type_embed.requires_grad_(True)
    return model, cfg.train_fusion


def train_lm_stage(cfg: LMStageConfig, command: str | None = None) -> dict[str, Any]:
    """Run `align` or `sft` (by the config's type); returns a summary."""
    from medfuse.model.llm import chat_prompt

    stage = cfg.stage
    out = check_output(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    model, train_fusion = prepare_stage(cfg, stage)
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
    params = [p for p in objective.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(data) // cfg.batch_size)
    total = min(cfg.max_steps or 10**12, steps_per_epoch * cfg.epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total))
    accelerator = make_accelerator()
    objective, optimizer = accelerator.prepare(objective, optimizer)
    state = ResumableState(cfg)
    step = 0
    if state.exists():
        step, _ = state.load(_trainable_view(accelerator.unwrap_model(objective)), optimizer, scheduler)
    log = stage_log(out, stage, accelerator)
    rng = np.random.default_rng(cfg.seed)
    from tqdm import tqdm

    bar = tqdm(total=total, initial=step, disable=cfg.quiet, desc=f"train {stage}", unit="step")
    speed = Throughput()
    done = 0
    train_start = time.perf_counter()
    for _epoch in range(cfg.epochs):
        for idx in epoch_batches(len(data), cfg.batch_size, rng):
            if done < step:
                done += 1
                continue
            if step >= total:
                break
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
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(losses["loss"])
            if cfg.grad_clip:
                accelerator.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            done += 1
            speed.add(len(samples))
            bar.update(1)
            bar.set_postfix(loss=f"{float(losses['loss'].detach()):.3f}")
            if step % cfg.log_every == 0 or step == total:
                log.log(step, lr=scheduler.get_last_lr()[0], samples_per_s=speed.rate(),
                        **{k: round(float(v.detach()), 5) for k, v in losses.items()})
            if step % cfg.save_every == 0 and step < total and accelerator.is_main_process:
                state.save(step, _trainable_view(accelerator.unwrap_model(objective)), optimizer, scheduler)
    bar.close()
    train_s = time.perf_counter() - train_start
    model.eval()

    validation: dict[str, Any] = {}
    if train_fusion:
        from medfuse.train.encoders import calibrate_on_validation

        validation.update(calibrate_on_validation(model, cfg.cohort, cfg.split_seed,
                                                  None if cfg.limit is None else max(8, cfg.limit // 4)))
    if cfg.eval_samples:
        from medfuse.train.lm_eval import evaluate_answers

        validation["answers"] = evaluate_answers(model, cfg, cfg.eval_samples)
        log.log(step, **{f"val_{k}": v for k, v in validation["answers"].items() if isinstance(v, int | float)})
    model.card.update({
        "stages": [*model.card.get("stages", []), {
            "stage": stage, "steps": step, "samples": len(data), "trainable_parameters": n_trainable,
            "seconds": round(train_s, 1), "command": command, "config": cfg.to_dict(), "validation": validation}],
    })
    finish_stage(model, out, log, state, accelerator)
    return {"stage": stage, "steps": step, "samples": len(data), "trainable_parameters": n_trainable,
            "prepare_s": round(prep_s, 1), "train_s": round(train_s, 1), "validation": validation, "out": str(out)}


ALL_TASKS = ("ecg_qa", "labs_qa", "vitals_qa", "cxr_qa", "diagnosis", "region_to_text", "text_to_region",
             "grounded_report", "report")


class _TrainableView(nn.Module):
    """Only the trainable tensors of a module, for the resumable state (not the frozen 135M backbone)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self._module = [module]

    def state_dict(self, *args, **kwargs):  # noqa: D102
        m = self._module[0]
        names = {n for n, p in m.named_parameters() if p.requires_grad}
        return {k: v for k, v in m.state_dict().items() if k in names}

    def load_state_dict(self, state, strict: bool = True):  # noqa: D102
        return self._module[0].load_state_dict(state, strict=False)


def _trainable_view(module: nn.Module) -> nn.Module:
    return _TrainableView(module)


def summary_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, ensure_ascii=False)
