"""The checkpoint folder of a `MedFuse` model: its format, writing, reading and the model card.

A checkpoint is a folder (written atomically: built under a temporary name, renamed at
the end, so a crash never leaves a half checkpoint that loads):

    config.yaml            ModelConfig (every field a YAML key)
    panel.yaml             the disease panel, frozen with the weights (label order!)
    fusion.safetensors     encoders + perception + clues + head ("fusion.*"),
                           the LLM projector ("projector.*") and the embedding rows of the
                           placeholder tokens added to the LLM vocabulary ("llm_added.*")
    adapter/               peft LoRA adapter of the LLM, when one was added
    llm/                   the whole LLM, only when it cannot be re-resolved by name
                           (the tiny test model); otherwise `config.llm` is resolved again
    stats.json             FeatureStats fitted on the training split
    calibration.json       per-disease temperatures and decision thresholds
    metadata.json          the model card: panel, thresholds, inputs, training data,
                           intended use, limitations, version

`save_checkpoint(model, path)` writes it (`MedFuse.save`); `read_checkpoint(path)` reads its
parts back, from which `MedFuse.load(path)` rebuilds the exact model: the round-trip test
checks identical disease logits and generated text. This module does not import the
`MedFuse` class (model.assembly imports it), so it reads and writes the parts.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medfuse.errors import InputError
from medfuse.knowledge.panel import Panel, load_panel
from medfuse.model.config import ModelConfig
from medfuse.record.case import MODALITIES
from medfuse.record.store import read_json

__all__ = ["CHECKPOINT_FILES", "CheckpointParts", "model_card", "panel_to_yaml", "read_checkpoint", "save_checkpoint"]

FORMAT_VERSION = 1
KEPT_ON_RESAVE = ("metrics.jsonl",)
CHECKPOINT_FILES = ("config.yaml", "panel.yaml", "fusion.safetensors", "stats.json", "calibration.json", "metadata.json")

INTENDED_USE = (
    "Research on multimodal medical reasoning: producing a ranked, evidence-cited differential over the model's "
    "disease panel from chest X-ray, ECG, labs, vital signs, notes and variant panels, for review by a clinician. "
    "Not a medical device; not for diagnosis or treatment decisions without a qualified clinician."
)
LIMITATIONS = [
    "Only the diseases of the stored panel are assessed; anything else is invisible to the model.",
    "Probabilities are calibrated on the validation split of the training data only; other populations, sites "
    "and devices shift them.",
    "The image encoder has no pretrained medical weights (none are available offline) unless a user model is set.",
    "Generated reasoning is checked lexically against the case: invented numbers, tests, modalities and variants "
    "are removed, but the medical soundness of an inference is not verified.",
    "A disease none of whose evidence modalities is present is reported as insufficient data, not assessed.",
]


def panel_to_yaml(panel: Panel) -> str:
    """The panel as YAML in the shape `load_panel` reads (stored with the checkpoint)."""
    import yaml

    diseases = []
    for d in panel:
        entry: dict[str, Any] = {"key": d.key, "name": d.name, "icd10": list(d.icd10), "icd9": list(d.icd9),
                                 "synonyms": list(d.synonyms)}
        if d.zh:
            entry["zh"] = d.zh
        if d.zh_synonyms:
            entry["zh_synonyms"] = list(d.zh_synonyms)
        if d.evidence:
            entry["evidence"] = dict(d.evidence)
        diseases.append(entry)
    return yaml.safe_dump({"name": panel.name, "diseases": diseases}, allow_unicode=True, sort_keys=False)


@dataclass
class CheckpointParts:
    """What a checkpoint folder holds, rebuilt: the pieces `MedFuse(...)` is made of."""

    config: ModelConfig
    panel: Panel
    fusion: nn.Module  # FusionModel
    lm: nn.Module  # MedfuseLM, with the LoRA adapter when one was saved
    stats: Any  # FeatureStats
    head: Any  # DiseaseHead
    card: dict[str, Any]
    llm_bundled: bool


def save_checkpoint(model: Any, path: str | Path, overwrite: bool = False) -> Path:
    """Write `model` (a `MedFuse`) as a checkpoint folder, atomically (see the module docstring for its files)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(path, "exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise InputError(path, "folder is not empty (use --overwrite to replace the checkpoint)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (tmp / "config.yaml").write_text(model.config.to_yaml(), encoding="utf-8")
        (tmp / "panel.yaml").write_text(panel_to_yaml(model.panel), encoding="utf-8")
        tensors = {f"fusion.{k}": v for k, v in model.fusion.state_dict().items()}
        tensors.update({f"projector.{k}": v for k, v in model.lm.projector.state_dict().items()})
        tensors.update({f"llm_added.{k}": v for k, v in _added_token_rows(model.lm).items()})
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / "fusion.safetensors"),
                  metadata={"format_version": str(FORMAT_VERSION)})
        if _has_adapter(model.lm):
            # The placeholder rows of the resized embeddings are saved in fusion.safetensors
            # ("llm_added.*"); peft would otherwise copy both 49k-row tables (~230 MB).
            model.lm.lm.save_pretrained(str(tmp / "adapter"), save_embedding_layers=False)
            _name_adapter_base(tmp / "adapter", model.config.llm)
        if model.llm_bundled:
            _save_base_llm(model.lm, tmp / "llm")
        _write_json(tmp / "stats.json", model.stats.to_dict())
        _write_json(tmp / "calibration.json", model.head.to_dict())
        _write_json(tmp / "metadata.json", model_card(model))
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders
        for keep in KEPT_ON_RESAVE:  # a re-saved checkpoint keeps its training log
            if (path / keep).is_file() and not (tmp / keep).exists():
                shutil.copy2(path / keep, tmp / keep)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_checkpoint(path: str | Path) -> CheckpointParts:
    """The parts of a checkpoint folder written by `save_checkpoint`; a missing or foreign file is one InputError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from medfuse.knowledge.labs import load_lab_catalogue
    from medfuse.model.fusion import FusionModel
    from medfuse.model.head import DiseaseHead
    from medfuse.model.inputs import GENOMICS_VOCAB, FeatureStats

    path = Path(path)
    if not path.is_dir():
        raise InputError(path, "no such checkpoint folder")
    for name in CHECKPOINT_FILES:
        if not (path / name).is_file():
            raise InputError(path, f"not a medfuse checkpoint (missing {name})")
    config = ModelConfig.from_yaml(path / "config.yaml")
    panel = load_panel(path / "panel.yaml")
    card = _read_json(path / "metadata.json")
    if int(card.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(path, f"checkpoint format {card.get('format_version')} is newer than this medfuse reads "
                               f"({FORMAT_VERSION}); upgrade medfuse")
    try:
        tensors = load_file(str(path / "fusion.safetensors"))
    except (SafetensorError, OSError) as e:
        raise InputError(path / "fusion.safetensors", f"unreadable ({e.__class__.__name__})") from None
    catalogue = load_lab_catalogue()
    stats = FeatureStats.from_dict(_read_json(path / "stats.json"))
    fusion = FusionModel(config, panel, n_labs=len(catalogue), n_genes=len(GENOMICS_VOCAB))
    _load_prefixed(fusion, tensors, "fusion.", path)
    bundled = (path / "llm").is_dir()
    lm = _load_lm(config, path / "llm" if bundled else None, path / "adapter" if (path / "adapter").is_dir() else None)
    _load_prefixed(lm.projector, tensors, "projector.", path)
    _set_added_token_rows(lm, {k[len("llm_added."):]: v for k, v in tensors.items() if k.startswith("llm_added.")})
    try:
        head = DiseaseHead.from_dict(_read_json(path / "calibration.json"))
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(path / "calibration.json", f"not a calibration file ({e.__class__.__name__})") from None
    if head.diseases != panel.keys:
        raise InputError(path / "calibration.json", "its diseases do not match panel.yaml")
    return CheckpointParts(config, panel, fusion, lm, stats, head, card, llm_bundled=bundled)


def model_card(model: Any) -> dict[str, Any]:
    """metadata.json of `model` (a `MedFuse`): what it is, what it reads, how it was calibrated, its limits."""
    from medfuse import __version__
    from medfuse.model.inputs import GENOMICS_VOCAB

    calib = model.head.to_dict()
    thresholds = dict(zip(model.panel.keys, (float(t) for t in model.head.thresholds), strict=True))
    return {
        "name": model.name,
        "version": str(model.card.get("version", __version__)),
        "format_version": FORMAT_VERSION,
        "medfuse_version": __version__,
        "created": model.card.get("created") or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "trained": bool(model.card.get("trained", False)),
        "panel": {"name": model.panel.name,
                  "diseases": [{"key": d.key, "name": d.name, "icd10": list(d.icd10)} for d in model.panel]},
        "thresholds": thresholds,
        "calibration": calib,
        "inputs": {
            "modalities": list(MODALITIES),
            "tokens_per_modality": dict(model.config.tokens),
            "ecg": {"fs_hz": model.config.ecg_fs, "seconds": model.config.ecg_seconds, "leads": "standard 12, by name"},
            "cxr": {"size": model.config.cxr_size, "encoder": model.config.cxr_vision_model or "ViT from config"},
            "labs": {"keys": list(model.stats.lab_keys), "transform": "log1p z-score, training-split statistics"},
            "vitals": "z-score, training-split statistics",
            "notes": "all-MiniLM-L6-v2 embedding + text in the prompt",
            "genomics": list(GENOMICS_VOCAB),
            "stats_fitted_on_cases": int(getattr(model.stats, "n_cases", 0)),
        },
        "fusion": model.config.fusion,
        "clues": model.config.use_clues,
        "llm": {"base": model.config.llm, "bundled": model.llm_bundled, "lora": _has_adapter(model.lm)},
        "findings_trained": bool(model.card.get("findings_trained", False)),
        "training_data": model.card.get("training_data", "unknown"),
        # What each training stage ran: command, config, steps, time, validation metrics.
        "stages": list(model.card.get("stages", [])),
        # Held-out evaluation (`medfuse model evaluate`), when it was run.
        **({"evaluation": model.card["evaluation"]} if model.card.get("evaluation") else {}),
        # Site recalibration of the disease head (`medfuse calibrate`), when it was run.
        **({"recalibration": model.card["recalibration"]} if model.card.get("recalibration") else {}),
        "intended_use": model.card.get("intended_use", INTENDED_USE),
        "limitations": list(model.card.get("limitations", LIMITATIONS))
        + ([] if model.card.get("trained") else ["UNTRAINED: random weights; outputs are meaningless."]),
    }


# ---------------------------------------------------------------------- LLM plumbing

def _load_lm(config: ModelConfig, bundled: Path | None, adapter: Path | None) -> nn.Module:
    from medfuse.model.llm import MedfuseLM, load_llm

    source = str(bundled) if bundled is not None else config.llm
    model, tokenizer = load_llm(source)
    lm = MedfuseLM(model, tokenizer, config.d_model, name="tiny-llama" if bundled is not None else config.llm)
    if adapter is not None:
        lm.load_lora(adapter, trainable=False)
    return lm


def _has_adapter(lm: nn.Module) -> bool:
    return bool(lm.has_lora)


def _base_model(lm: nn.Module) -> nn.Module:
    return lm.lm.get_base_model() if _has_adapter(lm) else lm.lm


def _added_token_ids(lm: nn.Module) -> list[int]:
    from medfuse.model.llm import PLACEHOLDER_TOKENS

    return [int(lm.placeholder_ids[t]) for t in PLACEHOLDER_TOKENS]


def _added_token_rows(lm: nn.Module) -> dict[str, torch.Tensor]:
    """Embedding rows of the placeholder tokens (random at resize time, so they must be saved)."""
    base = _base_model(lm)
    ids = torch.tensor(_added_token_ids(lm))
    rows = {"input": base.get_input_embeddings().weight[ids].detach().clone()}  # (n_special, hidden)
    out = base.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != base.get_input_embeddings().weight.data_ptr():
        rows["output"] = out.weight[ids].detach().clone()  # (n_special, hidden), untied heads only
    return rows


def _set_added_token_rows(lm: nn.Module, rows: dict[str, torch.Tensor]) -> None:
    if not rows:
        return
    base = _base_model(lm)
    ids = torch.tensor(_added_token_ids(lm))
    with torch.no_grad():
        base.get_input_embeddings().weight[ids] = rows["input"].to(base.get_input_embeddings().weight.dtype)
        if "output" in rows and base.get_output_embeddings() is not None:
            base.get_output_embeddings().weight[ids] = rows["output"].to(base.get_output_embeddings().weight.dtype)


def _name_adapter_base(folder: Path, name: str) -> None:
    """Record the backbone by its medfuse name, not by the local cache path peft wrote
    (a checkpoint must not carry this machine's paths; `config.llm` is what loads it)."""
    config_file = folder / "adapter_config.json"
    data = json.loads(config_file.read_text(encoding="utf-8"))
    local = str(data.get("base_model_name_or_path") or "")
    data["base_model_name_or_path"] = name
    config_file.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    readme = folder / "README.md"
    if local and readme.is_file():
        readme.write_text(readme.read_text(encoding="utf-8").replace(local, name), encoding="utf-8")


def _save_base_llm(lm: nn.Module, folder: Path) -> None:
    """The base LLM (without LoRA layers, which go to adapter/) as a Hugging Face folder."""
    base = _base_model(lm)
    state = None
    if _has_adapter(lm):
        # peft wraps target layers: drop the LoRA tensors and unwrap `base_layer` names.
        state = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if "lora_" not in k}
    base.save_pretrained(str(folder), state_dict=state, safe_serialization=True)
    lm.tokenizer.save_pretrained(str(folder))


# ---------------------------------------------------------------------- small helpers

def _load_prefixed(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str, path: Path) -> None:
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0][:200]
        raise InputError(path / "fusion.safetensors", f"weights do not fit config.yaml ({prefix.rstrip('.')}: {first})") from None


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n", encoding="utf-8")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _read_json(path: Path) -> dict[str, Any]:
    data = read_json(path)  # one line for unreadable, invalid or too deeply nested JSON
    if not isinstance(data, dict):
        raise InputError(path, "expected a JSON object")
    return data
