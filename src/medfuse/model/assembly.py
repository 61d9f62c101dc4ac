"""`MedFuse`: the assembled model, and `FusedBatch`, what one fusion pass yields for diagnosis.

MedFuse = FusionModel (encoders, perception layer, clues, disease head) + MedfuseLM
(language model, projector, optional LoRA adapter) + the calibration of the disease head
(temperatures, thresholds) + the training-split feature statistics + config + panel.
Its checkpoint folder (save, load, model card) is `medfuse.model.checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medfuse.knowledge.panel import Panel, load_panel
from medfuse.model.checkpoint import model_card, read_checkpoint, save_checkpoint
from medfuse.model.config import ModelConfig
from medfuse.record.case import MODALITIES, PatientCase

__all__ = ["FusedBatch", "MedFuse"]


@dataclass
class FusedBatch:
    """What one fusion pass over a batch of cases yields for diagnosis."""

    output: Any  # FusionOutput: tokens (B, N, d), token_mask (B, N), modality_slices, gates (B, 6), ...
    probabilities: np.ndarray  # (B, D) calibrated per-disease probabilities
    thresholds: np.ndarray  # (D,) per-disease decision thresholds
    gates: np.ndarray  # (B, 6) modality weights in MODALITIES order (0 for missing modalities)
    token_groups: list[list[str]]  # per case: the token groups (modalities, "clues") that have unmasked tokens
    findings: list[list[tuple[str, list[int]]]]  # per case: (label, 0-999 box) from the finding head; [] untrained


class MedFuse(nn.Module):
    """The assembled model. Build with `MedFuse.build(config)`, restore with `MedFuse.load(path)`."""

    def __init__(self, config: ModelConfig, panel: Panel, fusion: nn.Module, lm: nn.Module, stats: Any,
                 head: Any, card: dict[str, Any] | None = None, llm_bundled: bool = False):
        super().__init__()
        self.config = config
        self.panel = panel
        self.fusion = fusion
        self.lm = lm
        self.stats = stats
        self.head = head  # DiseaseHead: temperatures + thresholds (calibration, not weights)
        self.card = dict(card or {})
        # True when the LLM is saved inside the checkpoint (it cannot be resolved by name).
        self.llm_bundled = llm_bundled

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, config: ModelConfig | None = None, *, stats: Any = None, tiny_llm: bool = False,
              training_data: str | None = None) -> MedFuse:
        """A new, untrained model. `tiny_llm` uses M2's tiny Llama (tests, pipeline checks)."""
        from medfuse.knowledge.labs import load_lab_catalogue
        from medfuse.model.fusion import FusionModel
        from medfuse.model.head import DiseaseHead
        from medfuse.model.inputs import GENOMICS_VOCAB, FeatureStats

        config = config or ModelConfig()
        panel = load_panel(config.panel)
        torch.manual_seed(config.seed)
        catalogue = load_lab_catalogue()
        fusion = FusionModel(config, panel, n_labs=len(catalogue), n_genes=len(GENOMICS_VOCAB))
        lm = _new_lm(config, tiny_llm)
        head = DiseaseHead(panel.keys)
        card = {"trained": False,
                "training_data": training_data or "none: untrained checkpoint (medfuse model init); weights are random"}
        model = cls(config, panel, fusion, lm, stats or FeatureStats.identity(catalogue), head, card,
                    llm_bundled=tiny_llm)
        model.eval()
        return model

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return str(self.card.get("name", "medfuse"))

    @property
    def version(self) -> str:
        from medfuse import __version__

        v = str(self.card.get("version", __version__))
        return v if self.card.get("trained") else f"{v}+untrained"

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def fuse(self, cases: list[PatientCase]) -> FusedBatch:
        """Featurize `cases`, run the fusion model, calibrate the disease head."""
        from medfuse.model.inputs import collate, featurize_many

        items = featurize_many(cases, self.config, self.stats, self.panel)
        for item in items:
            item.pop("labels", None)  # diagnosis never reads the answer; mixed batches would not collate
        batch = collate(items)
        self.fusion.eval()
        out = self.fusion(batch)
        probs = np.asarray(self.head.predict_proba(out.disease_logits), dtype=np.float64)  # (B, D)
        gates = out.gates.detach().float().cpu().numpy()  # (B, 6)
        # Missing modalities report weight 0 whatever the strategy computes for them.
        gates = gates * batch["present"].cpu().numpy()
        groups: list[list[str]] = []
        mask = out.token_mask.cpu()  # (B, N)
        for i in range(len(cases)):
            names = []
            for name, sl in out.modality_slices.items():
                if bool(mask[i, sl].any()):
                    names.append("clues" if name.startswith("clue") else name)
            groups.append(names)
        findings: list[list[tuple[str, list[int]]]] = [[] for _ in cases]
        # A finding head that never saw a box would draw random rectangles: only a trained one reports.
        if out.finding_logits is not None and self.card.get("findings_trained"):
            from medfuse.model.findings import decode_findings

            probs_f = torch.sigmoid(out.finding_logits).cpu().numpy()  # (B, Q)
            boxes_f = out.finding_boxes.cpu().numpy()  # (B, Q, 4)
            has_cxr = batch["present"][:, MODALITIES.index("cxr")].cpu().numpy()
            findings = [decode_findings(probs_f[i], boxes_f[i], self.config.finding_labels, self.config.finding_threshold)
                        if has_cxr[i] else [] for i in range(len(cases))]
        return FusedBatch(output=out, probabilities=probs, thresholds=np.asarray(self.head.thresholds, dtype=np.float64),
                          gates=gates, token_groups=groups, findings=findings)

    @torch.no_grad()
    def generate(self, prompts: list[tuple[str, str]], fused: FusedBatch | None, max_new_tokens: int = 128,
                 backend: str | None = None, **generate_kwargs: Any) -> list[str]:
        """Generate one text per (system, user) prompt, with the fused tokens at the placeholders.

        Greedy by default; `generate_kwargs` go to HF `generate` (e.g. `min_new_tokens`).
        `backend`: "torch", "llamacpp" or "auto" (default: `$MEDFUSE_DECODER`, else torch);
        llama.cpp decodes greedy generations, torch anything else and when it is missing.
        """
        from medfuse.model.llamacpp import generate_with_backend
        from medfuse.model.llm import chat_prompt

        texts = [chat_prompt(self.lm.tokenizer, user, system) for system, user in prompts]
        self.lm.eval()
        fast = generate_with_backend(self, texts, None if fused is None else fused.output, max_new_tokens, backend,
                                     **generate_kwargs)
        if fast is not None:
            return fast
        kwargs = {"do_sample": False, **generate_kwargs}
        return list(self.lm.generate(texts, None if fused is None else fused.output, max_new_tokens=max_new_tokens,
                                     **kwargs))

    # ------------------------------------------------------------------ training
    def trainable_parts(self, stage: str, *, train_fusion: bool = False) -> list[nn.Module | nn.Parameter]:
        """The parts that train in `stage`; the training stages freeze everything else.

        encoders: the fusion model (`FusionModel.trainable_parts("encoders")`). align: the LLM
        projector. sft: the LoRA adapter and the projector, plus the fusion model's parts above
        the encoders when `train_fusion`. grpo: the LoRA adapter. The LoRA stages expect the
        adapter to be attached (`self.lm.add_lora`).
        """
        if stage == "encoders":
            return self.fusion.trainable_parts("encoders")
        if stage == "align":
            return [self.lm.projector]
        if stage == "sft":
            return [*self.lm.lora_parts(), self.lm.projector, *(self.fusion.trainable_parts("sft") if train_fusion else [])]
        if stage == "grpo":
            return self.lm.lora_parts()
        raise ValueError(f"unknown training stage {stage!r} (encoders, align, sft, grpo)")

    # ------------------------------------------------------------------ checkpoint
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the checkpoint folder atomically (`medfuse.model.checkpoint` describes its files)."""
        return save_checkpoint(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path) -> MedFuse:
        """Restore a model saved with `save`; a missing or foreign file is one clear InputError."""
        parts = read_checkpoint(path)
        model = cls(parts.config, parts.panel, parts.fusion, parts.lm, parts.stats, parts.head, parts.card,
                    llm_bundled=parts.llm_bundled)
        model.eval()
        return model

    def model_card(self) -> dict[str, Any]:
        """metadata.json: what the checkpoint is, what it reads, how it was calibrated, its limits."""
        return model_card(self)


def _new_lm(config: ModelConfig, tiny: bool) -> nn.Module:
    from medfuse.model.llm import MedfuseLM

    if tiny:
        return MedfuseLM.tiny(d_model=config.d_model, seed=config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return MedfuseLM.from_pretrained(config.llm, d_model=config.d_model)
