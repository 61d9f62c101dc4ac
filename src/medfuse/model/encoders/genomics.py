"""Genomics: one learned embedding per vocabulary entry (gene, gene x class, hotspot) -> k tokens.

The reported variants are a set; attention pooling over the embeddings of the active
entries reads it into k tokens, independent of order and count.
"""

from __future__ import annotations

import torch
from torch import nn

from medfuse.model.encoders.pooling import AttentionPool


class GenomicsEncoder(nn.Module):
    """(B, G) multi-hot -> (B, k, d) tokens."""

    def __init__(self, n_entries: int, d_model: int, n_tokens: int, n_heads: int, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Parameter(torch.randn(n_entries, d_model) * 0.02)  # (G, d)
        self.pool = AttentionPool(d_model, n_tokens, n_heads, dropout)

    def forward(self, multi_hot: torch.Tensor) -> torch.Tensor:
        B = multi_hot.shape[0]
        entries = self.embed.unsqueeze(0).expand(B, -1, -1)  # (B, G, d)
        return self.pool(entries, valid=multi_hot > 0)  # (B, k, d)
