"""`late` fusion: per-modality heads (the auxiliary heads) and a learned weighted vote.

Disease logits = sum over present modalities of gate_m * logits_m, gates = softmax of one
learned weight per modality over the present modalities. There is no disease head; the
vote weights are the reported modality weights.
"""

from __future__ import annotations

import torch
from torch import nn

from medfuse.model.fusion.base import Fused, FusionInput
from medfuse.model.fusion.encoded import EncodedFusion
from medfuse.model.perception import masked_softmax
from medfuse.record.case import MODALITIES


class LateFusion(EncodedFusion):
    """Auxiliary heads' logits, averaged with learned weights over the present modalities."""

    def build_fusion_layers(self, model: nn.Module) -> None:
        model.vote = nn.Parameter(torch.zeros(len(MODALITIES)))  # (M,) learned vote logits, uniform at start

    def fuse(self, model: nn.Module, inputs: FusionInput) -> Fused:
        B, M = inputs.present.shape
        gates = masked_softmax(model.vote.expand(B, M), inputs.present)  # (B, M)
        pooled = (gates[..., None] * inputs.summaries).sum(1)  # (B, d)
        return Fused(tokens=inputs.tokens, gates=gates, pooled=pooled)

    def disease_logits(self, model: nn.Module, fused: Fused, clue_tokens: torch.Tensor | None,
                       aux_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return fused.pooled, (fused.gates[..., None] * aux_logits).sum(1)  # (B, d), (B, D)

    def fusion_layers(self, model: nn.Module) -> list[nn.Module | nn.Parameter]:
        # Nothing of late fusion's own trains in sft: the vote stays as the encoders stage left it.
        return []
