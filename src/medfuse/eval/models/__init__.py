"""Model adapters behind one interface, chosen by a `--model` spec.

- ``hf:PATH``: a local Hugging Face folder (causal LM, or vision-language when its config
  has a `vision_config`);
- ``openai:BASE_URL``: an OpenAI-compatible endpoint (``--model-name``, key from
  ``OPENAI_API_KEY``);
- ``medfuse:PATH``: a medfuse checkpoint (needs `medfuse.model`).
Constructing an adapter loads weights or contacts the endpoint, so the harness builds it
only when some output is not cached yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Unpack

from medfuse.errors import MedfuseError
from medfuse.eval.models.base import GeneratedText, GenerationError, ModelAdapter

if TYPE_CHECKING:
    from medfuse.eval.models.openai_compat import EndpointOptions

__all__ = ["GeneratedText", "GenerationError", "ModelAdapter", "create_model", "split_model_spec"]

SCHEMES = ("hf", "openai", "medfuse")


def split_model_spec(spec: str) -> tuple[str, str]:
    """``"hf:/models/x"`` -> ``("hf", "/models/x")``; raises MedfuseError for an unknown scheme."""
    scheme, sep, target = spec.partition(":")
    if not sep or scheme not in SCHEMES or not target:
        raise MedfuseError(f"--model '{spec}': use hf:PATH, openai:BASE_URL or medfuse:PATH")
    return scheme, target


def model_cache_id(spec: str, model_name: str | None = None, timeout_s: float = 30.0) -> str:
    """The id under which a spec's outputs are cached, computed without loading the model,
    so that a fully cached rerun never loads weights or sends a request.

    It equals the `model_id` of the adapter `create_model` builds for the same spec.
    """
    from pathlib import Path

    from medfuse.errors import InputError
    from medfuse.eval.models.hf import folder_fingerprint

    scheme, target = split_model_spec(spec)
    if scheme == "openai":
        from medfuse.eval.models.openai_compat import OpenAICompatibleModel

        if model_name is None:  # ask the endpoint which model it serves
            return OpenAICompatibleModel(target, model_name=None, timeout_s=timeout_s).model_id
        return f"openai:{target.rstrip('/')}#{model_name}"
    folder = Path(target).expanduser()
    if not folder.is_dir():
        raise InputError(folder, "no such model folder")
    return f"{scheme}:{folder.resolve()}@{folder_fingerprint(folder)}"


def create_model(
    spec: str, model_name: str | None = None, batch_size: int = 4, **endpoint: Unpack[EndpointOptions]
) -> ModelAdapter:
    """The adapter for a `--model` spec (loads the model / checks the endpoint now).

    `batch_size` applies to ``hf:`` models, `endpoint` (concurrency, timeout_s,
    max_retries, backoff_s) to ``openai:`` endpoints; each is ignored by the other schemes.
    """
    scheme, target = split_model_spec(spec)
    if scheme == "openai":
        from medfuse.eval.models.openai_compat import OpenAICompatibleModel

        return OpenAICompatibleModel(target, model_name=model_name, **endpoint)
    if scheme == "hf":
        from medfuse.eval.models.hf import HFModel

        return HFModel(target, batch_size=batch_size)
    from medfuse.eval.models.medfuse_checkpoint import MedfuseCheckpointModel

    return MedfuseCheckpointModel(target)
