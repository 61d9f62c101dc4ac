"""The fused model's configuration: one typed dataclass, every field a YAML key with help text.

`ModelConfig.from_dict` / `from_yaml` (the `medfuse.config.YamlConfig` base) reject unknown
keys with a `ConfigError` that names the key, so a typo in a config file never silently
falls back to a default. `tokens` and `cxr_vit` may be given partially: missing entries
keep their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medfuse.config import YamlConfig, check_int, option
from medfuse.errors import ConfigError
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
class ModelConfig(YamlConfig):
    """Settings of the fusion model (encoders, perception layer, clues, head) and its LLM."""

    d_model: int = option(256, "Width of every modality token and of the fused sequence.")
    n_heads: int = option(4, "Attention heads in token pooling and the perception layer; must divide d_model.")
    tokens: dict[str, int] = option(
        factory=_default_tokens, help="Tokens per modality (ecg, cxr, labs, vitals, notes, genomics); each at least 2.")
    fusion: str = option("hybrid",
        "Fusion strategy: early (raw features concatenated), feature (encoder outputs concatenated), "
        "late (per-modality heads, learned weighted vote) or hybrid (modality perception layer).")
    perception_layers: int = option(1, "Cross-modal attention blocks in the perception layer (hybrid).")
    use_clues: bool = option(True,
        "Inject disease clue tokens (per-modality auxiliary disease scores, TRRG) beside the modality tokens.")
    aux_loss_weight: float = option(0.3,
        "Weight of the per-modality auxiliary disease losses relative to the main disease loss.")
    gate_balance: float = option(0.05,
        "Weight of the KL(gates || uniform over present modalities) penalty on the perception gates "
        "(hybrid). Without it the softmax gates can collapse onto one modality, and the reported "
        "modality weights would then say nothing about the case.")
    ecg_fs: float = option(100.0, "ECG sampling rate (Hz) the encoder sees; inputs are resampled.")
    ecg_seconds: float = option(10.0, "ECG window length (s); longer records are cropped, shorter zero-padded.")
    ecg_channels: int = option(64, "Base channel count of the ECG residual CNN (doubles twice).")
    cxr_size: int = option(224, "Radiograph side length (pixels) after resizing.")
    cxr_vit: dict[str, Any] = option(
        factory=_default_vit,
        help="Keyword arguments for transformers.ViTConfig of the image encoder built from scratch.")
    cxr_vision_model: str | None = option(None,
        "A Hugging Face vision model id (already in the local cache) or folder to use instead of the ViT.")
    finding_labels: list[str] = option(
        factory=lambda: list(DEFAULT_FINDING_LABELS),
        help="Image finding labels the finding head localises (two slots each: image left and right half).")
    finding_threshold: float = option(0.5,
        "Presence probability above which a finding slot is reported with its box.")
    llm: str = option("smollm2-135m",
        "Language model: 'smollm2-135m' (bundled GGUF), a cached Hugging Face id or a local folder.")
    lora_r: int = option(16, "LoRA rank of the language model adapter.")
    lora_alpha: int = option(32, "LoRA scaling numerator (alpha / r scales the update).")
    dropout: float = option(0.1, "Dropout in encoders, perception layer and head.")
    panel: str | None = option(None, "Disease panel YAML file; None: the bundled default panel.")
    seed: int = option(0, "Seed for parameter initialisation.")

    def __post_init__(self) -> None:
        # Partial nested mappings keep the other defaults (a bare ViTConfig default would be
        # a 86 M-parameter ViT-Base, not the small encoder this model means).
        if isinstance(self.tokens, dict):
            self.tokens = {**_default_tokens(), **self.tokens}
        if isinstance(self.cxr_vit, dict):
            self.cxr_vit = {**_default_vit(), **self.cxr_vit}
        super().__post_init__()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ConfigError naming the first bad key."""
        self.require_ints("d_model", "n_heads", "perception_layers", "ecg_channels", "cxr_size", "lora_r", "lora_alpha")
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
            check_int(f"tokens.{m}", self.tokens.get(m), minimum=2, note=" (several tokens per modality)")
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
            check_int(f"cxr_vit.{key}", self.cxr_vit[key])
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
        self.require_ints("seed", minimum=0)

    # ------------------------------------------------------------ derived sizes
    @property
    def ecg_samples(self) -> int:
        """Samples per lead the ECG encoder sees (ecg_fs * ecg_seconds)."""
        return int(round(self.ecg_fs * self.ecg_seconds))
