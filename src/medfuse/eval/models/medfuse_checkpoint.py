"""`medfuse:PATH`: a medfuse checkpoint folder (adapter + encoders + head, issue 4).

The checkpoint format and its loader belong to `medfuse.model`. This adapter calls
`medfuse.model.load_for_eval(path)`, which must return an object with
`generate(prompts) -> list[str]` (outputs may be `GeneratedText` carrying the disease
head's probabilities). Until that package provides it, asking for a medfuse checkpoint is
a clear error, never a stand-in model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medfuse.errors import InputError, MedfuseError
from medfuse.eval.models.base import ModelAdapter
from medfuse.eval.prompts import Prompt


class MedfuseCheckpointModel(ModelAdapter):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(self.path, "no such checkpoint folder")
        try:
            import medfuse.model as model_package
        except ImportError:
            model_package = None
        loader = getattr(model_package, "load_for_eval", None)
        if loader is None:
            raise MedfuseError(
                f"medfuse:{self.path}: medfuse checkpoints need the medfuse model package "
                "(medfuse.model.load_for_eval), which this installation does not provide yet; "
                "evaluate an exported Hugging Face folder with --model hf:PATH instead"
            )
        self._model = loader(self.path)
        from medfuse.eval.models.hf import folder_fingerprint

        # The cache key is computed from the folder (see `model_cache_id`), not by the model.
        self.model_id = f"medfuse:{self.path.resolve()}@{folder_fingerprint(self.path)}"
        self.accepts_images = bool(getattr(self._model, "accepts_images", True))

    def generate(self, prompts: Sequence[Prompt]) -> list[str]:
        return list(self._model.generate(list(prompts)))
