"""The fused model: encoders, modality perception layer, fusion strategies, disease clues,
LLM with LoRA, calibrated disease head, the assembled `MedFuse` and `diagnose`.

Imports are lazy (PEP 562): `import medfuse.model` costs nothing until a name is used, so
the CLI and the eval kit can import it without loading torch models.

    from medfuse.model import MedFuse, diagnose
    model = MedFuse.load("checkpoints/medfuse-v1")
    result = diagnose(model, case)             # DiagnoseResult (pydantic), .model_dump_json()
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "MedFuse": "medfuse.model.assembly",
    "FusedBatch": "medfuse.model.assembly",
    "CHECKPOINT_FILES": "medfuse.model.checkpoint",
    "DiagnoseResult": "medfuse.model.diagnosis",
    "diagnose": "medfuse.model.diagnosis",
    "diagnose_many": "medfuse.model.diagnosis",
    "check_reasoning": "medfuse.model.faithfulness",
    "check_consistency": "medfuse.model.faithfulness",
    "ReasoningConstraint": "medfuse.model.constrained",
    "HFReasoningProcessor": "medfuse.model.constrained",
    "MedfuseProcessor": "medfuse.model.processor",
    "reasoning_constraints": "medfuse.model.diagnosis",
    "ModelConfig": "medfuse.model.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medfuse.model' has no attribute {name!r}")
    return getattr(import_module(module), name)
