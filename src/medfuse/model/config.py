"""The fused model's configuration: one typed dataclass, every field a YAML key with help text.

`ModelConfig.from_dict` rejects unknown keys with a `ConfigError` that names the key, so a
typo in a config file never silently falls back to a default.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medfuse.errors import ConfigError, InputError
from medfuse.record.case import MODALITIES

FUSION_STRATEGIES: tuple[str, ...] = ("early", "feature", "late", "hybrid")
# The labelled findings of the synthetic radiographs (medfuse.synth.cxr); a cohort with other
# labels sets `finding_labels`.
DEFAULT_FINDING_LABELS: tuple[str, ...] = (
    "consolidation", "pulmonary edema", "pleural effusion", "nodule", "mass", "cardiomegaly",
)
# transformers.ViTConfig arguments a user may set under `cxr_vit`.
VIT_KEYS: tuple[str, ...] = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "layer_norm_eps",
    "patch_size", "qkv_bias", "encoder_stride",
)


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def _default_tokens() -> dict[str, int]:
    # Several tokens per modality, never one: with one token each, cross-modal attention
    # collapses into a fixed linear mix (the MedTVT-R1 defect DESIGN.md names). The
    # signal-rich modalities get more.
    return {"ecg": 8, "cxr": 8, "labs": 4, "vitals": 2, "notes": 2, "genomics": 2}


def _default_vit() -> dict[str, Any]:
    # A small ViT (about 1.8 M parameters): no pretrained 2-D medical weights are available
    # offline, so the image encoder is trained from scratch and must stay cheap on CPU.
    return {"hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 3,
            "intermediate_size": 768, "patch_size": 16}


@dataclass
class ModelConfig:
    """Settings of the fusion model (encoders, perception layer, clues, head) and its LLM."""

    d_model: int = field(default=256, metadata=_help("Width of every modality token and of the fused sequence."))
    n_heads: int = field(default=4, metadata=_help("Attention heads in token pooling and the perception layer; must divide d_model."))
    tokens: dict[str, int] = field(default_factory=_default_tokens, metadata=_help(
        "Tokens per modality (ecg, cxr, labs, vitals, notes, genomics); each at least 2."))
    fusion: str = field(default="hybrid", metadata=_help(
        "Fusion strategy: early (raw features concatenated), feature (encoder outputs concatenated), "
        "late (per-modality heads, learned weighted vote) or hybrid (modality perception layer)."))
    perception_layers: int = field(default=1, metadata=_help("Cross-modal attention blocks in the perception layer (hybrid)."))
    use_clues: bool = field(default=True, metadata=_help(
        "Inject disease clue tokens (per-modality auxiliary disease scores, TRRG) beside the modality tokens."))
    aux_loss_weight: float = field(default=0.3, metadata=_help(
        "Weight of the per-modality auxiliary disease losses relative to the main disease loss."))
    gate_balance: float = field(default=0.05, metadata=_help(
        "Weight of the KL(gates || uniform over present modalities) penalty on the perception gates "
        "(hybrid). Without it the softmax gates can collapse onto one modality, and the reported "
        "modality weights would then say nothing about the case."))
    ecg_fs: float = field(default=100.0, metadata=_help("ECG sampling rate (Hz) the encoder sees; inputs are resampled."))
    ecg_seconds: float = field(default=10.0, metadata=_help("ECG window length (s); longer records are cropped, shorter zero-padded."))
    ecg_channels: int = field(default=64, metadata=_help("Base channel count of the ECG residual CNN (doubles twice)."))
    cxr_size: int = field(default=224, metadata=_help("Radiograph side length (pixels) after resizing."))
    cxr_vit: dict[str, Any] = field(default_factory=_default_vit, metadata=_help(
        "Keyword arguments for transformers.ViTConfig of the image encoder built from scratch."))
    cxr_vision_model: str | None = field(default=None, metadata=_help(
        "A Hugging Face vision model id (already in the local cache) or folder to use instead of the ViT."))
    finding_labels: list[str] = field(default_factory=lambda: list(DEFAULT_FINDING_LABELS), metadata=_help(
        "Image finding labels the finding head localises (two slots each: image left and right half)."))
    finding_threshold: float = field(default=0.5, metadata=_help(
        "Presence probability above which a finding slot is reported with its box."))
    llm: str = field(default="smollm2-135m", metadata=_help(
        "Language model: 'smollm2-135m' (bundled GGUF), a cached Hugging Face id or a local folder."))
    lora_r: int = field(default=16, metadata=_help("LoRA rank of the language model adapter."))
    lora_alpha: int = field(default=32, metadata=_help("LoRA scaling numerator (alpha / r scales the update)."))
    dropout: float = field(default=0.1, metadata=_help("Dropout in encoders, perception layer and head."))
    panel: str | None = field(default=None, metadata=_help("Disease panel YAML file; None: the bundled default panel."))
    seed: int = field(default=0, metadata=_help("Seed for parameter initialisation."))

    def __post_init__(self) -> None:
        # Partial nested mappings keep the other defaults (a bare ViTConfig default would be
        # a 86 M-parameter ViT-Base, not the small encoder this model means).
        if isinstance(self.tokens, dict):
            self.tokens = {**_default_tokens(), **self.tokens}
        if isinstance(self.cxr_vit, dict):
            self.cxr_vit = {**_default_vit(), **self.cxr_vit}
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ConfigError naming the first bad key."""
        def positive_int(name: str) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name}: must be a positive integer, got {v!r}")

        for name in ("d_model", "n_heads", "perception_layers", "ecg_channels", "cxr_size", "lora_r", "lora_alpha"):
            positive_int(name)
        if self.d_model % self.n_heads:
            raise ConfigError(f"n_heads: must divide d_model ({self.d_model}), got {self.n_heads}")
        if self.fusion not in FUSION_STRATEGIES:
            raise ConfigError(f"fusion: must be one of {', '.join(FUSION_STRATEGIES)}, got {self.fusion!r}")
        if not isinstance(self.tokens, dict):
            raise ConfigError("tokens: must be a mapping modality -> token count")
        for key in self.tokens:
            if key not in MODALITIES:
                raise ConfigError(f"tokens.{key}: unknown modality (known: {', '.join(MODALITIES)})")
        for m in MODALITIES:
            k = self.tokens.get(m)
            if not isinstance(k, int) or isinstance(k, bool) or k < 2:
                raise ConfigError(f"tokens.{m}: must be an integer >= 2 (several tokens per modality), got {k!r}")
        for name in ("ecg_fs", "ecg_seconds"):
            v = getattr(self, name)
            if not isinstance(v, int | float) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{name}: must be a positive number, got {v!r}")
        if self.ecg_fs * self.ecg_seconds < 64:
            raise ConfigError(f"ecg_seconds: ecg_fs * ecg_seconds must give at least 64 samples, got {self.ecg_fs * self.ecg_seconds:g}")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.aux_loss_weight, int | float) or self.aux_loss_weight < 0:
            raise ConfigError(f"aux_loss_weight: must be >= 0, got {self.aux_loss_weight!r}")
        if not isinstance(self.gate_balance, int | float) or isinstance(self.gate_balance, bool) or self.gate_balance < 0:
            raise ConfigError(f"gate_balance: must be >= 0, got {self.gate_balance!r}")
        if not isinstance(self.use_clues, bool):
            raise ConfigError(f"use_clues: must be true or false, got {self.use_clues!r}")
        if not isinstance(self.cxr_vit, dict):
            raise ConfigError("cxr_vit: must be a mapping of ViTConfig arguments")
        for key in self.cxr_vit:
            # ViTConfig accepts any keyword silently, so a typo would fall back to a default.
            if key in ("image_size", "num_channels"):
                raise ConfigError(f"cxr_vit.{key}: set by medfuse (use cxr_size; radiographs have 1 channel)")
            if key not in VIT_KEYS:
                raise ConfigError(f"cxr_vit.{key}: not a ViTConfig argument (known: {', '.join(VIT_KEYS)})")
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "patch_size"):
            v = self.cxr_vit[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"cxr_vit.{key}: must be a positive integer, got {v!r}")
        if self.cxr_vit["hidden_size"] % self.cxr_vit["num_attention_heads"]:
            raise ConfigError("cxr_vit.num_attention_heads: must divide cxr_vit.hidden_size")
        patch = self.cxr_vit["patch_size"]
        if self.cxr_vision_model is None and self.cxr_size % patch:
            raise ConfigError(f"cxr_size: must be a multiple of cxr_vit.patch_size ({patch}), got {self.cxr_size}")
        if (not isinstance(self.finding_labels, list) or not self.finding_labels
                or not all(isinstance(x, str) and x for x in self.finding_labels)
                or len(set(self.finding_labels)) != len(self.finding_labels)):
            raise ConfigError("finding_labels: must be a non-empty list of distinct names")
        if not isinstance(self.finding_threshold, int | float) or not 0.0 < self.finding_threshold < 1.0:
            raise ConfigError(f"finding_threshold: must be in (0, 1), got {self.finding_threshold!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed: must be a non-negative integer, got {self.seed!r}")

    # ------------------------------------------------------------ derived sizes
    @property
    def ecg_samples(self) -> int:
        """Samples per lead the ECG encoder sees (ecg_fs * ecg_seconds)."""
        return int(round(self.ecg_fs * self.ecg_seconds))

    # ----------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """A plain mapping (YAML/JSON ready) of every field."""
        return copy.deepcopy(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "config") -> ModelConfig:
        """Build a config from a mapping; an unknown key is a ConfigError naming it.

        `tokens` and `cxr_vit` may be given partially: missing entries keep their defaults.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: a model config must be a mapping of key: value")
        names = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in names:
                raise ConfigError(f"{origin}: unknown key '{key}' (known: {', '.join(sorted(names))})")
        try:
            return cls(**data)
        except ConfigError as e:
            raise ConfigError(f"{origin}: {e}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> ModelConfig:
        """Read a YAML config file whose keys are the field names."""
        import yaml

        p = Path(path)
        if not p.is_file():
            raise InputError(p, "config file not found")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise InputError(p, f"invalid YAML ({e.__class__.__name__})") from None
        if not isinstance(data, dict):
            raise InputError(p, "a config file must be a mapping of key: value")
        return cls.from_dict(data, origin=str(p))

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text (for CLI flags and documentation)."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
