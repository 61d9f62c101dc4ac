"""The fused model: encoders, modality perception layer, fusion strategies, disease clues,
LLM with LoRA, calibrated disease head, the assembled `MedFuse` and `diagnose`.

Imports are lazy (PEP 562): `import medfuse.model` costs nothing until a name is used, so
the CLI and the eval harness can probe for `load_for_eval` without loading torch models.

    from medfuse.model import MedFuse, diagnose
    model = MedFuse.load("checkpoints/medfuse-v1")
    result = diagnose(model, case)             # DiagnoseResult (pydantic), .model_dump_json()
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "MedFuse": "medfuse.model.medfuse",
    "FusedBatch": "medfuse.model.medfuse",
    "CHECKPOINT_FILES": "medfuse.model.medfuse",
    "DiagnoseResult": "medfuse.model.diagnose",
    "diagnose": "medfuse.model.diagnose",
    "diagnose_many": "medfuse.model.diagnose",
    "check_reasoning": "medfuse.model.faithfulness",
    "load_for_eval": "medfuse.model.eval_adapter",
    "ModelConfig": "medfuse.model.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medfuse.model' has no attribute {name!r}")
    return getattr(import_module(module), name)
