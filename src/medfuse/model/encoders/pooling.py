"""Attention pooling: k learned queries read a variable-length set of vectors into k tokens.

Every encoder ends with one of these, so each modality yields several tokens (never one)
whatever its input length: ECG time steps, ViT patches, lab features, variant entries.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class AttentionPool(nn.Module):
    """(B, n, d) inputs (+ optional (B, n) validity mask) -> (B, k, d) tokens."""

    def __init__(self, d_model: int, n_tokens: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_tokens, d_model) / math.sqrt(d_model))  # (k, d)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, n, d); valid (B, n) bool, True where an input vector is real."""
        B = x.shape[0]
        q = self.queries.unsqueeze(0).expand(B, -1, -1)  # (B, k, d)
        pad = None
        if valid is not None:
            # A row with no valid input (the modality is missing) would give NaN from an
            # all-masked softmax; let it attend to everything instead. Its tokens are
            # discarded downstream (masked by `present`), and NaN would poison gradients.
            empty = ~valid.any(dim=1, keepdim=True)  # (B, 1)
            pad = ~(valid | empty)  # (B, n) True = ignore
        out, _ = self.attn(q, x, x, key_padding_mask=pad, need_weights=False)  # (B, k, d)
        return self.norm(q + out)


def sinusoidal_positions(n: int, d: int, device: torch.device | None = None) -> torch.Tensor:
    """(n, d) fixed sine/cosine position codes (Vaswani et al.), length-agnostic."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]  # (n, 1)
    freq = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))  # (d/2,)
    out = torch.zeros(n, d, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: d // 2])
    return out
