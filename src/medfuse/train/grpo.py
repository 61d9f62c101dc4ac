"""Stage 4, `medfuse train grpo`: group relative policy optimisation of the LoRA adapter.

TRL's `GRPOTrainer` generates from token ids; medfuse's prompts carry fused modality tokens
that exist only as `inputs_embeds`, so the trainer cannot drive the model. This is the
compact loop instead (one update per generation batch, as TRL's default
`num_iterations=1`), built from the pieces tested against TRL:

    for each step:
        B prompts of the training split -> fused tokens (fusion model frozen)
        G completions per prompt, sampled                          (MedfuseLM.generate_ids)
        rewards = sum_k w_k * reward_k(completions, **columns)     (train.rewards.combined_reward)
        advantages = (r - mean_group) / (std_group + 1e-4)         (train.grpo_loss.group_advantages)
        logp (policy, with grad), logp_ref (the same model with the adapter disabled)
        loss = clipped surrogate + beta * k3 KL                    (train.grpo_loss.grpo_per_token_loss)

The share of groups whose G rewards are all equal (no learning signal) is logged as
`zero_std_share`. The held-out answer scores (`lm_eval.evaluate_answers`) are measured
before and after, so the model card says whether GRPO improved on its starting model.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from medfuse.errors import InputError
from medfuse.train.config import GRPOConfig
from medfuse.train.loop import Stage, StepReport, run_loop, start_stage, train_only


def _repeat(fused, g: int):
    """The fused tokens of B cases repeated G times each (prompt-major, like the completions)."""
    from medfuse.model.llm import FusedTokens

    return FusedTokens(fused.tokens.repeat_interleave(g, 0), fused.token_mask.repeat_interleave(g, 0),
                       dict(fused.modality_slices))


def train_grpo(cfg: GRPOConfig, command: str | None = None) -> dict[str, Any]:
    """Run the stage; returns a summary (steps, seconds, answer scores before and after, checkpoint path)."""
    from medfuse.model import MedFuse
    from medfuse.model.llm import FusedTokens, chat_prompt
    from medfuse.train.grpo_loss import group_advantages, grpo_per_token_loss
    from medfuse.train.lm_eval import evaluate_answers
    from medfuse.train.rewards import REWARDS, combined_reward
    from medfuse.train.task_data import TaskData

    out = start_stage(cfg)
    unknown = set(cfg.reward_weights) - set(REWARDS)
    if unknown:
        from medfuse.errors import ConfigError

        raise ConfigError(f"reward_weights: unknown reward(s) {', '.join(sorted(unknown))} (known: {', '.join(REWARDS)})")
    model = MedFuse.load(cfg.init)
    if not model.lm.has_lora:
        model.lm.add_lora(r=model.config.lora_r, alpha=model.config.lora_alpha)
    train_only(model, model.trainable_parts("grpo"))
    data = TaskData(cfg, "train", tuple(cfg.task_types), model, cfg.max_samples)
    if not len(data):
        raise InputError(cfg.tasks or cfg.cohort, f"no training prompts of task types {', '.join(cfg.task_types)}")
    before = evaluate_answers(model, cfg, cfg.eval_samples, cfg.max_new_tokens) if cfg.eval_samples else None

    tok = model.lm.tokenizer
    G = cfg.group_size
    weights = dict(cfg.reward_weights)
    zero_std_shares: list[float] = []
    model.fusion.eval()

    def step(idx: np.ndarray, lm: nn.Module, accelerator) -> StepReport:
        t0 = time.perf_counter()
        samples, batch = data.batch(idx)
        with torch.no_grad():
            fused = _repeat(model.fusion(batch), G)
        prompts = [chat_prompt(tok, s.user, s.system) for s in samples for _ in range(G)]
        # ---- sample G completions per prompt
        model.lm.eval()
        ids = model.lm.generate_ids(prompts, fused, max_new_tokens=cfg.max_new_tokens, do_sample=True,
                                    temperature=cfg.temperature, top_p=cfg.top_p)
        texts = tok.batch_decode(ids, skip_special_tokens=True)
        # ---- rewards and group-relative advantages
        columns = {
            "answer_diseases": [s.answer_diseases for s in samples for _ in range(G)],
            "gold_boxes": [s.gold_boxes for s in samples for _ in range(G)],
            "task": [s.task for s in samples for _ in range(G)],
            # The user message: its numbered evidence is what the citation reward checks ids against.
            "prompts": [s.user for s in samples for _ in range(G)],
            "panel": model.panel,
        }
        summed = combined_reward(texts, weights=weights, **columns)
        rewards = torch.tensor([np.nan if r is None else r for r in summed], dtype=torch.float32)  # (B*G,)
        advantages, zero_std = group_advantages(rewards, G, cfg.scale_rewards)  # (B*G,)
        zero_std_shares.append(zero_std)
        per_reward = {}
        for name in weights:
            fn, _ = REWARDS[name]
            vals = [v for v in fn(texts, **columns) if v is not None]
            per_reward[f"reward/{name}"] = round(float(np.mean(vals)), 4) if vals else None
        # ---- policy gradient, accumulated over micro-batches of completions; dapo's
        # normaliser is the step's token count, so the summed loss equals the full batch's.
        model.lm.train()
        n_tokens = sum(len(x) for x in ids)
        chunks = [range(i, min(len(ids), i + cfg.micro_batch)) for i in range(0, len(ids), cfg.micro_batch)]
        loss_sum, metric_rows, lengths = 0.0, [], []
        for rows in chunks:
            part = FusedTokens(fused.tokens[rows.start:rows.stop], fused.token_mask[rows.start:rows.stop],
                               fused.modality_slices)
            p_prompts, p_ids = prompts[rows.start:rows.stop], ids[rows.start:rows.stop]
            logps, mask = model.lm.completion_logps(p_prompts, part, p_ids, cfg.temperature)  # (b, C)
            ref = None
            if cfg.beta:
                with torch.no_grad(), accelerator.unwrap_model(lm).lm.disable_adapter():
                    ref, _ = model.lm.completion_logps(p_prompts, part, p_ids, cfg.temperature)
            loss, metrics = grpo_per_token_loss(
                logps, None, ref, advantages[rows.start:rows.stop].to(logps.device), mask, beta=cfg.beta,
                epsilon_low=cfg.epsilon, loss_type=cfg.loss_type, max_completion_length=cfg.max_new_tokens,
                num_items_in_batch=n_tokens, grad_accum_steps=len(chunks))
            accelerator.backward(loss)
            loss_sum += float(loss.detach())
            metric_rows.append(metrics)
            lengths.append(mask.sum(1).float())
        mask_lengths = torch.cat(lengths)  # (B*G,)
        metrics = {k: float(np.nanmean([m[k] for m in metric_rows])) for k in metric_rows[0]}
        finite = rewards[torch.isfinite(rewards)]

        def values() -> dict[str, Any]:
            return {"loss": round(loss_sum, 5),
                    "reward_mean": round(float(finite.mean()), 4) if finite.numel() else None,
                    "reward_std": round(float(finite.std()), 4) if finite.numel() > 1 else None,
                    "zero_std_share": round(zero_std, 4), "completion_tokens": round(float(mask_lengths.mean()), 1),
                    "seconds_per_step": round(time.perf_counter() - t0, 2), **per_reward,
                    **{k: round(v, 5) for k, v in metrics.items() if isinstance(v, float) and np.isfinite(v)}}

        return StepReport(postfix={"reward": f"{float(finite.mean()) if finite.numel() else float('nan'):.3f}"},
                          values=values)

    run = run_loop(cfg, out, Stage("grpo", model.lm, len(data), step, trainable_state_only=True))
    model.eval()
    after = evaluate_answers(model, cfg, cfg.eval_samples, cfg.max_new_tokens) if cfg.eval_samples else None
    validation = {"before": before, "after": after,
                  "mean_zero_std_share": round(float(np.mean(zero_std_shares)), 4) if zero_std_shares else None}
    model.card.update({"stages": [*model.card.get("stages", []), {
        "stage": "grpo", "steps": run.steps, "prompts": len(data), "seconds": round(run.seconds, 1),
        "command": command, "config": cfg.as_dict(), "validation": validation}]})
    run.finish(model)
    return {"stage": "grpo", "steps": run.steps, "prompts": len(data), "train_s": round(run.seconds, 1),
            "validation": validation, "out": str(out)}
