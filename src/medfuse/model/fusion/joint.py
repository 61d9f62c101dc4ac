"""The joint MLP of `early` and `feature` fusion, and the modality weights it reports.

Both concatenate one block per modality (raw vectors or encoder summaries) and the
presence bits into one MLP. Neither has a gate, so the modality weights are a norm-based
attribution: the share of the joint MLP's first-layer pre-activation contributed by each
modality's block, ||W_m x_m|| / sum over present j of ||W_j x_j||.
"""

from __future__ import annotations

import torch
from torch import nn

from medfuse.model.config import ModelConfig
from medfuse.model.fusion.base import mlp
from medfuse.record.case import MODALITIES


def joint_mlp(config: ModelConfig, block_width: int) -> nn.Sequential:
    """The joint MLP over `block_width` concatenated modality features + one presence bit per modality."""
    d = config.d_model
    return mlp(block_width + len(MODALITIES), 2 * d, d, config.dropout)


def joint_fusion(joint: nn.Sequential, blocks: list[torch.Tensor],
                 present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled (B, d), modality weights (B, M)) of the joint MLP over `blocks` (B, F_m) in MODALITIES order."""
    x = torch.cat([*blocks, present.to(blocks[0].dtype)], dim=1)  # (B, sum F_m + M)
    return joint(x), norm_attribution(joint[0], blocks, present)


def norm_attribution(first: nn.Linear, blocks: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
    """(B, M) share of ||W_m x_m|| among present modalities (the joint layer's input blocks)."""
    norms, start = [], 0
    for x in blocks:
        w = first.weight[:, start : start + x.shape[1]]  # (hidden, F_m)
        norms.append((x @ w.T).norm(dim=1))  # (B,)
        start += x.shape[1]
    norm = torch.stack(norms, dim=1).detach()  # (B, M); an attribution, not a trained quantity
    norm = torch.where(present, norm, torch.zeros_like(norm))
    return norm / norm.sum(1, keepdim=True).clamp(min=1e-12)
