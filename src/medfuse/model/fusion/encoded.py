"""Modality tokens from the modality encoders: the token source of `feature`, `late` and `hybrid`.

Each encoder runs only on the cases where its modality is present; the rows of the other
cases are exactly zero, so garbage in a missing modality's input cannot reach any output.
The image encoder's patch tokens also feed the finding head.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from medfuse.model.encoders import CXREncoder, ECGEncoder, GenomicsEncoder, NotesEncoder, TabularEncoder
from medfuse.model.findings import FindingHead
from medfuse.model.fusion.base import FusionStrategy, ModalityTokens
from medfuse.model.inputs import NOTES_DIM
from medfuse.record.case import MODALITIES, VITAL_FIELDS


def _run_present(fn: Callable[..., torch.Tensor], rows: torch.Tensor, out_shape: tuple[int, ...],
                 *inputs: torch.Tensor) -> torch.Tensor:
    """fn(*inputs[rows]) scattered into zeros of `out_shape`: encoders only see present cases."""
    out = inputs[0].new_zeros(out_shape)
    idx = rows.nonzero(as_tuple=True)[0]
    if idx.numel():
        out = out.index_copy(0, idx, fn(*(x.index_select(0, idx) for x in inputs)))
    return out


class EncodedFusion(FusionStrategy):
    """A strategy whose modality tokens come from the modality encoders (`model.encoders`)."""

    def build_modality_layers(self, model: nn.Module, n_labs: int, n_genes: int) -> None:
        config = model.config
        d, k, h, drop = config.d_model, config.tokens, config.n_heads, config.dropout
        model.encoders = nn.ModuleDict({
            "ecg": ECGEncoder(d, k["ecg"], h, config.ecg_channels, drop),
            "cxr": CXREncoder(d, k["cxr"], h, config.cxr_size, config.cxr_vit, config.cxr_vision_model, drop),
            "labs": TabularEncoder(n_labs, d, k["labs"], h, drop),
            "vitals": TabularEncoder(len(VITAL_FIELDS), d, k["vitals"], h, drop),
            "notes": NotesEncoder(NOTES_DIM, d, k["notes"], drop),
            "genomics": GenomicsEncoder(n_genes, d, k["genomics"], h, drop),
        })
        model.finding_head = FindingHead(d, h, len(config.finding_labels), drop)

    def modality_tokens(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> ModalityTokens:
        present = batch["present"]  # (B, M)
        B, d, k = present.shape[0], model.config.d_model, model.config.tokens
        enc = model.encoders
        inputs = {
            "ecg": (batch["ecg"], batch["ecg_lead_mask"]),
            "labs": (batch["labs"],),
            "vitals": (batch["vitals"],),
            "notes": (batch["notes_emb"],),
            "genomics": (batch["genomics"],),
        }
        tokens = {m: _run_present(enc[m], present[:, i], (B, k[m], d), *inputs[m])  # (B, k_m, d)
                  for i, m in enumerate(MODALITIES) if m != "cxr"}
        tokens["cxr"], logits, boxes = self._cxr_tokens(model, batch["cxr"], present[:, MODALITIES.index("cxr")])
        return ModalityTokens(tokens=tokens, finding_logits=logits, finding_boxes=boxes)

    @staticmethod
    def _cxr_tokens(model: nn.Module, cxr: torch.Tensor,
                    rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, k, d) image tokens (0 where no image), finding logits (B, Q) and boxes (B, Q, 4)."""
        B, k, d = cxr.shape[0], model.config.tokens["cxr"], model.config.d_model
        q = model.finding_head.n_queries
        tokens = cxr.new_zeros(B, k, d)
        logits = cxr.new_full((B, q), -20.0)  # no image: no finding
        boxes = cxr.new_zeros(B, q, 4)
        idx = rows.nonzero(as_tuple=True)[0]
        if idx.numel():
            t, patches = model.encoders["cxr"](cxr.index_select(0, idx), return_patches=True)
            f_logits, f_boxes = model.finding_head(patches)
            tokens = tokens.index_copy(0, idx, t)
            logits = logits.index_copy(0, idx, f_logits)
            boxes = boxes.index_copy(0, idx, f_boxes)
        return tokens, logits, boxes
