"""`FusionModel`: modality tokens -> fused token sequence, modality weights, disease logits.

The layers every strategy shares live here (modality type embedding, auxiliary heads,
clue tokens) with the loss; the strategy named by `ModelConfig.fusion` (see
`medfuse.model.fusion.registry`) adds and runs its own.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from medfuse.knowledge.panel import Panel
from medfuse.model.clues import AuxiliaryHeads, ClueTokens
from medfuse.model.config import ModelConfig
from medfuse.model.fusion.base import FusionInput, FusionOutput, ModalityTokens
from medfuse.model.fusion.registry import fusion_strategy
from medfuse.record.case import MODALITIES


@contextmanager
def _seeded(seed: int):
    # Deterministic initialisation without touching the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class FusionModel(nn.Module):
    """Encoders + fusion strategy + disease clues + disease head (logits).

    The strategy (`ModelConfig.fusion`, a `FusionStrategy`) decides the modality tokens,
    the fusion layers, the modality weights and any loss term of its own; the rest is shared.

    `n_labs` is the number of lab-catalogue keys (L in `labs` (B, L, 2)); `n_genes` the
    genomics vocabulary size (G in `genomics` (B, G)).
    """

    def __init__(self, config: ModelConfig, panel: Panel, n_labs: int, n_genes: int):
        super().__init__()
        self.config = config
        # The strategy is code only: it registers its layers on this model (see fusion.base).
        self.strategy = fusion_strategy(config.fusion)
        self.disease_keys = list(panel.keys)
        self.modalities = MODALITIES
        d, D, M = config.d_model, len(panel), len(MODALITIES)
        self.n_diseases = D
        k = config.tokens
        offsets, start = {}, 0
        for m in MODALITIES:
            offsets[m] = slice(start, start + k[m])
            start += k[m]
        self.modality_slices: dict[str, slice] = dict(offsets)
        self.n_modality_tokens = start
        if config.use_clues:
            self.modality_slices["clue"] = slice(start, start + D)
        self.register_buffer("token_modality",
                             torch.cat([torch.full((k[m],), i, dtype=torch.long) for i, m in enumerate(MODALITIES)]),
                             persistent=False)  # (N_mod,)

        with _seeded(config.seed):  # creation order fixes the initialisation of a seed: keep it
            self.strategy.build_modality_layers(self, n_labs, n_genes)
            self.type_embed = nn.Parameter(torch.randn(M, d) * 0.02)  # (M, d) which modality a token is from
            self.aux_heads = AuxiliaryHeads(MODALITIES, d, D)
            self.clues = ClueTokens(M, D, d) if config.use_clues else None
            self.strategy.build_fusion_layers(self)

    # ------------------------------------------------------------------ modality tokens
    def modality_tokens(self, batch: dict[str, torch.Tensor]
                        ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """modality -> (B, k_m, d) tokens (exactly 0 where missing), and early fusion's raw vectors."""
        encoded = self._encode(batch)
        return encoded.tokens, encoded.raw

    def _encode(self, batch: dict[str, torch.Tensor]) -> ModalityTokens:
        """The strategy's modality tokens, type-embedded, exactly 0 where the modality is missing."""
        encoded = self.strategy.modality_tokens(self, batch)
        present = batch["present"]  # (B, M)
        for i, m in enumerate(MODALITIES):
            rows = present[:, i, None, None]  # (B, 1, 1)
            t = encoded.tokens[m]
            encoded.tokens[m] = torch.where(rows, t + self.type_embed[i], torch.zeros_like(t))
        return encoded

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict[str, torch.Tensor]) -> FusionOutput:
        """Fuse a collated batch (see `medfuse.model.inputs`) into a `FusionOutput`."""
        present = batch["present"].bool()  # (B, M)
        B = present.shape[0]
        encoded = self._encode(batch)
        tokens = encoded.tokens
        aux = self.aux_heads(tokens)  # modality -> (B, D)
        aux_stack = torch.stack([aux[m] for m in MODALITIES], dim=1)  # (B, M, D)
        seq = torch.cat([tokens[m] for m in MODALITIES], dim=1)  # (B, N_mod, d)
        token_present = present[:, self.token_modality]  # (B, N_mod)

        clue_tokens = self.clues(aux_stack, present) if self.clues is not None else None  # (B, D, d)
        summaries = torch.stack([tokens[m].mean(1) for m in MODALITIES], dim=1)  # (B, M, d), 0 where missing
        fused = self.strategy.fuse(self, FusionInput(tokens=seq, summaries=summaries, present=present, raw=encoded.raw))
        # (B, d_head), (B, D)
        pooled, disease_logits = self.strategy.disease_logits(self, fused, clue_tokens, aux_stack)

        seq, token_mask = fused.tokens, token_present
        if clue_tokens is not None:
            seq = torch.cat([seq, clue_tokens], dim=1)  # (B, N_mod + D, d)
            any_present = present.any(1, keepdim=True).expand(B, clue_tokens.shape[1])  # (B, D)
            token_mask = torch.cat([token_present, any_present], dim=1)
        return FusionOutput(tokens=seq, token_mask=token_mask, modality_slices=dict(self.modality_slices),
                            gates=fused.gates, disease_logits=disease_logits, aux_logits=aux, pooled=pooled,
                            finding_logits=encoded.finding_logits, finding_boxes=encoded.finding_boxes,
                            cxr_summary=summaries[:, MODALITIES.index("cxr")],
                            ecg_summary=summaries[:, MODALITIES.index("ecg")])

    # ------------------------------------------------------------------ loss
    def loss(self, batch: dict[str, torch.Tensor], out: FusionOutput) -> torch.Tensor:
        """BCE on the disease logits + aux_loss_weight * mean BCE of the present modalities' aux heads
        + the strategy's own term, if any (hybrid: gate_balance * mean KL(gates || uniform over the
        present modalities))."""
        if "labels" not in batch:
            raise ValueError("the batch has no labels: the loss needs labelled cases")
        y = batch["labels"].to(out.disease_logits.dtype)  # (B, D)
        main = F.binary_cross_entropy_with_logits(out.disease_logits, y)
        present = batch["present"].to(y.dtype)  # (B, M)
        per_modality = torch.stack(
            [F.binary_cross_entropy_with_logits(out.aux_logits[m], y, reduction="none").mean(1) for m in MODALITIES],
            dim=1,
        )  # (B, M)
        aux = (per_modality * present).sum() / present.sum().clamp(min=1)
        total = main + self.config.aux_loss_weight * aux
        extra = self.strategy.extra_loss(self, batch, out)
        return total if extra is None else total + extra

    def trainable_parts(self, stage: str) -> list[nn.Module | nn.Parameter]:
        """The parts of the fusion model that train in `stage`.

        encoders: everything. sft (with `train_fusion`): what sits above the encoders (the
        strategy's fusion layer, clue tokens, disease head, auxiliary heads, modality type
        embedding); the encoders stay frozen. align and grpo: nothing.
        """
        if stage == "encoders":
            return [self]
        if stage != "sft":
            return []
        parts: list[nn.Module | nn.Parameter] = [self.aux_heads, self.type_embed]
        if self.clues is not None:
            parts.append(self.clues)
        return parts + self.strategy.fusion_layers(self)

    def n_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (all, or only those requiring gradients)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def tokens_per_case(config: ModelConfig, n_diseases: int) -> int:
    """Length N of the fused sequence: sum of per-modality tokens (+ one clue token per disease)."""
    return sum(config.tokens[m] for m in MODALITIES) + (n_diseases if config.use_clues else 0)
