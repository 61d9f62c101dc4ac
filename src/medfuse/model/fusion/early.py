"""`early` fusion: concatenate RAW features.

Each modality's raw input is flattened to a short vector (ECG average-pooled to 64 steps
per lead, image to 16x16, labs/vitals/notes/genomics as they are); the joint MLP over the
concatenation (+ presence bits) feeds the disease head. A modality's language-model tokens
are a linear read-out of its raw vector. Early fusion has no encoders and no finding head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medfuse.model.fusion.base import Fused, FusionInput, FusionStrategy, ModalityTokens, disease_head
from medfuse.model.fusion.joint import joint_fusion, joint_mlp
from medfuse.model.inputs import NOTES_DIM
from medfuse.record.case import MODALITIES, VITAL_FIELDS

# Early fusion's raw vectors: ECG average-pooled to this many steps per lead (at 100 Hz,
# 10 s -> 156 ms bins: rate and gross morphology survive, QRS detail does not, which is
# the point of comparing it with the encoders) and the image to this side length.
EARLY_ECG_STEPS = 64
EARLY_CXR_SIDE = 16


def raw_vectors(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """modality -> (B, F_m) raw vector of a collated batch (whether or not the modality is present)."""
    B = batch["present"].shape[0]
    ecg = F.adaptive_avg_pool1d(batch["ecg"], EARLY_ECG_STEPS).flatten(1)  # (B, 12*64)
    return {
        "ecg": torch.cat([ecg, batch["ecg_lead_mask"]], dim=1),  # (B, 12*64 + 12)
        "cxr": F.adaptive_avg_pool2d(batch["cxr"], EARLY_CXR_SIDE).flatten(1),  # (B, 256)
        "labs": batch["labs"].reshape(B, -1),  # (B, 2L)
        "vitals": batch["vitals"].reshape(B, -1),  # (B, 12)
        "notes": batch["notes_emb"],  # (B, 384)
        "genomics": batch["genomics"],  # (B, G)
    }


class EarlyFusion(FusionStrategy):
    """Raw vectors -> joint MLP -> disease head; tokens are linear read-outs of the raw vectors."""

    def build_modality_layers(self, model: nn.Module, n_labs: int, n_genes: int) -> None:
        d, k = model.config.d_model, model.config.tokens
        model.raw_dims = {
            "ecg": 12 * EARLY_ECG_STEPS + 12, "cxr": EARLY_CXR_SIDE**2, "labs": 2 * n_labs,
            "vitals": 2 * len(VITAL_FIELDS), "notes": NOTES_DIM, "genomics": n_genes,
        }
        model.raw_tokenizers = nn.ModuleDict({m: nn.Linear(model.raw_dims[m], k[m] * d) for m in MODALITIES})
        model.raw_norm = nn.LayerNorm(d)
        # The joint MLP is created here, before the shared layers, rather than in
        # build_fusion_layers: that has always been its place in the seeded initialisation.
        model.joint = joint_mlp(model.config, sum(model.raw_dims.values()))

    def modality_tokens(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> ModalityTokens:
        present = batch["present"]  # (B, M)
        B, d, k = present.shape[0], model.config.d_model, model.config.tokens
        raw = raw_vectors(batch)
        tokens = {}
        for i, m in enumerate(MODALITIES):
            raw[m] = torch.where(present[:, i : i + 1], raw[m], torch.zeros_like(raw[m]))  # (B, F_m)
            tokens[m] = model.raw_norm(model.raw_tokenizers[m](raw[m]).view(B, k[m], d))  # (B, k_m, d)
        return ModalityTokens(tokens=tokens, raw=raw)

    def build_fusion_layers(self, model: nn.Module) -> None:
        model.head = disease_head(model.config, model.n_diseases)

    def fuse(self, model: nn.Module, inputs: FusionInput) -> Fused:
        assert inputs.raw is not None  # EarlyFusion.modality_tokens always returns raw vectors
        pooled, gates = joint_fusion(model.joint, [inputs.raw[m] for m in MODALITIES], inputs.present)
        return Fused(tokens=inputs.tokens, gates=gates, pooled=pooled)

    def fusion_layers(self, model: nn.Module) -> list[nn.Module | nn.Parameter]:
        return [model.joint, model.head]
