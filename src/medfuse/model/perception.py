"""The modality perception layer (MedTVT-R1's idea, done with several tokens per modality).

Input: the token sets of all modalities concatenated, (B, N, d), with a (N,) index telling
which modality each token belongs to and a (B, M) mask of the modalities present.

1. Cross-modal attention: every token of modality m attends to the tokens of the OTHER
   present modalities (never its own, never a missing one); residual + LayerNorm, then a
   feed-forward block (residual + LayerNorm). A modality with no other modality present
   receives no cross-modal context and keeps its own tokens (plus the feed-forward).
2. Gates: a summary per modality (mean of its tokens) -> one MLP over all summaries and the
   presence bits -> one logit per modality -> softmax over the PRESENT modalities only.
   Gates of present modalities sum to 1; a missing modality's gate is exactly 0.
3. The gates are the reported modality weights, and they act: each modality's tokens are
   scaled by gate_m * M_present (uniform gates leave tokens unchanged) and the pooled
   representation for the disease head is sum_m gate_m * summary_m.

Missing modalities are masked, never zero-filled as if observed: their tokens are never
keys, their summaries are excluded from the gate input (zeroed with the presence bit off),
and their output tokens are zero with token_mask False.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class PerceptionOutput:
    tokens: torch.Tensor  # (B, N, d) gated, cross-attended tokens (zero for missing modalities)
    gates: torch.Tensor  # (B, M) modality weights, sum 1 over present modalities
    pooled: torch.Tensor  # (B, d) gate-weighted sum of modality summaries
    summaries: torch.Tensor  # (B, M, d) mean token per modality after cross-attention
    attention: list[torch.Tensor]  # per block (B, H, N, N) cross-modal attention weights


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over the entries where `mask` is True; exactly 0 elsewhere (and for empty rows).

    A finite fill value (not -inf) keeps an all-masked row finite, so no NaN reaches the
    backward pass.
    """
    filled = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.where(mask, torch.softmax(filled, dim=dim), torch.zeros_like(logits))


class CrossModalBlock(nn.Module):
    """Multi-head attention restricted by an (B, N, N) allowed-pairs mask, then a feed-forward."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.h = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * d_model, d_model))
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, d = x.shape  # batch, tokens, width
        hd = d // self.h
        q, k, v = self.qkv(x).view(B, N, 3, self.h, hd).permute(2, 0, 3, 1, 4)  # each (B, H, N, hd)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)  # (B, H, N, N)
        attn = masked_softmax(scores, allowed[:, None])  # (B, H, N, N); rows without keys are 0
        ctx = (self.drop(attn) @ v).transpose(1, 2).reshape(B, N, d)  # (B, N, d)
        x = self.norm1(x + self.drop(self.out(ctx)))
        x = self.norm2(x + self.drop(self.ffn(x)))
        return x, attn


class ModalityPerception(nn.Module):
    """Cross-modal attention among present modalities + one gate per modality."""

    def __init__(self, d_model: int, n_heads: int, n_modalities: int, n_layers: int = 1, dropout: float = 0.1):
        super().__init__()
        self.n_modalities = n_modalities
        self.blocks = nn.ModuleList(CrossModalBlock(d_model, n_heads, dropout) for _ in range(n_layers))
        self.gate = nn.Sequential(
            nn.Linear(n_modalities * (d_model + 1), d_model), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_model, n_modalities)
        )

    def forward(self, tokens: torch.Tensor, token_modality: torch.Tensor, present: torch.Tensor) -> PerceptionOutput:
        """tokens (B, N, d); token_modality (N,) long in [0, M); present (B, M) bool."""
        B, N, d = tokens.shape
        M = self.n_modalities
        token_present = present[:, token_modality]  # (B, N)
        other = token_modality[:, None] != token_modality[None, :]  # (N, N) query and key from different modalities
        # (B, N, N): query and key both present, key of another modality. Missing queries get
        # no row at all, so the attention maps read as attributions hold only real pairs.
        allowed = other[None] & token_present[:, None, :] & token_present[:, :, None]
        x = torch.where(token_present[..., None], tokens, torch.zeros_like(tokens))
        attention = []
        for block in self.blocks:
            x, attn = block(x, allowed)
            x = torch.where(token_present[..., None], x, torch.zeros_like(x))  # missing stay exactly 0
            attention.append(attn)

        one_hot = F.one_hot(token_modality, M).to(x.dtype)  # (N, M)
        counts = one_hot.sum(0).clamp(min=1)  # (M,)
        summaries = torch.einsum("bnd,nm->bmd", x, one_hot) / counts[None, :, None]  # (B, M, d)
        gate_in = torch.cat([summaries.flatten(1), present.to(x.dtype)], dim=1)  # (B, M*d + M)
        gates = masked_softmax(self.gate(gate_in), present)  # (B, M)

        n_present = present.sum(1, keepdim=True).clamp(min=1).to(x.dtype)  # (B, 1)
        scale = (gates * n_present)[:, token_modality]  # (B, N)
        gated = x * scale[..., None]  # (B, N, d)
        pooled = (gates[..., None] * summaries).sum(1)  # (B, d)
        return PerceptionOutput(tokens=gated, gates=gates, pooled=pooled, summaries=summaries, attention=attention)
