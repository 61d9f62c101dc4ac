"""Mixed-source training for the encoder stage: synthetic and real cohorts together, each
source with its own patient-level split, loss weight and annotated targets.

A real chest X-ray set annotates one or two things (Kermany: pneumonia or not; NIH: 14
image findings, one of them pneumonia) and says nothing about atrial fibrillation or
diabetes. An unannotated target is not a negative, so each training item carries masks:

- `label_mask` (D,): 1 for the panel diseases its source annotates; the disease BCE and
  the per-modality auxiliary BCE average over masked targets only (`masked_fusion_loss`),
  each target scaled by its source's `weight`;
- `finding_label_mask` (L,) and `finding_image_labels` (L,): image-level presence of the
  finding labels the source annotates (NIH's cardiomegaly, effusion, nodule, ...). The
  finding head's slots have no image-level output, so the image-level logit of a label
  is the max over its slots (multiple-instance learning: "present" means one slot fires),
  trained by BCE on annotated labels only (`image_finding_loss`);
- `box_rows` (): whether the source's finding boxes are complete enough to train the
  slot presence + box regression (the synthetic cohort; not real sets whose labels mostly
  come without boxes, where every unboxed slot would be taught "absent").

Splits: every source is split on its own by hashed patient id (`source_split`), so no
patient is in two splits of a source, and sources never share patients (different
sets). A source may set its own `fractions` (train, val, test); its test part is never
trained on nor calibrated on.

Calibration with masks (`fit_head_masked`): a disease's temperature and F1-max
threshold are fitted on the validation rows that annotate it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medfuse.errors import ConfigError, InputError
from medfuse.record.case import MODALITIES, PatientCase

SOURCE_KEYS = ("path", "name", "weight", "diseases", "findings", "boxes", "fractions")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclass(frozen=True)
class Source:
    """One training cohort and what it annotates."""

    name: str  # shown in logs and model cards (a folder name, never a full path)
    path: str
    weight: float = 1.0  # multiplies every annotated target's loss term of this source
    diseases: tuple[str, ...] | None = None  # panel keys it annotates; None: every panel disease
    findings: tuple[str, ...] = ()  # finding labels it annotates at image level
    boxes: bool = False  # its finding boxes train the slot presence + box regression
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS  # patient-level train / val / test


def check_source_entries(entries: Any, key: str = "extra_cohorts") -> None:
    """Raise ConfigError naming the first malformed entry of an `extra_cohorts` list
    (structure and types; disease and finding names are checked against the model)."""
    if not isinstance(entries, list):
        raise ConfigError(f"{key}: must be a list of {{path, weight, diseases, ...}} mappings")
    for i, entry in enumerate(entries):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a mapping with at least `path`")
        unknown = sorted(set(entry) - set(SOURCE_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(SOURCE_KEYS)})")
        if not isinstance(entry.get("path"), str) or not entry["path"]:
            raise ConfigError(f"{where}.path: required (a cohort folder)")
        weight = entry.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight <= 0:
            raise ConfigError(f"{where}.weight: must be a number > 0, got {weight!r}")
        for name in ("diseases", "findings"):
            value = entry.get(name)
            if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{where}.{name}: must be a list of names")
        if "boxes" in entry and not isinstance(entry["boxes"], bool):
            raise ConfigError(f"{where}.boxes: must be true or false")
        fractions = entry.get("fractions", DEFAULT_FRACTIONS)
        if (not isinstance(fractions, list | tuple) or len(fractions) != 3
                or not all(isinstance(f, int | float) and f >= 0 for f in fractions)
                or abs(sum(fractions) - 1.0) > 1e-6 or fractions[0] <= 0):
            raise ConfigError(f"{where}.fractions: must be [train, val, test] >= 0 summing to 1 (train > 0)")


def build_sources(primary: str, entries: list[dict[str, Any]], panel_keys: Sequence[str],
                  finding_labels: Sequence[str]) -> list[Source]:
    """The primary cohort (every disease, every finding, boxes; 80/10/10) followed by the
    `extra_cohorts` entries; raises ConfigError for a disease or finding the model lacks."""
    sources = [Source(name=Path(primary).resolve().name, path=primary, diseases=None,
                      findings=tuple(finding_labels), boxes=True)]
    for i, entry in enumerate(entries):
        diseases = entry.get("diseases")
        findings = entry.get("findings") or []
        for name, given, known in (("diseases", diseases or [], panel_keys), ("findings", findings, finding_labels)):
            bad = [v for v in given if v not in known]
            if bad:
                raise ConfigError(f"extra_cohorts[{i}].{name}: {bad[0]!r} is not one of the model's "
                                  f"({', '.join(known)})")
        sources.append(Source(
            name=entry.get("name") or Path(entry["path"]).resolve().name, path=entry["path"],
            weight=float(entry.get("weight", 1.0)), diseases=None if diseases is None else tuple(diseases),
            findings=tuple(findings), boxes=bool(entry.get("boxes", False)),
            fractions=tuple(float(f) for f in entry.get("fractions", DEFAULT_FRACTIONS))))  # type: ignore[arg-type]
    return sources


def source_split(source: Source, split: str, seed: int = 0, limit: int | None = None) -> list[PatientCase]:
    """The labelled cases of one patient-level split of one source (hashed patient id,
    the source's own fractions), in folder order; unlabelled cases are left out."""
    from medfuse.record.store import patient_split, read_case, read_index

    cohort = Path(source.path)
    if not cohort.is_dir():
        raise InputError(cohort, "no such cohort folder")
    index = read_index(cohort)
    if index.empty:
        raise InputError(cohort, "the cohort has no cases")
    df = patient_split(index, fractions=source.fractions, seed=seed)
    folders = sorted(df.loc[df["split"] == split, "folder"])
    if limit is not None:
        folders = folders[:limit]
    cases = (read_case(cohort / f) for f in folders)
    return [c for c in cases if c.labels is not None]


def split_size(source: Source, split: str, seed: int = 0) -> int:
    """How many cases (labelled or not) of `source` fall in `split`, from its index alone."""
    from medfuse.record.store import patient_split, read_index

    index = read_index(Path(source.path))
    return int((patient_split(index, fractions=source.fractions, seed=seed)["split"] == split).sum())


def image_finding_labels(case: PatientCase, finding_labels: Sequence[str]) -> np.ndarray:
    """(L,) 1.0 where the case's first image has a finding of that label (boxed or not)."""
    have = {f.label for f in (case.labels.findings if case.labels else []) if f.image_index == 0}
    return np.array([label in have for label in finding_labels], dtype=np.float32)


def annotate_items(items: list[dict[str, torch.Tensor]], cases: Sequence[PatientCase], source: Source,
                   panel_keys: Sequence[str], finding_labels: Sequence[str]) -> None:
    """Add the masks of the module docstring to featurized `items` of `source`'s `cases`."""
    disease_mask = torch.tensor([source.diseases is None or k in source.diseases for k in panel_keys],
                                dtype=torch.float32)  # (D,)
    finding_mask = torch.tensor([label in source.findings for label in finding_labels], dtype=torch.float32)  # (L,)
    for item, case in zip(items, cases, strict=True):
        item["label_mask"] = disease_mask.clone()
        item["finding_label_mask"] = finding_mask.clone()
        item["finding_image_labels"] = torch.from_numpy(image_finding_labels(case, finding_labels))
        item["box_rows"] = torch.tensor(source.boxes)
        item["source_weight"] = torch.tensor(source.weight, dtype=torch.float32)


def _masked_bce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum of weighted BCE terms / number of annotated terms (0 when none is annotated)."""
    terms = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    return (terms * weights).sum() / (weights > 0).sum().clamp(min=1)


def masked_fusion_loss(fusion: torch.nn.Module, batch: dict[str, torch.Tensor], out: Any) -> torch.Tensor:
    """`FusionModel.loss` with targets masked by `label_mask` (B, D) and scaled by
    `source_weight` (B,): disease BCE + aux_loss_weight * auxiliary BCE of the present
    modalities + the fusion strategy's own term."""
    y = batch["labels"]  # (B, D)
    weights = batch["label_mask"] * batch["source_weight"][:, None]  # (B, D)
    main = _masked_bce(out.disease_logits, y, weights)
    present = batch["present"].to(weights.dtype)  # (B, M)
    # One mean over (case, present modality, annotated disease) terms: with every target
    # annotated and weight 1 this is exactly FusionModel.loss's auxiliary term.
    aux_logits = torch.stack([out.aux_logits[m] for m in MODALITIES], dim=1)  # (B, M, D)
    aux = _masked_bce(aux_logits, y[:, None, :].expand_as(aux_logits), weights[:, None, :] * present[:, :, None])
    total = main + fusion.config.aux_loss_weight * aux
    extra = fusion.strategy.extra_loss(fusion, batch, out)
    return total if extra is None else total + extra


def image_finding_logits(finding_logits: torch.Tensor, n_labels: int) -> torch.Tensor:
    """(B, L) image-level logit of each finding label: the max over its slots of (B, Q)."""
    return finding_logits.view(finding_logits.shape[0], n_labels, -1).amax(dim=-1)


def image_finding_loss(finding_logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """BCE of `image_finding_logits` on the annotated finding labels of images, source-weighted."""
    has_image = batch["present"][:, MODALITIES.index("cxr")].to(finding_logits.dtype)  # (B,)
    weights = batch["finding_label_mask"] * (batch["source_weight"] * has_image)[:, None]  # (B, L)
    logits = image_finding_logits(finding_logits, batch["finding_label_mask"].shape[1])
    return _masked_bce(logits, batch["finding_image_labels"], weights)


def fit_head_masked(head: Any, logits: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> None:
    """Fit each disease's temperature and F1-max threshold on the rows that annotate it
    (`mask` (n, D)); a disease without both classes there keeps its values and is listed
    in `head.uncalibrated`."""
    from medfuse.model.head import DiseaseHead

    uncalibrated = []
    for j, key in enumerate(head.diseases):
        rows = mask[:, j].astype(bool)
        z, y = logits[rows, j : j + 1], labels[rows, j : j + 1]  # (m, 1)
        if not 0 < y.sum() < len(y):
            uncalibrated.append(key)
            continue
        one = DiseaseHead([key])
        one.fit_temperature(z, y)
        one.fit_thresholds(one.predict_proba(z), y)
        head.temperature[j], head.thresholds[j] = one.temperature[0], one.thresholds[0]
    head.per_disease_temperature = True
    head.uncalibrated = uncalibrated
    head.n_fit = len(logits)


def source_summary(source: Source, n_train: int, n_val: int, n_test: int) -> dict[str, Any]:
    """A source's model-card entry: name, weight, what it annotates and its split sizes."""
    return {"name": source.name, "weight": source.weight,
            "diseases": "all" if source.diseases is None else list(source.diseases),
            "findings": list(source.findings), "boxes": source.boxes, "fractions": list(source.fractions),
            "cases": {"train": n_train, "val": n_val, "test": n_test}}
