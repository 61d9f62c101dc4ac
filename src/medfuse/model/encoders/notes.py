"""Notes: the all-MiniLM-L6-v2 sentence embedding projected into k tokens.

The note text itself goes to the language model in the prompt; these tokens carry its
gist into the perception layer and the disease clues. The sentence encoder stays frozen
(embeddings are computed in `medfuse.model.inputs`), only the projection trains.
"""

from __future__ import annotations

import torch
from torch import nn


class NotesEncoder(nn.Module):
    """(B, 384) embedding -> (B, k, d) tokens."""

    def __init__(self, in_dim: int, d_model: int, n_tokens: int, dropout: float = 0.1):
        super().__init__()
        self.k, self.d = n_tokens, d_model
        self.mlp = nn.Sequential(nn.Linear(in_dim, d_model), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(d_model, n_tokens * d_model))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        B = emb.shape[0]
        return self.norm(self.mlp(emb).view(B, self.k, self.d))  # (B, k, d)
