"""The fused language model: a causal LM that reads fused modality tokens, with LoRA.

`MedfuseLM` wraps any causal LM with a projector from the fusion model's `d_model` into
the LLM's embedding space. A prompt names where each modality's fused tokens go with a
placeholder token (`<ecg>`, `<cxr>`, `<labs>`, `<vitals>`, `<notes>`, `<genomics>`,
`<clue>`). As in transformers' LLaVA, the processor (`medfuse.model.processor`) tokenises
the prompt and expands each placeholder into one position per present fused token; the
LM only embeds the ids and splices the projected fused tokens into those positions, so
the LLM attends to them like ordinary input positions. Backbone loading and the GGUF
cache are `medfuse.model.backbone` (its names are re-exported here).

    lm = MedfuseLM.from_pretrained("smollm2-135m", d_model=256)
    prompt = chat_prompt(lm.tokenizer, "ECG: <ecg>\\nLabs: <labs>\\nWhich diseases?")
    texts = lm.generate([prompt], fused)          # fused = FusionModel(...)(batch)
"""

from __future__ import annotations

import importlib.util  # noqa: F401 - tests reach `importlib.util` through this module
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from medfuse.errors import InputError
from medfuse.model.backbone import (
    DEFAULT_LLM,
    MODALITY_PLACEHOLDERS,
    PLACEHOLDER_TOKENS,
    SMOLLM2_GGUF,
    SMOLLM2_PACKAGE,
    add_placeholder_tokens,
    build_offline_tokenizer,
    build_tiny_llm,
    chat_prompt,
    convert_gguf,
    load_llm,
    medfuse_cache_dir,
    resolve_llm,
    smollm2_gguf_path,
)
from medfuse.model.processor import MedfuseProcessor

__all__ = [
    "DEFAULT_LLM",
    "MODALITY_PLACEHOLDERS",
    "PLACEHOLDER_TOKENS",
    "SMOLLM2_GGUF",
    "SMOLLM2_PACKAGE",
    "FusedTokens",
    "FusedTokensLike",
    "MedfuseLM",
    "add_placeholder_tokens",
    "build_offline_tokenizer",
    "build_tiny_llm",
    "chat_prompt",
    "convert_gguf",
    "load_llm",
    "medfuse_cache_dir",
    "resolve_llm",
    "smollm2_gguf_path",
]

_IGNORE = -100  # label value ignored by the causal-LM cross-entropy


# --------------------------------------------------------------------------- fused tokens -> LLM


class FusedTokensLike(Protocol):
    """What `MedfuseLM` needs from the fusion model's output (`FusionOutput` satisfies it)."""

    tokens: torch.Tensor  # (B, N, d_model)
    token_mask: torch.Tensor  # (B, N) bool, True = a real token (its modality is present)
    modality_slices: Mapping[str, slice]  # modality -> its positions along N


@dataclass
class FusedTokens:
    """A plain container with the `FusedTokensLike` fields, for callers without a FusionModel."""

    tokens: torch.Tensor  # (B, N, d_model)
    token_mask: torch.Tensor  # (B, N) bool
    modality_slices: dict[str, slice]


