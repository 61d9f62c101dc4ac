"""`hybrid` fusion: the modality perception layer (`medfuse.model.perception`).

Cross-modal attention between the encoder tokens of the present modalities, then gates;
the gate-weighted pooled summary feeds the disease head and the gates are the reported
modality weights. Its loss adds `gate_balance` * KL(gates || uniform over the present
modalities), so the gates do not collapse onto one modality.
"""

from __future__ import annotations

import torch
from torch import nn

from medfuse.model.fusion.base import Fused, FusionInput, FusionOutput, disease_head
from medfuse.model.fusion.encoded import EncodedFusion
from medfuse.model.perception import ModalityPerception
from medfuse.record.case import MODALITIES


def gate_kl_to_uniform(gates: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean over cases of KL(gates || uniform over the present modalities); 0 when gates are uniform.

    gates (B, M) sum to 1 over `present` (B, M). The penalty keeps softmax gates from a
    winner-take-all collapse (measured on a synthetic cohort: with clue tokens and no
    penalty, one modality took 0.996 of the weight on every case) while still letting a
    case's gates move where the data favour a modality.
    """
    n = present.sum(1, keepdim=True).clamp(min=1).to(gates.dtype)  # (B, 1)
    safe = torch.where(present, gates, torch.ones_like(gates)).clamp(min=1e-12)  # log(1) = 0 off the support
    kl = (torch.where(present, gates, torch.zeros_like(gates)) * torch.log(safe * n)).sum(1)  # (B,)
    rows = present.any(1)
    return kl[rows].mean() if rows.any() else gates.sum() * 0


class HybridFusion(EncodedFusion):
    """Encoder tokens -> modality perception (cross-modal attention + gates) -> disease head."""

    def build_fusion_layers(self, model: nn.Module) -> None:
        config = model.config
        model.perception = ModalityPerception(config.d_model, config.n_heads, len(MODALITIES),
                                              config.perception_layers, config.dropout)
        model.head = disease_head(config, model.n_diseases)

    def fuse(self, model: nn.Module, inputs: FusionInput) -> Fused:
        per = model.perception(inputs.tokens, model.token_modality, inputs.present)
        return Fused(tokens=per.tokens, gates=per.gates, pooled=per.pooled)

    def extra_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], out: FusionOutput) -> torch.Tensor | None:
        weight = model.config.gate_balance
        return weight * gate_kl_to_uniform(out.gates, batch["present"].bool()) if weight > 0 else None

    def fusion_layers(self, model: nn.Module) -> list[nn.Module | nn.Parameter]:
        return [model.perception, model.head]
