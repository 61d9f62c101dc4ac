"""ECG encoder: a 1-D residual CNN over the 12 standard leads, attention-pooled into k tokens.

Input is (B, 12, T) in mV at the configured rate plus the (B, 12) lead mask; the mask is
fed as 12 extra constant channels so a missing lead (zeros) is never read as a flat line.
GroupNorm rather than BatchNorm: a case's tokens must not depend on the other cases in
its batch (and a missing modality's placeholder input must not leak through batch stats).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medfuse.model.encoders.pooling import AttentionPool, sinusoidal_positions


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ResidualBlock1d(nn.Module):
    """Two 7-tap convolutions with a skip connection (1x1 projection when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 7, stride=stride, padding=3, bias=False)
        self.norm1 = _norm(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 7, padding=3, bias=False)
        self.norm2 = _norm(c_out)
        self.drop = nn.Dropout(dropout)
        self.skip = (nn.Identity() if c_in == c_out and stride == 1
                     else nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride=stride, bias=False), _norm(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.norm1(self.conv1(x)))  # (B, c_out, T')
        h = self.norm2(self.conv2(self.drop(h)))
        return F.gelu(h + self.skip(x))


class ECGEncoder(nn.Module):
    """(B, 12, T) signal + (B, 12) lead mask -> (B, k, d) tokens.

    The stem and three strided blocks downsample 16x (T = 1000 at 100 Hz -> 63 steps of
    160 ms); sine/cosine positions are added before pooling so queries can attend by time.
    """

    def __init__(self, d_model: int, n_tokens: int, n_heads: int, channels: int = 64, dropout: float = 0.1):
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.Conv1d(24, c, 15, stride=2, padding=7, bias=False), _norm(c), nn.GELU())
        self.blocks = nn.Sequential(
            ResidualBlock1d(c, c, 1, dropout),
            ResidualBlock1d(c, 2 * c, 2, dropout),
            ResidualBlock1d(2 * c, 2 * c, 1, dropout),
            ResidualBlock1d(2 * c, 4 * c, 2, dropout),
            ResidualBlock1d(4 * c, 4 * c, 2, dropout),
        )
        self.proj = nn.Linear(4 * c, d_model)
        self.pool = AttentionPool(d_model, n_tokens, n_heads, dropout)

    def forward(self, ecg: torch.Tensor, lead_mask: torch.Tensor) -> torch.Tensor:
        B, L, T = ecg.shape  # batch, leads (12), samples
        mask_channels = lead_mask[:, :, None].expand(B, L, T).to(ecg.dtype)  # (B, 12, T)
        x = torch.cat([ecg * mask_channels, mask_channels], dim=1)  # (B, 24, T)
        h = self.blocks(self.stem(x))  # (B, 4c, T/16)
        h = self.proj(h.transpose(1, 2))  # (B, T/16, d)
        h = h + sinusoidal_positions(h.shape[1], h.shape[2], h.device)
        return self.pool(h)  # (B, k, d)
