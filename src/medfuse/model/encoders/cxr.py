"""Chest X-ray encoder: a ViT built from its config (or a user's HF vision model) -> k tokens.

No pretrained 2-D medical weights are available offline, so the default is a small
`transformers.ViTModel` built from `ModelConfig.cxr_vit` on 1-channel images and trained
with the rest of the model. A user can point `cxr_vision_model` at any Hugging Face
vision backbone already on disk (folder or cached id; never downloaded): ViT-like models
give patch tokens (B, n, h), CNNs (ResNet, ConvNeXt) give a feature map (B, C, H, W);
either is projected to d and attention-pooled into k tokens.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medfuse.errors import InputError
from medfuse.model.encoders.pooling import AttentionPool


def _load_vision_backbone(name_or_path: str) -> tuple[nn.Module, Any, list[float], list[float]]:
    """(backbone, its config, image mean, image std) from a local folder or cached HF id."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    try:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=True)
        model = AutoModel.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError, KeyError, ImportError) as e:
        raise InputError(name_or_path, f"cannot load a vision model from it offline ({e.__class__.__name__})") from None
    # Dual-encoder checkpoints (CLIP, SigLIP) load as the pair; keep the image tower.
    if hasattr(model, "vision_model"):
        model = model.vision_model
        config = getattr(config, "vision_config", config)
    mean, std = [0.5], [0.5]
    try:
        proc = AutoImageProcessor.from_pretrained(name_or_path, local_files_only=True)
        mean = list(getattr(proc, "image_mean", mean) or mean)
        std = list(getattr(proc, "image_std", std) or std)
    except (OSError, ValueError):
        pass  # no processor saved: the common 0.5 / 0.5 normalisation
    return model, config, mean, std


class CXREncoder(nn.Module):
    """(B, 1, S, S) radiograph in [0, 1] -> (B, k, d) tokens."""

    def __init__(self, d_model: int, n_tokens: int, n_heads: int, image_size: int, vit: dict[str, Any],
                 vision_model: str | None = None, dropout: float = 0.1):
        super().__init__()
        if vision_model:
            self.backbone, cfg, mean, std = _load_vision_backbone(vision_model)
            self.in_channels = int(getattr(cfg, "num_channels", 3))
            size = getattr(cfg, "image_size", image_size)
            self.input_size = int(size if isinstance(size, int) else size[0])
            hidden = getattr(cfg, "hidden_size", None) or cfg.hidden_sizes[-1]
        else:
            from transformers import ViTConfig, ViTModel

            cfg = ViTConfig(image_size=image_size, num_channels=1, **vit)
            self.backbone = ViTModel(cfg, add_pooling_layer=False)
            self.in_channels, self.input_size, hidden = 1, image_size, cfg.hidden_size
            mean, std = [0.5], [0.5]
        n = self.in_channels
        self.register_buffer("mean", torch.tensor((mean * n)[:n]).view(1, n, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor((std * n)[:n]).view(1, n, 1, 1), persistent=False)
        self.proj = nn.Linear(int(hidden), d_model)
        self.pool = AttentionPool(d_model, n_tokens, n_heads, dropout)

    def forward(self, cxr: torch.Tensor, return_patches: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, k, d) tokens; with `return_patches`, also the projected patch tokens (B, n, d)
        that the finding head localises on."""
        x = cxr  # (B, 1, S, S)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = x.expand(-1, self.in_channels, -1, -1)  # grey -> the backbone's channels
        x = (x - self.mean) / self.std  # (B, C, S', S')
        h = self.backbone(pixel_values=x).last_hidden_state
        if h.dim() == 4:  # CNN feature map (B, C, H, W) -> (B, H*W, C)
            h = h.flatten(2).transpose(1, 2)
        patches = self.proj(h)  # (B, n, d)
        tokens = self.pool(patches)  # (B, k, d)
        return (tokens, patches) if return_patches else tokens
