"""Disease clues (TRRG's idea): per-modality disease scores turned into clue tokens.

`AuxiliaryHeads` give every modality its own disease logits from its own tokens, (B, D)
each, trained by the auxiliary loss on the cases where that modality is present. They
are the modality's "zero-shot" opinion in the sense TRRG uses: what this encoder alone
suggests, before fusion.

`ClueTokens` turns those scores into one token per panel disease, (B, D, d): a learned
disease embedding plus a projection of the per-modality probabilities of that disease
(only from present modalities) and the presence bits. The clue tokens sit beside the
modality tokens in the fused sequence the language model reads, and their mean feeds the
disease head. The probabilities are detached: the clue path reads the auxiliary heads'
opinions, it does not train them (the auxiliary loss alone does, as TRRG trains its clue
encoder separately). `ModelConfig.use_clues = False` removes the clue tokens (ablation).
"""

from __future__ import annotations

import torch
from torch import nn


class AuxiliaryHeads(nn.Module):
    """Per-modality disease logits from the mean of that modality's tokens."""

    def __init__(self, modalities: tuple[str, ...], d_model: int, n_diseases: int):
        super().__init__()
        self.heads = nn.ModuleDict({m: nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, n_diseases)) for m in modalities})

    def forward(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """tokens: modality -> (B, k, d); returns modality -> (B, D) logits."""
        return {m: self.heads[m](t.mean(dim=1)) for m, t in tokens.items()}


class ClueTokens(nn.Module):
    """(B, M, D) per-modality logits + (B, M) presence -> (B, D, d) clue tokens."""

    def __init__(self, n_modalities: int, n_diseases: int, d_model: int):
        super().__init__()
        self.disease = nn.Parameter(torch.randn(n_diseases, d_model) * 0.02)  # (D, d)
        self.score_proj = nn.Linear(2 * n_modalities, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, aux_logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        pres = present.to(aux_logits.dtype)[:, :, None]  # (B, M, 1)
        probs = torch.sigmoid(aux_logits.detach()) * pres  # (B, M, D); 0 from missing modalities
        feats = torch.cat([probs, pres.expand_as(probs)], dim=1).transpose(1, 2)  # (B, D, 2M)
        return self.norm(self.disease + self.score_proj(feats))  # (B, D, d)
