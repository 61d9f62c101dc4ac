"""`feature` fusion: concatenate ENCODER outputs.

The mean token of each modality encoder is concatenated (+ presence bits) into the joint
MLP, which feeds the disease head. The language model reads the encoder tokens unchanged.
"""

from __future__ import annotations

from torch import nn

from medfuse.model.fusion.base import Fused, FusionInput, disease_head
from medfuse.model.fusion.encoded import EncodedFusion
from medfuse.model.fusion.joint import joint_fusion, joint_mlp
from medfuse.record.case import MODALITIES


class FeatureFusion(EncodedFusion):
    """Encoder summaries -> joint MLP -> disease head."""

    def build_fusion_layers(self, model: nn.Module) -> None:
        model.joint = joint_mlp(model.config, len(MODALITIES) * model.config.d_model)
        model.head = disease_head(model.config, model.n_diseases)

    def fuse(self, model: nn.Module, inputs: FusionInput) -> Fused:
        blocks = list(inputs.summaries.unbind(1))  # M x (B, d)
        pooled, gates = joint_fusion(model.joint, blocks, inputs.present)
        return Fused(tokens=inputs.tokens, gates=gates, pooled=pooled)

    def fusion_layers(self, model: nn.Module) -> list[nn.Module | nn.Parameter]:
        return [model.joint, model.head]
