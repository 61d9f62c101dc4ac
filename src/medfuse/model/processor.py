"""The processor: prompt text -> token ids with each modality placeholder expanded (as transformers' LLaVA).

A prompt marks where a modality's fused tokens go with one placeholder token (`<ecg>`,
`<cxr>`, ...). The processor tokenises it and replaces each placeholder by as many
copies of its id as that modality has present fused tokens for the case (a missing
modality's placeholder vanishes instead of feeding zeros), and says which fused token
goes at each expanded position. The language model then only embeds the ids and splices
the projected fused tokens into those positions (`MedfuseLM`); a decoder that is not
transformers (llama.cpp) reads the same ids and positions.

    processor = MedfuseProcessor(tokenizer, placeholder_ids)
    (row,) = processor(["ECG: <ecg>\\nWhich diseases?"], fused)
    row.input_ids, row.fused_index                  # [(position, index along N), ...]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medfuse.model.backbone import MODALITY_PLACEHOLDERS

__all__ = ["MedfuseProcessor", "ProcessedPrompt"]


@dataclass
class ProcessedPrompt:
    """One prompt's ids with placeholders expanded, and where the fused tokens go."""

    input_ids: list[int]
    fused_index: list[tuple[int, int]] = field(default_factory=list)  # (position in input_ids, index along N)


class MedfuseProcessor:
    """Tokenises prompts and expands placeholders into one position per present fused token.

    `placeholder_ids` maps each placeholder token to its id (`add_placeholder_tokens`);
    `add_special_tokens` is False for chat-formatted prompts (the template holds BOS).
    """

    def __init__(self, tokenizer: Any, placeholder_ids: Mapping[str, int], add_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.placeholder_ids = dict(placeholder_ids)
        self._id_to_placeholder = {i: tok for tok, i in self.placeholder_ids.items()}
        self.add_special_tokens = add_special_tokens

    @staticmethod
    def modality_slice(placeholder: str, modality_slices: Mapping[str, slice]) -> slice:
        """The positions along N of a placeholder's fused tokens (`<clue>` takes "clues" or "clue")."""
        key = MODALITY_PLACEHOLDERS[placeholder]
        if key in modality_slices:
            return modality_slices[key]
        if key == "clues" and "clue" in modality_slices:
            return modality_slices["clue"]
        raise ValueError(f"prompt has {placeholder} but the fused tokens have no '{key}' slice ({sorted(modality_slices)})")

    def __call__(self, prompts: Sequence[str], fused: Any | None = None) -> list[ProcessedPrompt]:
        """One `ProcessedPrompt` per prompt; row b uses `fused.token_mask[b]` (B, N)."""
        if fused is not None and fused.tokens.shape[0] != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but fused tokens for {fused.tokens.shape[0]} cases")
        mask = fused.token_mask.bool().cpu() if fused is not None else None  # (B, N)
        out: list[ProcessedPrompt] = []
        for b, prompt in enumerate(prompts):
            ids = self.tokenizer(prompt, add_special_tokens=self.add_special_tokens)["input_ids"]
            row = ProcessedPrompt(input_ids=[])
            for token_id in ids:
                placeholder = self._id_to_placeholder.get(token_id)
                if placeholder is None:
                    row.input_ids.append(token_id)
                    continue
                if fused is None:
                    raise ValueError(f"prompt has {placeholder} but no fused tokens were given")
                positions = self.modality_slice(placeholder, fused.modality_slices)
                for n in range(positions.start or 0, positions.stop, positions.step or 1):
                    if bool(mask[b, n]):
                        row.fused_index.append((len(row.input_ids), n))
                        row.input_ids.append(token_id)
            out.append(row)
        return out
