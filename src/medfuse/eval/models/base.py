"""The one interface every model adapter implements.

`generate(prompts) -> list[str]` returns one output per prompt, in order. Adapters that
can stream results as they finish (an endpoint with many requests in flight, a local
model batch by batch) also implement `generate_iter`, which the harness uses to cache
each output the moment it arrives, so an interrupted run loses at most the requests
still in flight.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from medfuse.errors import MedfuseError
from medfuse.eval.prompts import Prompt


class GenerationError(MedfuseError):
    """One request failed for good (after retries); the item is recorded as an error."""


class GeneratedText(str):
    """A model output: a `str`, optionally carrying per-label probabilities.

    A model with a calibrated disease head (a medfuse checkpoint) returns its
    probabilities here, so diagnosis runs can report AUROC and calibration; text-only
    models return plain strings.
    """

    probabilities: dict[str, float] | None

    def __new__(cls, text: str, probabilities: dict[str, float] | None = None) -> GeneratedText:
        obj = super().__new__(cls, text)
        obj.probabilities = probabilities
        return obj


class ModelAdapter:
    """Base class. Subclasses set `model_id` and implement `generate` or `generate_iter`."""

    #: Identifies the model in the output cache and in reports; must change whenever the
    #: weights (or the endpoint's model) change, so that stale outputs are never reused.
    model_id: str = "model"
    #: Whether image paths in prompts reach the model (text-only models ignore them and
    #: the run summary counts the items whose images were ignored).
    accepts_images: bool = False

    def generate(self, prompts: Sequence[Prompt]) -> list[str]:
        """One output per prompt, in order; raises GenerationError if any request fails."""
        outputs: list[str | None] = [None] * len(prompts)
        for i, result in self.generate_iter(prompts):
            if isinstance(result, Exception):
                raise result
            outputs[i] = result
        return [o if o is not None else "" for o in outputs]

    def generate_iter(self, prompts: Sequence[Prompt]) -> Iterator[tuple[int, str | GenerationError]]:
        """Yield (index, output or GenerationError) as results become available."""
        for i, text in enumerate(self.generate(prompts)):
            yield i, text

    def close(self) -> None:
        """Release resources (threads, GPU memory)."""
