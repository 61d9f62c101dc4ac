"""Labs and vital signs: a feature tokenizer (FT-Transformer style) pooled into k tokens.

Each feature f becomes a d-vector: `value * w_f + b_f` when observed, a learned
`missing_f` vector when not (a test that was not ordered is information, and it must
never look like a normal value of 0). One self-attention layer lets features interact
(BUN with creatinine, SBP with heart rate) before attention pooling.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medfuse.model.encoders.pooling import AttentionPool


class TabularEncoder(nn.Module):
    """(B, F, 2) (normalised value, observed flag) -> (B, k, d) tokens."""

    def __init__(self, n_features: int, d_model: int, n_tokens: int, n_heads: int, dropout: float = 0.1):
        super().__init__()
        scale = 1 / math.sqrt(d_model)
        self.weight = nn.Parameter(torch.randn(n_features, d_model) * scale)  # (F, d)
        self.bias = nn.Parameter(torch.randn(n_features, d_model) * scale)  # (F, d)
        self.missing = nn.Parameter(torch.randn(n_features, d_model) * scale)  # (F, d)
        self.mix = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward=2 * d_model, dropout=dropout,
                                              activation="gelu", batch_first=True, norm_first=True)
        self.pool = AttentionPool(d_model, n_tokens, n_heads, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, observed = x[..., :1], x[..., 1:]  # (B, F, 1) each
        tokens = observed * (value * self.weight + self.bias) + (1 - observed) * self.missing  # (B, F, d)
        return self.pool(self.mix(tokens))  # (B, k, d)
