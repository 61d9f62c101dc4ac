"""Boxed image findings: a small set-prediction head on the chest X-ray patch tokens.

The language model reports findings as `<ref>label</ref><box>[[x1, y1, x2, y2]]</box>`, but
a 135M-parameter LM reading 8 pooled image tokens cannot regress coordinates reliably, so
localisation is done where the spatial information is: on the ViT patch tokens. Each
finding type has `SLOTS_PER_LABEL` slots (one per side of the image: bilateral effusion
and oedema get one box per lung); a slot is a learned query that attends over the patches
and predicts (presence logit, box). Slot assignment is fixed by the box centre (left or
right half of the image), so no matching is needed during training.

The boxes live on the 0-999 grid normalised separately by width and height (MedRegA),
predicted here as (cx, cy, w, h) in [0, 1] and converted to corners for the output.
Training: BCE on presence for every slot of a case with an image, L1 + generalised IoU on
the boxes of the slots that hold a finding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medfuse.model.config import DEFAULT_FINDING_LABELS
from medfuse.model.encoders.pooling import AttentionPool
from medfuse.record.case import PatientCase

__all__ = ["DEFAULT_FINDING_LABELS", "SLOTS_PER_LABEL", "FindingHead", "decode_findings", "finding_targets",
           "finding_loss"]

SLOTS_PER_LABEL = 2  # image left half, image right half


def _slot(label_index: int, box: Sequence[float]) -> int:
    centre_x = (box[0] + box[2]) / 2.0
    return label_index * SLOTS_PER_LABEL + (0 if centre_x < 500 else 1)


def finding_targets(case: PatientCase, labels: Sequence[str] = DEFAULT_FINDING_LABELS) -> tuple[np.ndarray, np.ndarray]:
    """(presence (Q,), boxes (Q, 4) as cx, cy, w, h in [0, 1]) from the case's ground truth.

    Q = len(labels) * SLOTS_PER_LABEL. Only findings on the first image count (the one the
    model sees, `pick_cxr` takes the first frontal view); two boxes of one label on the same
    side are merged into their union (rare: the synthetic edema has one box per lung).
    """
    q = len(labels) * SLOTS_PER_LABEL
    presence = np.zeros(q, dtype=np.float32)
    corners = np.zeros((q, 4), dtype=np.float32)
    index = {name: i for i, name in enumerate(labels)}
    findings = case.labels.findings if case.labels is not None else []
    for f in findings:
        if f.image_index != 0 or f.label not in index:
            continue
        for box in f.boxes:
            s = _slot(index[f.label], box)
            b = np.asarray(box, dtype=np.float32) / 999.0
            if presence[s]:
                b = np.array([min(corners[s, 0], b[0]), min(corners[s, 1], b[1]),
                              max(corners[s, 2], b[2]), max(corners[s, 3], b[3])], dtype=np.float32)
            corners[s], presence[s] = b, 1.0
    boxes = np.stack([(corners[:, 0] + corners[:, 2]) / 2, (corners[:, 1] + corners[:, 3]) / 2,
                      corners[:, 2] - corners[:, 0], corners[:, 3] - corners[:, 1]], axis=1)
    return presence, boxes.astype(np.float32)


class FindingHead(nn.Module):
    """(B, n, d) patch tokens -> presence logits (B, Q) and boxes (B, Q, 4) as cx, cy, w, h in [0, 1]."""

    def __init__(self, d_model: int, n_heads: int, n_labels: int, dropout: float = 0.0):
        super().__init__()
        self.n_queries = n_labels * SLOTS_PER_LABEL
        self.read = AttentionPool(d_model, self.n_queries, n_heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.Linear(d_model, 5))

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.read(patches)  # (B, Q, d)
        out = self.mlp(q)  # (B, Q, 5)
        return out[..., 0], torch.sigmoid(out[..., 1:])  # (B, Q), (B, Q, 4)


def _corners(b: torch.Tensor) -> torch.Tensor:
    """(..., 4) cx, cy, w, h -> x1, y1, x2, y2."""
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def _giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of matching rows of (n, 4) corner boxes -> (n,)."""
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=1e-7)
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0).prod(1)
    return iou - (hull - union) / hull.clamp(min=1e-7)


def finding_loss(logits: torch.Tensor, boxes: torch.Tensor, target_presence: torch.Tensor,
                 target_boxes: torch.Tensor, has_image: torch.Tensor) -> torch.Tensor:
    """BCE on presence over cases with an image + (L1 + 1 - GIoU) on the slots holding a finding.

    logits (B, Q), boxes (B, Q, 4), target_presence (B, Q), target_boxes (B, Q, 4), has_image (B,) bool.
    """
    rows = has_image.bool()
    if not rows.any():
        return logits.sum() * 0
    presence = F.binary_cross_entropy_with_logits(logits[rows], target_presence[rows])
    on = target_presence.bool() & rows[:, None]  # (B, Q)
    if not on.any():
        return presence
    pred, gold = boxes[on], target_boxes[on]  # (n, 4)
    l1 = (pred - gold).abs().sum(1).mean()
    giou = (1 - _giou(_corners(pred), _corners(gold))).mean()
    return presence + l1 + giou


def decode_findings(probabilities: np.ndarray, boxes: np.ndarray, labels: Sequence[str] = DEFAULT_FINDING_LABELS,
                    threshold: float = 0.5) -> list[tuple[str, list[int]]]:
    """One case's slots -> [(label, [x1, y1, x2, y2] on the 0-999 grid)] for slots above threshold.

    probabilities (Q,), boxes (Q, 4) cx, cy, w, h in [0, 1]. "nodule" and "mass" are one
    lesion seen at two sizes: when both fire on the same side, only the likelier is kept.
    """
    out: list[tuple[str, list[int], float]] = []
    for s, p in enumerate(probabilities):
        if p < threshold:
            continue
        cx, cy, w, h = (float(v) for v in boxes[s])
        grid = [int(round(np.clip(v, 0.0, 1.0) * 999)) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)]
        if grid[2] <= grid[0] or grid[3] <= grid[1]:
            continue
        out.append((labels[s // SLOTS_PER_LABEL], grid, float(p)))
    lesion = {"nodule", "mass"}
    kept: list[tuple[str, list[int]]] = []
    for label, grid, p in out:
        if label in lesion:
            side = grid[0] + grid[2] < 999
            rivals = [q for lab, g, q in out if lab in lesion and lab != label and (g[0] + g[2] < 999) == side]
            if rivals and max(rivals) > p:
                continue
        kept.append((label, grid))
    return kept
