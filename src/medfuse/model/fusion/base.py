"""The fusion-strategy interface: what every strategy (`early`, `feature`, `late`, `hybrid`) provides.

A strategy is code, not weights. `FusionModel` owns every layer; a strategy's `build_*`
hooks register the layers it needs as attributes of the model it is handed (`model.joint`,
`model.perception`, `model.vote`, ...) and its other methods read them from there. That
keeps the state-dict keys flat (`fusion.joint.0.weight`, not `fusion.strategy.joint.0.weight`),
the keys every saved checkpoint already uses, with no key remapping on save or load, and
keeps `model.fusion.perception` / `model.fusion.encoders` valid for the training code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn

from medfuse.model.config import ModelConfig


@dataclass
class FusionOutput:
    """What the fusion model hands to the language model, the head and the loss."""

    tokens: torch.Tensor  # (B, N, d) fused token sequence: modality tokens in MODALITIES order, then clue tokens
    token_mask: torch.Tensor  # (B, N) bool, True where a token carries data
    modality_slices: dict[str, slice]  # modality (and "clue") -> positions in `tokens`
    gates: torch.Tensor  # (B, 6) modality weights in MODALITIES order (see medfuse.model.fusion)
    disease_logits: torch.Tensor  # (B, D) over the panel
    aux_logits: dict[str, torch.Tensor] = field(default_factory=dict)  # modality -> (B, D)
    pooled: torch.Tensor | None = None  # (B, d_head) representation the disease head read
    finding_logits: torch.Tensor | None = None  # (B, Q) presence of each finding slot (medfuse.model.findings)
    finding_boxes: torch.Tensor | None = None  # (B, Q, 4) cx, cy, w, h in [0, 1]
    cxr_summary: torch.Tensor | None = None  # (B, d) mean CXR token (encoder pretraining reads it)
    ecg_summary: torch.Tensor | None = None  # (B, d) mean ECG token


@dataclass
class ModalityTokens:
    """A strategy's modality tokens for one batch, before the model adds the type embedding."""

    tokens: dict[str, torch.Tensor]  # modality -> (B, k_m, d); the model zeroes the rows of missing modalities
    raw: dict[str, torch.Tensor] | None = None  # early fusion: modality -> (B, F_m) raw vector, 0 where missing
    finding_logits: torch.Tensor | None = None  # (B, Q); None where the strategy has no finding head
    finding_boxes: torch.Tensor | None = None  # (B, Q, 4)


@dataclass
class FusionInput:
    """What a strategy fuses: the type-embedded modality tokens of a batch."""

    tokens: torch.Tensor  # (B, N_mod, d) modality tokens in MODALITIES order, 0 where missing
    summaries: torch.Tensor  # (B, M, d) mean token per modality, 0 where missing
    present: torch.Tensor  # (B, M) bool
    raw: dict[str, torch.Tensor] | None  # early fusion's raw vectors (ModalityTokens.raw)


@dataclass
class Fused:
    """A strategy's fused representation of a batch."""

    tokens: torch.Tensor  # (B, N_mod, d) modality tokens the language model reads
    gates: torch.Tensor  # (B, M) modality weights, sum 1 over present modalities, 0 for missing
    pooled: torch.Tensor  # (B, d) summary the disease head (or the vote) reads


def mlp(d_in: int, d_hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    """Linear -> GELU -> dropout -> linear."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out))


def disease_head(config: ModelConfig, n_diseases: int) -> nn.Sequential:
    """The disease head: LayerNorm + MLP from the pooled representation (+ the mean clue token) to logits."""
    d = config.d_model
    d_head = d + (d if config.use_clues else 0)
    return nn.Sequential(nn.LayerNorm(d_head), mlp(d_head, d, n_diseases, config.dropout))


class FusionStrategy(ABC):
    """One fusion strategy: the layers it adds to a `FusionModel` and how it fuses with them.

    `FusionModel.__init__` calls, under one seeded RNG and in this order,
    `build_modality_layers`, then creates the layers every strategy shares (modality type
    embedding, auxiliary heads, clue tokens), then `build_fusion_layers`; the order fixes
    the random initialisation of a seed, so a strategy must not change it.
    """

    @abstractmethod
    def build_modality_layers(self, model: nn.Module, n_labs: int, n_genes: int) -> None:
        """Register on `model` the layers that turn a batch into modality tokens."""

    @abstractmethod
    def modality_tokens(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> ModalityTokens:
        """Modality tokens of a collated batch (see `medfuse.model.inputs`)."""

    @abstractmethod
    def build_fusion_layers(self, model: nn.Module) -> None:
        """Register on `model` the layers that fuse the modality tokens (and the disease head, if any)."""

    @abstractmethod
    def fuse(self, model: nn.Module, inputs: FusionInput) -> Fused:
        """Fused tokens, modality weights and the pooled representation of a batch."""

    @abstractmethod
    def fusion_layers(self, model: nn.Module) -> list[nn.Module | nn.Parameter]:
        """This strategy's trainable layers above the encoders (they train in the sft stage)."""

    def disease_logits(self, model: nn.Module, fused: Fused, clue_tokens: torch.Tensor | None,
                       aux_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(representation the head read (B, d_head), disease logits (B, D)).

        The default reads `model.head` (see `disease_head`) over the pooled representation,
        with the mean clue token appended when there are clue tokens; `aux_logits` (B, M, D)
        are the per-modality heads' logits, for strategies that vote with them.
        """
        head_in = fused.pooled if clue_tokens is None else torch.cat([fused.pooled, clue_tokens.mean(1)], dim=1)
        return head_in, model.head(head_in)

    def extra_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], out: FusionOutput) -> torch.Tensor | None:
        """A loss term of this strategy's own, added to the disease and auxiliary losses; None when it has none."""
        return None
