"""The fusion model: modality tokens -> fused token sequence, modality weights, disease logits.

One class, one code path, four strategies (`ModelConfig.fusion`), so they can be trained
and compared on the same benchmark:

- `early`: concatenate RAW features. Each modality's raw input is flattened to a short
  vector (ECG average-pooled to 64 steps per lead, image to 16x16, labs/vitals/notes/
  genomics as they are); a joint MLP over the concatenation (+ presence bits) feeds the
  head. The LLM tokens of a modality are a linear read-out of its raw vector.
- `feature`: concatenate ENCODER outputs. The mean token of each modality encoder is
  concatenated (+ presence bits) into a joint MLP feeding the head.
- `late`: per-modality heads (the auxiliary heads) and a learned weighted vote: disease
  logits = sum over present modalities of gate_m * logits_m, gates = softmax of one
  learned weight per modality over the present modalities.
- `hybrid`: the modality perception layer (cross-modal attention + gates) of
  `medfuse.model.perception`; its gate-weighted pooled summary feeds the head.

Modality weights (`FusionOutput.gates`, (B, 6), sum 1 over present modalities, 0 for
missing): `hybrid` the perception gates; `late` the vote weights; `early` and `feature`
have no gate, so they report a norm-based attribution: the share of the joint MLP's
first-layer pre-activation contributed by each modality's block,
||W_m x_m|| / sum over present j of ||W_j x_j||.

Missing modalities: encoders run only on the cases where the modality is present; all
other rows are exactly zero and masked (`token_mask` False), so garbage in a missing
modality's input cannot change any output.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from medfuse.knowledge.panel import Panel
from medfuse.model.clues import AuxiliaryHeads, ClueTokens
from medfuse.model.config import ModelConfig
from medfuse.model.encoders import CXREncoder, ECGEncoder, GenomicsEncoder, NotesEncoder, TabularEncoder
from medfuse.model.findings import FindingHead
from medfuse.model.inputs import NOTES_DIM
from medfuse.model.perception import ModalityPerception, masked_softmax
from medfuse.record.case import MODALITIES, VITAL_FIELDS

# Early fusion's raw vectors: ECG average-pooled to this many steps per lead (at 100 Hz,
# 10 s -> 156 ms bins: rate and gross morphology survive, QRS detail does not, which is
# the point of comparing it with the encoders) and the image to this side length.
EARLY_ECG_STEPS = 64
EARLY_CXR_SIDE = 16


@dataclass
class FusionOutput:
    """What the fusion model hands to the language model, the head and the loss."""

    tokens: torch.Tensor  # (B, N, d) fused token sequence: modality tokens in MODALITIES order, then clue tokens
    token_mask: torch.Tensor  # (B, N) bool, True where a token carries data
    modality_slices: dict[str, slice]  # modality (and "clue") -> positions in `tokens`
    gates: torch.Tensor  # (B, 6) modality weights in MODALITIES order (see module docstring)
    disease_logits: torch.Tensor  # (B, D) over the panel
    aux_logits: dict[str, torch.Tensor] = field(default_factory=dict)  # modality -> (B, D)
    pooled: torch.Tensor | None = None  # (B, d_head) representation the disease head read
    finding_logits: torch.Tensor | None = None  # (B, Q) presence of each finding slot (medfuse.model.findings)
    finding_boxes: torch.Tensor | None = None  # (B, Q, 4) cx, cy, w, h in [0, 1]
    cxr_summary: torch.Tensor | None = None  # (B, d) mean CXR token (encoder pretraining reads it)
    ecg_summary: torch.Tensor | None = None  # (B, d) mean ECG token


@contextmanager
def _seeded(seed: int):
    # Deterministic initialisation without touching the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _mlp(d_in: int, d_hidden: int, d_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_hidden, d_out))


class FusionModel(nn.Module):
    """Encoders + fusion strategy + disease clues + disease head (logits).

    `n_labs` is the number of lab-catalogue keys (L in `labs` (B, L, 2)); `n_genes` the
    genomics vocabulary size (G in `genomics` (B, G)).
    """

    def __init__(self, config: ModelConfig, panel: Panel, n_labs: int, n_genes: int):
        super().__init__()
        self.config = config
        self.disease_keys = list(panel.keys)
        self.modalities = MODALITIES
        d, D, M = config.d_model, len(panel), len(MODALITIES)
        self.n_diseases = D
        k = config.tokens
        offsets, start = {}, 0
        for m in MODALITIES:
            offsets[m] = slice(start, start + k[m])
            start += k[m]
        self.modality_slices: dict[str, slice] = dict(offsets)
        self.n_modality_tokens = start
        if config.use_clues:
            self.modality_slices["clue"] = slice(start, start + D)
        self.register_buffer("token_modality",
                             torch.cat([torch.full((k[m],), i, dtype=torch.long) for i, m in enumerate(MODALITIES)]),
                             persistent=False)  # (N_mod,)

        with _seeded(config.seed):
            h, drop = config.n_heads, config.dropout
            if config.fusion == "early":
                self.raw_dims = {
                    "ecg": 12 * EARLY_ECG_STEPS + 12, "cxr": EARLY_CXR_SIDE**2, "labs": 2 * n_labs,
                    "vitals": 2 * len(VITAL_FIELDS), "notes": NOTES_DIM, "genomics": n_genes,
                }
                self.raw_tokenizers = nn.ModuleDict({m: nn.Linear(self.raw_dims[m], k[m] * d) for m in MODALITIES})
                self.raw_norm = nn.LayerNorm(d)
                self.joint = _mlp(sum(self.raw_dims.values()) + M, 2 * d, d, drop)
            else:
                self.encoders = nn.ModuleDict({
                    "ecg": ECGEncoder(d, k["ecg"], h, config.ecg_channels, drop),
                    "cxr": CXREncoder(d, k["cxr"], h, config.cxr_size, config.cxr_vit, config.cxr_vision_model, drop),
                    "labs": TabularEncoder(n_labs, d, k["labs"], h, drop),
                    "vitals": TabularEncoder(len(VITAL_FIELDS), d, k["vitals"], h, drop),
                    "notes": NotesEncoder(NOTES_DIM, d, k["notes"], drop),
                    "genomics": GenomicsEncoder(n_genes, d, k["genomics"], h, drop),
                })
            if config.fusion != "early":
                self.finding_head = FindingHead(d, h, len(config.finding_labels), drop)
            self.type_embed = nn.Parameter(torch.randn(M, d) * 0.02)  # (M, d) which modality a token is from
            self.aux_heads = AuxiliaryHeads(MODALITIES, d, D)
            self.clues = ClueTokens(M, D, d) if config.use_clues else None
            if config.fusion == "feature":
                self.joint = _mlp(M * d + M, 2 * d, d, drop)
            elif config.fusion == "hybrid":
                self.perception = ModalityPerception(d, h, M, config.perception_layers, drop)
            elif config.fusion == "late":
                self.vote = nn.Parameter(torch.zeros(M))  # (M,) learned vote logits, uniform at start
            if config.fusion != "late":
                d_head = d + (d if config.use_clues else 0)
                self.head = nn.Sequential(nn.LayerNorm(d_head), _mlp(d_head, d, D, drop))

    # ------------------------------------------------------------------ modality tokens
    def _run_present(self, fn: Callable[..., torch.Tensor], rows: torch.Tensor, out_shape: tuple[int, ...],
                     *inputs: torch.Tensor) -> torch.Tensor:
        """fn(*inputs[rows]) scattered into zeros of `out_shape`: encoders only see present cases."""
        ref = inputs[0]
        out = ref.new_zeros(out_shape)
        idx = rows.nonzero(as_tuple=True)[0]
        if idx.numel():
            out = out.index_copy(0, idx, fn(*(x.index_select(0, idx) for x in inputs)))
        return out

    def _cxr_tokens(self, cxr: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, k, d) image tokens (0 where no image), finding logits (B, Q) and boxes (B, Q, 4)."""
        B, k, d = cxr.shape[0], self.config.tokens["cxr"], self.config.d_model
        q = self.finding_head.n_queries
        tokens = cxr.new_zeros(B, k, d)
        logits = cxr.new_full((B, q), -20.0)  # no image: no finding
        boxes = cxr.new_zeros(B, q, 4)
        idx = rows.nonzero(as_tuple=True)[0]
        if idx.numel():
            t, patches = self.encoders["cxr"](cxr.index_select(0, idx), return_patches=True)
            f_logits, f_boxes = self.finding_head(patches)
            tokens = tokens.index_copy(0, idx, t)
            logits = logits.index_copy(0, idx, f_logits)
            boxes = boxes.index_copy(0, idx, f_boxes)
        return tokens, logits, boxes

    def _raw_vectors(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        B = batch["present"].shape[0]
        ecg = F.adaptive_avg_pool1d(batch["ecg"], EARLY_ECG_STEPS).flatten(1)  # (B, 12*64)
        return {
            "ecg": torch.cat([ecg, batch["ecg_lead_mask"]], dim=1),  # (B, 12*64 + 12)
            "cxr": F.adaptive_avg_pool2d(batch["cxr"], EARLY_CXR_SIDE).flatten(1),  # (B, 256)
            "labs": batch["labs"].reshape(B, -1),  # (B, 2L)
            "vitals": batch["vitals"].reshape(B, -1),  # (B, 12)
            "notes": batch["notes_emb"],  # (B, 384)
            "genomics": batch["genomics"],  # (B, G)
        }

    def modality_tokens(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        """modality -> (B, k_m, d) tokens (exactly 0 where missing), and early fusion's raw vectors."""
        tokens, raw, _ = self._encode(batch)
        return tokens, raw

    def _encode(self, batch: dict[str, torch.Tensor]):
        """`modality_tokens` + the finding head's (logits (B, Q), boxes (B, Q, 4)), None for early fusion."""
        present = batch["present"]  # (B, M)
        B, d = present.shape[0], self.config.d_model
        k = self.config.tokens
        tokens: dict[str, torch.Tensor] = {}
        raw = None
        findings: tuple[torch.Tensor, torch.Tensor] | None = None
        if self.config.fusion == "early":
            raw = self._raw_vectors(batch)
            for i, m in enumerate(MODALITIES):
                raw[m] = torch.where(present[:, i : i + 1], raw[m], torch.zeros_like(raw[m]))  # (B, F_m)
                t = self.raw_tokenizers[m](raw[m]).view(B, k[m], d)
                tokens[m] = self.raw_norm(t)
        else:
            enc = self.encoders
            inputs = {
                "ecg": (enc["ecg"], batch["ecg"], batch["ecg_lead_mask"]),
                "cxr": (enc["cxr"], batch["cxr"]),
                "labs": (enc["labs"], batch["labs"]),
                "vitals": (enc["vitals"], batch["vitals"]),
                "notes": (enc["notes"], batch["notes_emb"]),
                "genomics": (enc["genomics"], batch["genomics"]),
            }
            for i, m in enumerate(MODALITIES):
                if m == "cxr":
                    continue  # below: its patch tokens also feed the finding head
                fn, *xs = inputs[m]
                tokens[m] = self._run_present(fn, present[:, i], (B, k[m], d), *xs)  # (B, k_m, d)
            tokens["cxr"], *findings = self._cxr_tokens(batch["cxr"], present[:, MODALITIES.index("cxr")])
        for i, m in enumerate(MODALITIES):
            rows = present[:, i, None, None]  # (B, 1, 1)
            tokens[m] = torch.where(rows, tokens[m] + self.type_embed[i], torch.zeros_like(tokens[m]))
        return tokens, raw, findings

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict[str, torch.Tensor]) -> FusionOutput:
        """Fuse a collated batch (see `medfuse.model.inputs`) into a `FusionOutput`."""
        present = batch["present"].bool()  # (B, M)
        B, M = present.shape
        tokens, raw, findings = self._encode(batch)
        aux = self.aux_heads(tokens)  # modality -> (B, D)
        aux_stack = torch.stack([aux[m] for m in MODALITIES], dim=1)  # (B, M, D)
        seq = torch.cat([tokens[m] for m in MODALITIES], dim=1)  # (B, N_mod, d)
        token_present = present[:, self.token_modality]  # (B, N_mod)
        fusion = self.config.fusion

        clue_tokens = self.clues(aux_stack, present) if self.clues is not None else None  # (B, D, d)
        summaries = torch.stack([tokens[m].mean(1) for m in MODALITIES], dim=1)  # (B, M, d), 0 where missing
        if fusion == "hybrid":
            per = self.perception(seq, self.token_modality, present)
            seq, gates, pooled = per.tokens, per.gates, per.pooled
        elif fusion == "late":
            gates = masked_softmax(self.vote.expand(B, M), present)  # (B, M)
            pooled = (gates[..., None] * summaries).sum(1)  # (B, d)
        else:
            blocks = [raw[m] for m in MODALITIES] if fusion == "early" else [summaries[:, i] for i in range(M)]
            x = torch.cat([*blocks, present.to(seq.dtype)], dim=1)  # (B, sum F_m + M)
            pooled = self.joint(x)  # (B, d)
            gates = self._norm_attribution(self.joint[0], blocks, present)  # (B, M)

        if fusion == "late":
            disease_logits = (gates[..., None] * aux_stack).sum(1)  # (B, D)
        else:
            head_in = pooled if clue_tokens is None else torch.cat([pooled, clue_tokens.mean(1)], dim=1)
            pooled = head_in
            disease_logits = self.head(head_in)  # (B, D)

        token_mask = token_present
        slices = dict(self.modality_slices)
        if clue_tokens is not None:
            seq = torch.cat([seq, clue_tokens], dim=1)  # (B, N_mod + D, d)
            any_present = present.any(1, keepdim=True).expand(B, clue_tokens.shape[1])  # (B, D)
            token_mask = torch.cat([token_present, any_present], dim=1)
        findings = findings or (None, None)
        return FusionOutput(tokens=seq, token_mask=token_mask, modality_slices=slices, gates=gates,
                            disease_logits=disease_logits, aux_logits=aux, pooled=pooled,
                            finding_logits=findings[0], finding_boxes=findings[1],
                            cxr_summary=summaries[:, MODALITIES.index("cxr")],
                            ecg_summary=summaries[:, MODALITIES.index("ecg")])

    @staticmethod
    def _norm_attribution(first: nn.Linear, blocks: list[torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """(B, M) share of ||W_m x_m|| among present modalities (the joint layer's input blocks)."""
        norms, start = [], 0
        for x in blocks:
            w = first.weight[:, start : start + x.shape[1]]  # (hidden, F_m)
            norms.append((x @ w.T).norm(dim=1))  # (B,)
            start += x.shape[1]
        norm = torch.stack(norms, dim=1).detach()  # (B, M); an attribution, not a trained quantity
        norm = torch.where(present, norm, torch.zeros_like(norm))
        return norm / norm.sum(1, keepdim=True).clamp(min=1e-12)

    # ------------------------------------------------------------------ loss
    def loss(self, batch: dict[str, torch.Tensor], out: FusionOutput) -> torch.Tensor:
        """BCE on the disease logits + aux_loss_weight * mean BCE of the present modalities' aux heads
        (+ for hybrid, gate_balance * mean KL(gates || uniform over the present modalities))."""
        if "labels" not in batch:
            raise ValueError("the batch has no labels: the loss needs labelled cases")
        y = batch["labels"].to(out.disease_logits.dtype)  # (B, D)
        main = F.binary_cross_entropy_with_logits(out.disease_logits, y)
        present = batch["present"].to(y.dtype)  # (B, M)
        per_modality = torch.stack(
            [F.binary_cross_entropy_with_logits(out.aux_logits[m], y, reduction="none").mean(1) for m in MODALITIES], dim=1
        )  # (B, M)
        aux = (per_modality * present).sum() / present.sum().clamp(min=1)
        total = main + self.config.aux_loss_weight * aux
        if self.config.fusion == "hybrid" and self.config.gate_balance > 0:
            total = total + self.config.gate_balance * gate_kl_to_uniform(out.gates, batch["present"].bool())
        return total

    def trainable_parts(self, stage: str) -> list[nn.Module | nn.Parameter]:
        """The parts of the fusion model that train in `stage`.

        encoders: everything. sft (with `train_fusion`): what sits above the encoders (the
        strategy's fusion layer, clue tokens, disease head, auxiliary heads, modality type
        embedding); the encoders stay frozen. align and grpo: nothing.
        """
        if stage == "encoders":
            return [self]
        if stage != "sft":
            return []
        parts: list[nn.Module | nn.Parameter] = [self.aux_heads, self.type_embed]
        if self.clues is not None:
            parts.append(self.clues)
        if self.config.fusion in ("early", "feature"):
            parts.append(self.joint)
        if self.config.fusion == "hybrid":
            parts.append(self.perception)
        if self.config.fusion != "late":
            parts.append(self.head)
        return parts

    def n_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (all, or only those requiring gradients)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def gate_kl_to_uniform(gates: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Mean over cases of KL(gates || uniform over the present modalities); 0 when gates are uniform.

    gates (B, M) sum to 1 over `present` (B, M). The penalty keeps softmax gates from a
    winner-take-all collapse (measured on a synthetic cohort: with clue tokens and no
    penalty, one modality took 0.996 of the weight on every case) while still letting a
    case's gates move where the data favour a modality.
    """
    n = present.sum(1, keepdim=True).clamp(min=1).to(gates.dtype)  # (B, 1)
    safe = torch.where(present, gates, torch.ones_like(gates)).clamp(min=1e-12)  # log(1) = 0 off the support
    kl = (torch.where(present, gates, torch.zeros_like(gates)) * torch.log(safe * n)).sum(1)  # (B,)
    rows = present.any(1)
    return kl[rows].mean() if rows.any() else gates.sum() * 0


def tokens_per_case(config: ModelConfig, n_diseases: int) -> int:
    """Length N of the fused sequence: sum of per-modality tokens (+ one clue token per disease)."""
    return sum(config.tokens[m] for m in MODALITIES) + (n_diseases if config.use_clues else 0)


__all__ = ["FusionModel", "FusionOutput", "gate_kl_to_uniform", "tokens_per_case"]
