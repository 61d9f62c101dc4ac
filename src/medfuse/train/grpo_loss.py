"""The GRPO loss in one file: group advantages, per-token log-probs, the clipped surrogate.

medfuse feeds fused modality tokens to the LLM through ``inputs_embeds``, which TRL's
GRPOTrainer cannot drive, so the GRPO stage runs a compact loop around these functions.
They reproduce TRL 1.16's ``GRPOTrainer`` (`_generate_and_score_completions` for the
advantages, `_compute_loss` for the loss, token-level importance sampling, no vLLM, no
entropy masking or bonus), and tests/test_grpo_loss.py checks them against TRL itself.

One optimisation step, for B*G completions (B prompts, G samples each) of at most T tokens:

    rewards (B*G,)  --group_advantages-->  advantages (B*G,)
    logits (B*G, T, V) --selective_log_softmax(., completion_ids)--> logps (B*G, T)
    grpo_per_token_loss(logps, old_logps, ref_logps, advantages, completion_mask) -> loss

The per-token objective, with ratio r_t = exp(logp_t - old_logp_t) and advantage A:

    loss_t = -min(r_t * A, clip(r_t, 1 - eps_low, 1 + eps_high) * A) + beta * kl_t
    kl_t   = exp(ref_t - logp_t) - (ref_t - logp_t) - 1          (k3 estimator, >= 0)

and `loss_type` says how the masked loss_t are averaged (see `grpo_per_token_loss`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = ["LOSS_TYPES", "LossType", "group_advantages", "grpo_per_token_loss", "selective_log_softmax"]

LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo"]
LOSS_TYPES: tuple[str, ...] = ("grpo", "bnpo", "dr_grpo", "dapo")  # TRL 1.16's default is "dapo"
ScaleRewards = Literal["group", "batch", "none"]
STD_EPS = 1e-4  # TRL adds this to the std before dividing


def _nanstd(x: Tensor, dim: int | None = None) -> Tensor:
    # Unbiased (Bessel-corrected) std ignoring NaN; NaN where fewer than 2 values (trl's nanstd).
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    n = torch.sum(~torch.isnan(x), dim=dim, keepdim=True)
    var = var * torch.where(n > 1, n / (n - 1), torch.full_like(var, math.nan))
    std = var.sqrt()
    return std.squeeze() if dim is None else std.squeeze(dim)


def group_advantages(
    rewards: Tensor, group_size: int, scale: ScaleRewards = "group"
) -> tuple[Tensor, float]:
    """GRPO advantages: reward minus its group's mean, scaled by a std (TRL's `scale_rewards`).

    `rewards` (B*G,) holds the G = `group_size` completions of each prompt consecutively
    (prompt-major, as TRL's sampler orders them). NaN marks a completion no reward applied
    to: it is left out of the means and stds and gets advantage 0.

    - ``scale="group"`` (TRL's default): divide by the group's unbiased std + 1e-4;
    - ``"batch"``: divide by the whole batch's unbiased std + 1e-4 (still minus the group mean);
    - ``"none"``: no division (Dr. GRPO).

    Returns ``(advantages (B*G,), zero_std_share)``, the share of groups whose rewards are
    all equal (advantages all 0: no learning signal; TRL logs it as
    ``frac_reward_zero_std``, except that with ``"batch"`` TRL tests the batch std).

    >>> adv, zero = group_advantages(torch.tensor([1.0, 0.0, 0.5, 0.5]), group_size=2)
    >>> [round(a, 4) for a in adv.tolist()], zero
    ([0.707, -0.707, 0.0, 0.0], 0.5)
    """
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a multiple of group_size={group_size} entries, got {tuple(rewards.shape)}"
        )
    grouped = rewards.view(-1, group_size)  # (B, G)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group_size)  # (B*G,)
    if group_size > 1:
        group_std = _nanstd(grouped, dim=1)  # (B,)
    else:
        group_std = torch.zeros(grouped.size(0), dtype=rewards.dtype, device=rewards.device)
    advantages = rewards - mean  # (B*G,)
    if scale == "group":
        advantages = advantages / (group_std.repeat_interleave(group_size) + STD_EPS)
    elif scale == "batch":
        batch_std = _nanstd(rewards) if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype)
        advantages = advantages / (batch_std + STD_EPS)
    zero_std_share = torch.isclose(group_std, torch.zeros_like(group_std)).float().mean().item()
    return torch.nan_to_num(advantages, nan=0.0), zero_std_share


def selective_log_softmax(logits: Tensor, index: Tensor, temperature: float = 1.0) -> Tensor:
    """``log_softmax(logits / temperature).gather(-1, index)`` without keeping the (..., V)
    log-softmax: per-token log-probs of the chosen ids.

    `logits` (B, T, V) are the scores *predicting* each position, so for a causal LM over
    ``cat(prompt_ids, completion_ids)`` of length P + T they are
    ``model(...).logits[:, P - 1 : -1]``; `index` (B, T) are the completion ids. Returns
    (B, T). Use the sampling temperature: TRL divides the logits by it before scoring.

    >>> logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])  # (1, 2, 2)
    >>> selective_log_softmax(logits, torch.tensor([[1, 0]])).exp()
    tensor([[0.5000, 0.8808]])
    """
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    if temperature != 1.0:
        logits = logits / temperature
    if logits.dtype in (torch.float32, torch.float64):
        chosen = torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1)  # (B, T)
        lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])  # (B, T), row by row: less memory
        return chosen - lse
    # logsumexp loses precision in bf16/fp16: log_softmax row by row instead
    rows = zip(logits, index, strict=True)  # (T, V) and (T,) per sequence
    return torch.stack([row.log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1) for row, ids in rows])


def _nan_extreme(x: Tensor, fn) -> float:
    x = x[~torch.isnan(x)]
    return fn(x).item() if x.numel() else math.nan


def grpo_per_token_loss(
    logps: Tensor,
    old_logps: Tensor | None,
    ref_logps: Tensor | None,
    advantages: Tensor,
    completion_mask: Tensor,
    *,
    beta: float = 0.0,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: LossType = "dapo",
    max_completion_length: int | None = None,
    num_items_in_batch: float | Tensor | None = None,
    grad_accum_steps: int = 1,
    delta: float | None = None,
    kl_bias_correction: bool = True,
) -> tuple[Tensor, dict[str, float]]:
    """The GRPO loss of one micro-batch of B completions, and its metrics (TRL's names).

    Tensors (T = longest completion in the micro-batch):
    - `logps` (B, T): log pi_theta of the completion tokens, with gradient;
    - `old_logps` (B, T): log-probs under the policy that sampled them; None when each
      generation is used for one update only (then they equal ``logps.detach()``);
    - `ref_logps` (B, T): the reference (frozen) policy's; needed when ``beta != 0``;
    - `advantages` (B,) or (B, T); `completion_mask` (B, T): 1 for tokens of the completion
      (up to and including EOS), 0 for padding.

    Clipping keeps the ratio in [1 - epsilon_low, 1 + epsilon_high] (epsilon_high defaults
    to epsilon_low; DAPO's "clip higher" uses e.g. 0.28); `delta` also caps the unclipped
    ratio (two-sided GRPO). With `kl_bias_correction` (TRL's default) the KL term is
    multiplied by the ratio, which makes it unbiased for samples from the old policy.

    `loss_type`, how the masked per-token losses l (B, T) are averaged:
    - ``"grpo"``: per sequence over its tokens, then over sequences (length-biased);
    - ``"bnpo"``: over all tokens of this micro-batch;
    - ``"dr_grpo"``: sum / (B * `max_completion_length`), a constant;
    - ``"dapo"`` (TRL's default): sum / `num_items_in_batch`, the number of completion
      tokens in the whole accumulation window (TRL: in the generation batch, rescaled to
      one window); it defaults to this micro-batch's tokens when `grad_accum_steps` is 1.
    The first three are divided by `grad_accum_steps` so that gradients summed over the
    accumulation window average them (dapo's normaliser already spans the window).

    Metrics (floats): ``policy_loss`` (before the accumulation division), ``kl`` (when
    `ref_logps` is given; the same masked mean TRL logs), and the clipped token shares
    ``clip_ratio/low_mean``, ``clip_ratio/high_mean``, ``clip_ratio/region_mean`` (token
    means) and ``clip_ratio/low_min``, ``clip_ratio/high_max`` (over sequence means).

    >>> B, T = 2, 3
    >>> logps = torch.log(torch.full((B, T), 0.5)).requires_grad_()
    >>> mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    >>> loss, m = grpo_per_token_loss(logps, None, None, torch.tensor([1.0, -1.0]), mask, loss_type="bnpo")
    >>> round(loss.item(), 4), m["clip_ratio/region_mean"]  # ratio 1: loss = -mean(A per token)
    (-0.2, 0.0)
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if logps.shape != completion_mask.shape:
        raise ValueError(f"logps {tuple(logps.shape)} and completion_mask {tuple(completion_mask.shape)} differ")
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta != 0 needs ref_logps")
    epsilon_high = epsilon_low if epsilon_high is None else epsilon_high
    mask = completion_mask.to(logps.dtype)  # (B, T)
    old_logps = logps.detach() if old_logps is None else old_logps  # (B, T)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages  # (B, 1) or (B, T)

    # Clipped surrogate (PPO): ratio of the current to the sampling policy, per token.
    ratio = torch.exp(logps - old_logps)  # (B, T)
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)  # (B, T)
    unclipped = ratio if delta is None else torch.clamp(ratio, max=delta)  # (B, T)
    per_token_loss = -torch.min(unclipped * adv, clipped * adv)  # (B, T)

    # k3 KL estimator to the reference policy: exp(d) - d - 1 with d = ref - logp, >= 0.
    per_token_kl = None
    if ref_logps is not None:
        d = ref_logps - logps  # (B, T)
        per_token_kl = torch.exp(d) - d - 1  # (B, T)
        if kl_bias_correction:
            per_token_kl = per_token_kl * ratio
        if beta != 0.0:
            per_token_loss = per_token_loss + beta * per_token_kl

    masked = per_token_loss * mask  # (B, T)
    if loss_type == "grpo":
        loss = (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = masked.sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length")
        loss = masked.sum() / (masked.size(0) * max_completion_length)
    else:  # dapo
        if num_items_in_batch is None:
            if grad_accum_steps != 1:
                raise ValueError("loss_type='dapo' with gradient accumulation needs num_items_in_batch")
            num_items_in_batch = mask.sum()
        loss = masked.sum() / torch.as_tensor(num_items_in_batch, dtype=mask.dtype).clamp(min=1.0)
    policy_loss = loss.item()
    if loss_type != "dapo":
        loss = loss / grad_accum_steps

    with torch.no_grad():
        n_tokens = mask.sum().clamp(min=1.0)
        low = ((ratio < 1 - epsilon_low) & (adv < 0)).to(mask.dtype)  # (B, T)
        high = ((ratio > 1 + epsilon_high) & (adv > 0)).to(mask.dtype)  # (B, T)
        region = torch.maximum(low, high)  # (B, T)
        seq_tokens = mask.sum(-1)  # (B,); 0 for an empty completion -> NaN, skipped below
        metrics = {
            "policy_loss": policy_loss,
            "clip_ratio/low_mean": ((low * mask).sum() / n_tokens).item(),
            "clip_ratio/high_mean": ((high * mask).sum() / n_tokens).item(),
            "clip_ratio/region_mean": ((region * mask).sum() / n_tokens).item(),
            "clip_ratio/low_min": _nan_extreme((low * mask).sum(-1) / seq_tokens, torch.min),
            "clip_ratio/high_max": _nan_extreme((high * mask).sum(-1) / seq_tokens, torch.max),
        }
        if per_token_kl is not None:
            metrics["kl"] = ((per_token_kl * mask).sum() / n_tokens).item()
    return loss, metrics
