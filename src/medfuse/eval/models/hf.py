"""`hf:PATH`: a local Hugging Face model folder, never downloaded.

Causal LMs load with `AutoTokenizer` + `AutoModelForCausalLM`; a folder whose config has
a `vision_config` (Qwen2-VL, LLaVA, Idefics, SmolVLM, ...) loads with `AutoProcessor` +
`AutoModelForImageTextToText` and receives the item images. Prompts go through the
tokenizer's chat template when it has one (instruction-tuned models expect it), else a
plain "system, blank line, user" text. Decoding is greedy; prompts are batched with left
padding (`batch_size`), grouped by output budget so one long item does not slow a batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from medfuse.errors import InputError
from medfuse.eval.models.base import GenerationError, ModelAdapter
from medfuse.eval.prompts import Prompt

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


def folder_fingerprint(folder: Path) -> str:
    """A short hash of the config and the weight files' names, sizes and mtimes, so that a
    model retrained in place gets a new cache key without hashing gigabytes."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.name == "config.json":
            h.update(p.read_bytes())
        elif p.suffix in _WEIGHT_SUFFIXES:
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:12]


class HFModel(ModelAdapter):
    """A local transformers model folder."""

    def __init__(self, path: str | Path, batch_size: int = 4, device: str | None = None):
        import torch
        from transformers import AutoConfig

        self.path = Path(path).expanduser()
        if not (self.path / "config.json").is_file():
            raise InputError(self.path, "not a Hugging Face model folder (no config.json)")
        self.batch_size = max(1, batch_size)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            config = AutoConfig.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise InputError(self.path / "config.json", f"cannot read the model config ({e.__class__.__name__})") from None
        self.accepts_images = getattr(config, "vision_config", None) is not None
        self.model_id = f"hf:{self.path.resolve()}@{folder_fingerprint(self.path)}"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        try:
            if self.accepts_images:
                from transformers import AutoModelForImageTextToText, AutoProcessor

                self.processor = AutoProcessor.from_pretrained(self.path, local_files_only=True)
                self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
                self.model = AutoModelForImageTextToText.from_pretrained(self.path, local_files_only=True, dtype=dtype)
            else:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                self.processor = None
                self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
                self.model = AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True, dtype=dtype)
        except (OSError, ValueError, KeyError) as e:
            raise InputError(self.path, f"cannot load the model ({e.__class__.__name__}: {str(e).splitlines()[0][:160]})") from None
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"  # generation continues from the right end
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token

    # ------------------------------------------------------------------ prompt text

    def _text(self, prompt: Prompt) -> str:
        template = getattr(self.tokenizer, "chat_template", None) or getattr(self.processor, "chat_template", None)
        if template:
            if self.accepts_images:
                user = [{"type": "image"} for _ in prompt.images] + [{"type": "text", "text": prompt.user}]
                messages = [{"role": "system", "content": [{"type": "text", "text": prompt.system}]},
                            {"role": "user", "content": user}]
                owner = self.processor
            else:
                messages = [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.user}]
                owner = self.tokenizer
            return owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return f"{prompt.system}\n\n{prompt.user}\n"

    def _encode(self, batch: Sequence[Prompt]):
        texts = [self._text(p) for p in batch]
        if self.accepts_images and any(p.images for p in batch):
            from PIL import Image

            images = []
            for p in batch:
                images.append([Image.open(path).convert("RGB") for path in p.images])
            return self.processor(text=texts, images=images, return_tensors="pt", padding=True)
        if self.processor is not None:
            return self.processor(text=texts, return_tensors="pt", padding=True)
        # The chat template already holds the special tokens; do not add a second BOS.
        return self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not self.tokenizer.chat_template)

    # ------------------------------------------------------------------ interface

    def generate_iter(self, prompts: Sequence[Prompt]) -> Iterator[tuple[int, str | GenerationError]]:
        import torch

        order = sorted(range(len(prompts)), key=lambda i: (prompts[i].max_new_tokens, len(prompts[i].user)))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = [prompts[i] for i in idx]
            try:
                inputs = self._encode(batch).to(self.device)
                with torch.inference_mode():
                    out = self.model.generate(
                        **inputs,
                        max_new_tokens=max(p.max_new_tokens for p in batch),
                        do_sample=False,
                        pad_token_id=self.tokenizer.pad_token_id,
                    )
            except (OSError, ValueError, RuntimeError) as e:
                for i in idx:
                    yield i, GenerationError(f"{self.path}: generation failed ({e.__class__.__name__})")
                continue
            new_tokens = out[:, inputs["input_ids"].shape[1] :]  # (batch, generated)
            for i, p, row in zip(idx, batch, new_tokens, strict=True):
                yield i, self.tokenizer.decode(row[: p.max_new_tokens], skip_special_tokens=True).strip()

    def close(self) -> None:
        self.model = None