class MedfuseLM(nn.Module):
    """A causal LM that reads fused modality tokens at placeholder positions.

    `projector` (MLP, LLaVA-1.5 style `d_model -> hidden -> hidden` with GELU) maps each fused
    token into the LLM's embedding space. Prompts are batched with LEFT padding (generation
    continues from the right end); position ids follow the attention mask, so a padded
    sample gets the same positions as when run alone.
    """

    def __init__(self, lm: nn.Module, tokenizer, d_model: int, *, name: str | None = None):
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.name = name or getattr(getattr(lm, "config", None), "name_or_path", "") or "custom"
        self.d_model = d_model
        hidden = self.hidden_size
        self.projector = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.placeholder_ids: dict[str, int] = add_placeholder_tokens(self.lm, tokenizer)
        # Prompts are expected to be chat-formatted already (the template holds BOS/role
        # tokens), so no second BOS is added; plain LMs without a template get theirs.
        self.processor = MedfuseProcessor(tokenizer, self.placeholder_ids,
                                          add_special_tokens=not getattr(tokenizer, "chat_template", None))

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path = DEFAULT_LLM, d_model: int = 256, dtype: torch.dtype = torch.float32
    ) -> MedfuseLM:
        """Load a backbone with `load_llm` and attach a fresh projector from `d_model`."""
        lm, tokenizer = load_llm(name_or_path, dtype=dtype)
        return cls(lm, tokenizer, d_model, name=str(name_or_path))

    @classmethod
    def tiny(cls, d_model: int = 32, *, seed: int = 0, tokenizer=None) -> MedfuseLM:
        """A tiny random backbone (2 layers, hidden 64) for tests; see `build_tiny_llm`."""
        lm, tokenizer = build_tiny_llm(tokenizer, seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(lm, tokenizer, d_model, name="tiny-llama")

    # ------------------------------------------------------------------ properties

    @property
    def hidden_size(self) -> int:
        return int(self.lm.get_input_embeddings().weight.shape[1])

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    @property
    def embed_dtype(self) -> torch.dtype:
        return self.lm.get_input_embeddings().weight.dtype

    # ------------------------------------------------------------------ inputs

    def _prompt_embeddings(self, prompts: Sequence[str], fused: FusedTokensLike | None,
                           projected: torch.Tensor | None) -> list[torch.Tensor]:
        """Per prompt, (t, H): the processor's ids embedded, projected fused tokens spliced in."""
        embed = self.lm.get_input_embeddings()
        rows = []
        for b, row in enumerate(self.processor(prompts, fused)):
            if not row.input_ids:
                rows.append(torch.zeros(0, self.hidden_size, dtype=self.embed_dtype, device=self.device))
                continue
            x = embed(torch.tensor(row.input_ids, device=self.device))  # (t, H)
            if row.fused_index:
                assert projected is not None
                at = torch.tensor([p for p, _ in row.fused_index], device=self.device)
                which = torch.tensor([n for _, n in row.fused_index], device=self.device)
                x = x.index_put((at,), projected[b, which].to(x.dtype))
            rows.append(x)
        return rows

    def _assemble(
        self, prompts: Sequence[str], fused: FusedTokensLike | None, targets: Sequence[str | Sequence[int]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Left-padded `(inputs_embeds (B, T, H), attention_mask (B, T), labels (B, T) | None)`.

        A target is a text (tokenised, EOS appended: the model learns to stop) or a list of
        token ids taken as they are (sampled completions keep their own ids and ending).
        """
        batch = len(prompts)
        if targets is not None and len(targets) != batch:
            raise ValueError(f"{batch} prompts but {len(targets)} targets")
        projected = None
        if fused is not None:
            projected = self.projector(fused.tokens.to(self.device, self.projector[0].weight.dtype))  # (B, N, H)
            projected = projected.to(self.embed_dtype)
        embed = self.lm.get_input_embeddings()
        rows: list[torch.Tensor] = []
        row_labels: list[torch.Tensor] = []
        for b, prompt_row in enumerate(self._prompt_embeddings(prompts, fused, projected)):
            pieces = [prompt_row] if prompt_row.shape[0] else []
            prompt_len = prompt_row.shape[0]
            labels = torch.full((prompt_len,), _IGNORE, dtype=torch.long, device=self.device)
            if targets is not None:
                if isinstance(targets[b], str):
                    # The answer is supervised up to and including EOS, so the model learns to stop.
                    target_ids = self.tokenizer(targets[b], add_special_tokens=False)["input_ids"]
                    target_ids = target_ids + [self.tokenizer.eos_token_id]
                else:
                    target_ids = [int(t) for t in targets[b]]
                target = torch.tensor(target_ids, dtype=torch.long, device=self.device)
                pieces.append(embed(target))  # (t, H)
                labels = torch.cat([labels, target])
            rows.append(torch.cat(pieces) if pieces else torch.zeros(0, self.hidden_size, device=self.device))
            row_labels.append(labels)

        length = max(r.shape[0] for r in rows)
        if length == 0:
            raise ValueError("empty prompts")
        inputs_embeds = torch.zeros(batch, length, self.hidden_size, dtype=self.embed_dtype, device=self.device)
        attention_mask = torch.zeros(batch, length, dtype=torch.long, device=self.device)
        labels_out = torch.full((batch, length), _IGNORE, dtype=torch.long, device=self.device)
        for b, (row, lab) in enumerate(zip(rows, row_labels)):
            n = row.shape[0]
            if n:
                inputs_embeds[b, length - n :] = row
                attention_mask[b, length - n :] = 1
                labels_out[b, length - n :] = lab
        return inputs_embeds, attention_mask, (labels_out if targets is not None else None)

    def build_inputs(
        self, prompts: Sequence[str], fused: FusedTokensLike | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(inputs_embeds (B, T, H), attention_mask (B, T))` for a batch of prompts.

        Each placeholder in prompt b becomes the projected fused tokens of that modality for
        case b: `<ecg>` expands to the k positions of `fused.modality_slices["ecg"]` (only
        the tokens with `fused.token_mask` True, so a missing modality's placeholder
        vanishes instead of feeding zeros). Text runs use the LLM's own embeddings. Rows
        are left-padded with zero vectors masked out by `attention_mask`.
        """
        inputs_embeds, attention_mask, _ = self._assemble(prompts, fused)
        return inputs_embeds, attention_mask

    # ------------------------------------------------------------------ forward / generate

    def forward(
        self,
        prompts: Sequence[str],
        fused: FusedTokensLike | None = None,
        labels: Sequence[str] | None = None,
    ):
        """Run the LLM on prompts + fused tokens; with `labels` (target answer texts), the SFT loss.

        The loss is the causal-LM cross-entropy on the target tokens (+ EOS) only; prompt,
        fused-token and padding positions are ignored. Returns the transformers output
        (`.loss` when labels are given, `.logits` (B, T, V)).
        """
        inputs_embeds, attention_mask, label_ids = self._assemble(prompts, fused, labels)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
        return self.lm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=label_ids,
        )

    def completion_logps(
        self,
        prompts: Sequence[str],
        fused: FusedTokensLike | None,
        completions: Sequence[str | Sequence[int]],
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probabilities of `completions` after `prompts` (+ fused tokens).

        Returns `(logps (B, C), mask (B, C))`, right-aligned: C is the longest completion
        (+ EOS for text targets), mask is False on padding. Only the last C + 1 positions'
        logits are computed (`logits_to_keep`), so the (B, T, V) logit tensor of a long
        prompt is never built. The SFT loss is `-(logps * mask).sum() / mask.sum()`; GRPO
        reads the per-token values, at the sampling `temperature` (logits / T, as TRL scores them).
        """
        inputs_embeds, attention_mask, labels = self._assemble(prompts, fused, completions)
        assert labels is not None
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
        target_mask = labels != _IGNORE  # (B, T)
        # Targets sit at the right end of every row (left padding), so the first target
        # position over the batch bounds how many logits are needed.
        first = int(target_mask.float().argmax(1)[target_mask.any(1)].min()) if target_mask.any() else labels.shape[1] - 1
        c = labels.shape[1] - first  # completion positions kept
        out = self.lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                      logits_to_keep=c + 1)
        logits = out.logits[:, :-1].float() / temperature  # (B, c, V): position t predicts token t + 1
        targets = labels[:, -c:]  # (B, c)
        mask = targets != _IGNORE
        logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, c)
        return logps * mask, mask

    @torch.no_grad()
    def generate_ids(
        self,
        prompts: Sequence[str],
        fused: FusedTokensLike | None = None,
        max_new_tokens: int = 128,
        do_sample: bool = False,
        **generate_kwargs,
    ) -> list[list[int]]:
        """Like `generate`, but the new token ids of each sequence (padding and what follows EOS removed;
        the EOS itself kept, so a completion that stopped says so)."""
        inputs_embeds, attention_mask = self.build_inputs(prompts, fused)
        kwargs = {
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            # A placeholder is an input slot; emitting one would be meaningless text.
            "suppress_tokens": list(self.placeholder_ids.values()),
        }
        kwargs.update(generate_kwargs)
        # With only inputs_embeds, decoder-only generate returns just the new tokens.
        new_ids = self.lm.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                   max_new_tokens=max_new_tokens, do_sample=do_sample,
                                   **kwargs)  # (B * num_return_sequences, <= max_new_tokens)
        eos = self.tokenizer.eos_token_id
        out: list[list[int]] = []
        for row in new_ids.tolist():
            ids: list[int] = []
            for t in row:
                ids.append(t)
                if t == eos:
                    break
            out.append(ids)
        return out

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], fused: FusedTokensLike | None = None, **generate_kwargs) -> list[str]:
        """Generate one answer per prompt: `generate_ids`, decoded.

        Takes the arguments of `generate_ids`: greedy by default, `max_new_tokens` 128, and
        extra keyword arguments go to HF `generate` (`temperature`, `top_p`,
        `num_return_sequences`, `min_new_tokens`, ...). Returns the decoded new text only,
        special tokens removed.
        """
        ids = self.generate_ids(prompts, fused, **generate_kwargs)
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    # ------------------------------------------------------------------ LoRA

    def add_lora(
        self,
        r: int = 16,
        alpha: int = 32,
        target_modules: str | Sequence[str] = "all-linear",
        dropout: float = 0.05,
    ) -> None:
        """Wrap the backbone with peft LoRA adapters; the backbone's own weights are frozen.

        `target_modules="all-linear"` adapts every linear layer except the output head (any
        architecture); pass names (e.g. `["q_proj", "v_proj"]`) to restrict it. The
        projector stays trainable: it is medfuse's, not the backbone's.
        """
        from peft import LoraConfig, get_peft_model

        if self.has_lora:
            raise ValueError("LoRA adapters are already attached")
        modules = target_modules if isinstance(target_modules, str) else list(target_modules)
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=modules, task_type="CAUSAL_LM")
        self.lm = get_peft_model(self.lm, config)

    def load_lora(self, adapter_dir: str | Path, trainable: bool = False) -> None:
        """Attach LoRA adapters saved with `self.lm.save_pretrained(adapter_dir)` (peft)."""
        from peft import PeftModel

        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise InputError(adapter_dir, "not a LoRA adapter folder (no adapter_config.json)")
        self.lm = PeftModel.from_pretrained(self.lm, adapter_dir, is_trainable=trainable)

    @property
    def has_lora(self) -> bool:
        from peft import PeftModel

        return isinstance(self.lm, PeftModel)

    def lora_parts(self) -> list[nn.Module]:
        """The LoRA adapter's own layers (peft's `adapter_layer_names` of each tuned layer); [] without one."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        return [getattr(layer, name) for layer in self.lm.modules() if isinstance(layer, BaseTunerLayer)
                for name in layer.adapter_layer_names]
