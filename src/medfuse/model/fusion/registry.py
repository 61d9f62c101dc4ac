"""`ModelConfig.fusion` name -> fusion strategy."""

from __future__ import annotations

from medfuse.errors import ConfigError
from medfuse.model.fusion.base import FusionStrategy
from medfuse.model.fusion.early import EarlyFusion
from medfuse.model.fusion.feature import FeatureFusion
from medfuse.model.fusion.hybrid import HybridFusion
from medfuse.model.fusion.late import LateFusion

# Same names, same order as medfuse.model.config.FUSION_STRATEGIES (a test keeps them equal).
STRATEGIES: dict[str, type[FusionStrategy]] = {
    "early": EarlyFusion,
    "feature": FeatureFusion,
    "late": LateFusion,
    "hybrid": HybridFusion,
}


def fusion_strategy(name: str) -> FusionStrategy:
    """The strategy a `ModelConfig.fusion` value names."""
    if name not in STRATEGIES:
        raise ConfigError(f"fusion: must be one of {', '.join(STRATEGIES)}, got {name!r}")
    return STRATEGIES[name]()
