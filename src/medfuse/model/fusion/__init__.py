"""The fusion model: modality tokens -> fused token sequence, modality weights, disease logits.

One model, one code path, four strategies (`ModelConfig.fusion`), so they can be trained
and compared on the same benchmark. Each strategy is one `FusionStrategy` (`base`) in its
own module:

- `early` (`early`): concatenate RAW features into a joint MLP feeding the head.
- `feature` (`feature`): concatenate ENCODER outputs (mean token per modality) into a joint MLP.
- `late` (`late`): per-modality heads and a learned weighted vote over the present modalities.
- `hybrid` (`hybrid`): the modality perception layer (cross-modal attention + gates).

Modality weights (`FusionOutput.gates`, (B, 6), sum 1 over present modalities, 0 for
missing): `hybrid` the perception gates; `late` the vote weights; `early` and `feature`
have no gate, so they report a norm-based attribution of the joint MLP (`joint`).

Missing modalities: encoders run only on the cases where the modality is present; all
other rows are exactly zero and masked (`token_mask` False), so garbage in a missing
modality's input cannot change any output.
"""

from __future__ import annotations

from medfuse.model.fusion.base import FusionOutput, FusionStrategy
from medfuse.model.fusion.hybrid import gate_kl_to_uniform
from medfuse.model.fusion.model import FusionModel, tokens_per_case
from medfuse.model.fusion.registry import STRATEGIES, fusion_strategy

__all__ = ["STRATEGIES", "FusionModel", "FusionOutput", "FusionStrategy", "fusion_strategy", "gate_kl_to_uniform",
           "tokens_per_case"]
