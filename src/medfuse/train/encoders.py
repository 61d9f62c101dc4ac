"""Stage 1, `medfuse train encoders`: the fusion model (encoders, fusion, clues, disease head).

Objective per batch (`EncoderObjective.forward`):
- the fusion model's own loss: disease BCE + per-modality auxiliary BCE (the clue scores) +
  the gate balance penalty (`FusionModel.loss`);
- InfoNCE (TRRG, CLIP-style, symmetric) between the mean image token and the report's
  FINDINGS text, and between the mean ECG token and the ECG reading's text; texts are
  all-MiniLM-L6-v2 embeddings (frozen), each side projected to a shared 128-d space by a
  training-only linear map; cases without the text or the signal are left out;
- per-finding presence BCE + L1 + GIoU box regression on the image patches (`findings.py`).
Afterwards the disease head is temperature-scaled and thresholded (F1-max) on the
validation split, and the checkpoint's model card gets validation metrics that no fitted
operating point has seen (`calibrate`: 2-fold cross-fitting by patient).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medfuse.model.inputs import NOTES_DIM, collate, embed_texts, featurize_many
from medfuse.record.case import MODALITIES, PatientCase
from medfuse.train.common import shard, split_cases
from medfuse.train.config import EncodersConfig
from medfuse.train.loop import Stage, StepReport, loss_report, run_loop, start_stage, train_only
from medfuse.train.mixed import (annotate_items, build_sources, fit_head_masked, image_finding_loss,
                                 masked_fusion_loss, source_split, source_summary, split_size)

CONTRAST_DIM = 128
FINDING_THRESHOLDS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7)


def report_findings_text(case: PatientCase) -> str | None:
    """The FINDINGS section of the case's reference report (the image's own description)."""
    report = case.labels.report if case.labels is not None else None
    if not report:
        return None
    text = report.split("IMPRESSION:")[0].replace("FINDINGS:", "").strip()
    return text or None


def ecg_reading_text(case: PatientCase) -> str | None:
    """The ECG reader's statements as one text (rhythm, rate, abnormal measurements)."""
    if case.ecg is None or case.ecg.signal is None:
        return None
    from medfuse.interpret.ecg import ecg_evidence, interpret_ecg

    sex = case.demographics.sex if case.demographics else None
    items = ecg_evidence(interpret_ecg(case.ecg, sex=sex))
    parts = [f"{e.item} {e.interpretation}" for e in items if e.abnormal or e.item == "rhythm"]
    return "; ".join(parts) if parts else None


@dataclass
class EncoderData:
    """Featurized cases + finding targets + contrastive text embeddings, held in memory."""

    items: list[dict[str, torch.Tensor]]

    @classmethod
    def build(cls, cases: list[PatientCase], model, with_texts: bool) -> EncoderData:
        from medfuse.model.findings import finding_targets

        items = featurize_many(cases, model.config, model.stats, model.panel)
        labels = model.config.finding_labels
        for case, item in zip(cases, items, strict=True):
            presence, boxes = finding_targets(case, labels)
            item["finding_presence"] = torch.from_numpy(presence)  # (Q,)
            item["finding_boxes"] = torch.from_numpy(boxes)  # (Q, 4)
            if "labels" not in item:
                item["labels"] = torch.zeros(len(model.panel))
        if with_texts:
            for key, fn in (("report", report_findings_text), ("ecg_text", ecg_reading_text)):
                texts = [fn(c) for c in cases]
                have = [i for i, t in enumerate(texts) if t]
                emb = embed_texts([texts[i] for i in have]) if have else np.zeros((0, NOTES_DIM), np.float32)
                full = np.zeros((len(cases), NOTES_DIM), dtype=np.float32)
                full[have] = emb
                for i, item in enumerate(items):
                    item[f"{key}_emb"] = torch.from_numpy(full[i])  # (384,)
                    item[f"has_{key}"] = torch.tensor(i in set(have))
        return cls(items)

    def batch(self, idx) -> dict[str, torch.Tensor]:
        return collate([self.items[int(i)] for i in idx])


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of matching rows of a (n, c) and b (n, c) (CLIP's loss); 0 for n < 2."""
    if a.shape[0] < 2:
        return a.sum() * 0
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.T / temperature  # (n, n)
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class EncoderObjective(nn.Module):
    """The fusion model + training-only contrastive projections; forward(batch) -> losses."""

    def __init__(self, fusion: nn.Module, cfg: EncodersConfig):
        super().__init__()
        self.fusion = fusion
        self.cfg = cfg
        d = fusion.config.d_model
        self.image_proj = nn.Linear(d, CONTRAST_DIM)
        self.ecg_proj = nn.Linear(d, CONTRAST_DIM)
        self.text_proj = nn.Linear(NOTES_DIM, CONTRAST_DIM)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from medfuse.model.findings import finding_loss

        out = self.fusion(batch)
        mixed = "label_mask" in batch  # mixed sources (train.mixed): masked, source-weighted targets
        losses = {"fusion": masked_fusion_loss(self.fusion, batch, out) if mixed else self.fusion.loss(batch, out)}
        present = batch["present"]  # (B, M)
        if self.cfg.contrastive_weight > 0 and "report_emb" in batch:
            rows = present[:, MODALITIES.index("cxr")] & batch["has_report"]
            losses["image_text"] = info_nce(self.image_proj(out.cxr_summary[rows]),
                                            self.text_proj(batch["report_emb"][rows]), self.cfg.contrastive_temperature)
            rows = present[:, MODALITIES.index("ecg")] & batch["has_ecg_text"]
            losses["ecg_text"] = info_nce(self.ecg_proj(out.ecg_summary[rows]),
                                          self.text_proj(batch["ecg_text_emb"][rows]), self.cfg.contrastive_temperature)
        if self.cfg.finding_weight > 0 and out.finding_logits is not None:
            boxed = present[:, MODALITIES.index("cxr")] & (batch["box_rows"] if mixed else True)
            losses["findings"] = finding_loss(out.finding_logits, out.finding_boxes, batch["finding_presence"],
                                              batch["finding_boxes"], boxed)
            if mixed:
                losses["findings"] = losses["findings"] + image_finding_loss(out.finding_logits, batch)
        total = losses["fusion"]
        total = total + self.cfg.contrastive_weight * (losses.get("image_text", 0) + losses.get("ecg_text", 0))
        total = total + self.cfg.finding_weight * losses.get("findings", 0)
        losses["loss"] = total
        return losses


@torch.no_grad()
def predict(fusion: nn.Module, data: EncoderData, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Disease logits (n, D), labels (n, D), finding probabilities (n, Q) and boxes (n, Q, 4)
    (+ the mixed-source `label_mask` (n, D) and `box_rows` (n,) where the items carry them)."""
    fusion.eval()
    logits, labels, fprob, fbox, has_cxr = [], [], [], [], []
    masks: dict[str, list[np.ndarray]] = {"label_mask": [], "box_rows": []}
    n = len(data.items)
    for start in range(0, n, batch_size):
        b = data.batch(range(start, min(n, start + batch_size)))
        out = fusion(b)
        logits.append(out.disease_logits.float().numpy())
        labels.append(b["labels"].numpy())
        has_cxr.append(b["present"][:, MODALITIES.index("cxr")].numpy())
        for key, kept in masks.items():
            if key in b:
                kept.append(b[key].numpy())
        if out.finding_logits is not None:
            fprob.append(torch.sigmoid(out.finding_logits).numpy())
            fbox.append(out.finding_boxes.numpy())
    res = {"logits": np.concatenate(logits), "labels": np.concatenate(labels), "has_cxr": np.concatenate(has_cxr)}
    if fprob:
        res["finding_prob"], res["finding_boxes"] = np.concatenate(fprob), np.concatenate(fbox)
    res.update({key: np.concatenate(kept) for key, kept in masks.items() if kept})
    return res


def grounding_by_label(cases: list[PatientCase], found: list[list[tuple[str, list[int]]]],
                       labels: list[str]) -> dict[str, Any] | None:
    """Grounding metrics (Acc@IoU, mean IoU, Hungarian P/R/F1) over (image, finding label) pairs.

    `found[i]` are the (label, 0-999 box) findings reported for case i; cases without an
    image are skipped; a box only counts against gold boxes of its own label.
    """
    from medfuse.eval.metrics.grounding import grounding_metrics

    preds, golds = [], []
    for case, reported in zip(cases, found, strict=True):
        if not case.cxr:
            continue
        gold = {f.label: f.boxes for f in (case.labels.findings if case.labels else []) if f.image_index == 0}
        for label in labels:
            g = gold.get(label, [])
            p = [box for lab, box in reported if lab == label]
            if g or p:
                preds.append(p)
                golds.append(g)
    if not golds:
        return None
    m = grounding_metrics(preds, golds)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}


def finding_metrics(cases: list[PatientCase], pred: dict[str, np.ndarray], labels: list[str],
                    threshold: float) -> dict[str, Any] | None:
    """`grounding_by_label` of the finding head's predictions (`predict`) at `threshold`."""
    if "finding_prob" not in pred:
        return None
    return grounding_by_label(cases, _decoded_findings(pred, labels, threshold), labels)


def _decoded_findings(pred: dict[str, np.ndarray], labels: list[str], threshold: float) -> list[list]:
    """The (label, box) findings per case of the finding head's predictions at `threshold`."""
    from medfuse.model.findings import decode_findings

    return [decode_findings(pred["finding_prob"][i], pred["finding_boxes"][i], labels, threshold)
            if pred["has_cxr"][i] else [] for i in range(len(pred["has_cxr"]))]


def _rows(pred: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The predictions (`predict`) of the cases at positions `rows`."""
    return {k: v[rows] for k, v in pred.items()}


def summarise_diagnosis(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, names: list[str]) -> dict[str, Any]:
    """The diagnosis figures of a model card: Jaccard, micro/macro F1, macro AUROC, pooled
    ECE, and per disease F1 and ECE (4 decimals; an undefined value is None)."""
    from medfuse.eval.metrics.classification import multilabel_metrics

    def rounded(value: Any) -> Any:
        return (None if math.isnan(value) else round(float(value), 4)) if isinstance(value, float) else value

    m = multilabel_metrics(y_true.astype(int), y_pred.astype(int), probs, names)
    out = {k: rounded(m.get(k)) for k in ("jaccard", "micro_f1", "macro_f1", "macro_auroc", "ece", "n_samples")}
    out["per_disease_f1"] = {n: rounded(v["f1"]) for n, v in m["per_class"].items()}
    out["per_disease_ece"] = {n: rounded(v["ece"]) for n, v in m["per_class"].items()}
    return out


def diagnosis_metrics(head, pred: dict[str, np.ndarray], names: list[str]) -> dict[str, Any]:
    """`summarise_diagnosis` of the disease head at its thresholds on predictions (`predict`)."""
    probs = head.predict_proba(pred["logits"])
    y_pred = (probs >= np.asarray(head.thresholds)[None, :]).astype(int)
    return summarise_diagnosis(pred["labels"], y_pred, probs, names)


def patient_halves(cases: list[PatientCase]) -> np.ndarray:
    """A bool mask (n,) splitting cases into two halves by patient: every patient's cases on
    one side, patients ordered by a hash of their id and dealt out alternately."""
    import hashlib

    patients = sorted({c.group_id for c in cases}, key=lambda g: hashlib.sha256(f"calibration:{g}".encode()).hexdigest())
    first = set(patients[::2])
    return np.array([c.group_id in first for c in cases], dtype=bool)


def cross_fit_folds(cases: list[PatientCase]) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """The (fit rows, score rows) index pairs of 2-fold cross-fitting by patient
    (`patient_halves`: each half is scored with values fitted on the other half) and what
    the scores are; with fewer than two patients per half, one in-sample fold (all, all)."""
    half = patient_halves(cases)
    if min(len({c.group_id for c, h in zip(cases, half, strict=True) if h == side}) for side in (True, False)) >= 2:
        first, second = np.flatnonzero(half), np.flatnonzero(~half)
        return [(first, second), (second, first)], "held out: 2-fold cross-fit by patient"
    every = np.arange(len(cases))
    return [(every, every)], "in-sample: the cases the thresholds were fitted on"


def _fit_head(head, pred: dict[str, np.ndarray]) -> None:
    """Fit `head`'s temperature, then its F1-max thresholds, on predictions (`predict`);
    with a mixed-source `label_mask`, each disease on the rows that annotate it."""
    if "label_mask" in pred:
        fit_head_masked(head, pred["logits"], pred["labels"], pred["label_mask"])
        return
    head.fit_temperature(pred["logits"], pred["labels"])
    head.fit_thresholds(head.predict_proba(pred["logits"]), pred["labels"])


def _best_finding_threshold(cases: list[PatientCase], pred: dict[str, np.ndarray], labels: list[str]) -> float | None:
    """The finding presence threshold with the best grounding F1 (Hungarian, IoU >= 0.5)
    on these cases, the higher one on ties; None when there is nothing to score."""
    scored = {t: finding_metrics(cases, pred, labels, t) for t in FINDING_THRESHOLDS}
    scored = {t: m for t, m in scored.items() if m is not None}
    return max(scored, key=lambda t: (scored[t]["f1"], -t)) if scored else None


def calibrate(model, val_cases: list[PatientCase], val: EncoderData | None = None) -> dict[str, Any]:
    """Fit the disease head's temperature and F1-max thresholds (and the finding head's
    presence threshold) on validation cases, and report metrics no fitted value has seen.

    The scores come from 2-fold cross-fitting by patient (`patient_halves`): each half is
    scored with the temperature and thresholds fitted on the other half, so no case is
    scored at an operating point fitted on it; the model keeps the values fitted on all
    the cases. With fewer than two patients per half the scores are in-sample, and
    `scored_on` says so. Returns {"diagnosis": `summarise_diagnosis` + scored_on,
    "findings": grounding metrics + threshold + scored_on, or None}.
    """
    import copy

    val = val or EncoderData.build(val_cases, model, with_texts=False)
    pred = predict(model.fusion, val)
    labels = model.config.finding_labels
    findings_trained = bool(model.card.get("findings_trained")) and "finding_prob" in pred
    folds, scored_on = cross_fit_folds(val_cases)
    # Mixed sources: the head fits each disease on the rows that annotate it, but the pooled
    # figures (and grounding) are scored on the fully annotated, boxed cases only: a real
    # set's silence on a disease is not a negative (per-source figures: train.source_card).
    full = pred["label_mask"].all(1) & pred["box_rows"] if "label_mask" in pred else np.ones(len(val_cases), bool)
    if not full.all():
        scored_on += f"; pooled over the {int(full.sum())} fully annotated cases of {len(val_cases)}"
    probs = np.zeros_like(pred["logits"], dtype=float)  # (n, D)
    y_pred = np.zeros(pred["logits"].shape, dtype=int)  # (n, D)
    found: list[list] = [[] for _ in val_cases]
    for fit, score in folds:
        head = copy.deepcopy(model.head)
        _fit_head(head, _rows(pred, fit))
        probs[score] = head.predict_proba(pred["logits"][score])
        y_pred[score] = probs[score] >= head.thresholds[None, :]
        if findings_trained:
            fit = fit[full[fit]]
            t = _best_finding_threshold([val_cases[i] for i in fit], _rows(pred, fit), labels)
            if t is not None:
                for i, f in zip(score, _decoded_findings(_rows(pred, score), labels, t), strict=True):
                    found[i] = f
    _fit_head(model.head, pred)
    diagnosis = summarise_diagnosis(pred["labels"][full], y_pred[full], probs[full], model.panel.keys)
    diagnosis["scored_on"] = scored_on
    findings = None
    if findings_trained:
        # The presence threshold is an operating point like the disease thresholds.
        rows = np.flatnonzero(full)
        boxed_cases = [val_cases[i] for i in rows]
        best = _best_finding_threshold(boxed_cases, _rows(pred, rows), labels)
        if best is not None:
            model.config.finding_threshold = best
            scores = grounding_by_label(boxed_cases, [found[i] for i in rows], labels)
            findings = None if scores is None else {**scores, "threshold": best, "scored_on": scored_on}
    return {"diagnosis": diagnosis, "findings": findings}


def calibrate_on_validation(model, cohort: str, split_seed: int, limit: int | None = None) -> dict[str, Any]:
    """`calibrate` on the cohort's validation split."""
    return calibrate(model, split_cases(cohort, "val", limit, split_seed))


def train_encoders(cfg: EncodersConfig, command: str | None = None) -> dict[str, Any]:
    """Run the stage; returns a summary (steps, seconds, validation metrics, checkpoint path)."""
    from medfuse.model import MedFuse
    from medfuse.model.config import ModelConfig
    from medfuse.model.inputs import FeatureStats

    out = start_stage(cfg)
    train_cases = split_cases(cfg.cohort, "train", cfg.limit, cfg.split_seed)
    val_cases = split_cases(cfg.cohort, "val", None if cfg.limit is None else max(8, cfg.limit // 4), cfg.split_seed)
    if not train_cases or not val_cases:
        from medfuse.errors import InputError

        raise InputError(cfg.cohort, f"too few cases for a train/val split ({len(train_cases)} train, {len(val_cases)} val)")
    if cfg.init:
        model = MedFuse.load(cfg.init)
    else:
        stats = FeatureStats.fit(train_cases)  # training split only
        model = MedFuse.build(ModelConfig.from_dict(cfg.model, origin=f"{cfg.cohort}: model"), stats=stats,
                              tiny_llm=cfg.tiny_llm)
    # Mixed sources (train.mixed): each extra cohort split by patient on its own.
    sources = build_sources(cfg.cohort, cfg.extra_cohorts, model.panel.keys, model.config.finding_labels)
    splits = {"train": [train_cases], "val": [val_cases], "test": [[]]}  # the primary's test split is not read
    for source in sources[1:] if cfg.extra_cohorts else []:
        for name, parts in splits.items():
            parts.append(source_split(source, name, cfg.split_seed))
    train_cases, val_cases = [c for p in splits["train"] for c in p], [c for p in splits["val"] for c in p]
    start = time.perf_counter()
    with_texts = cfg.contrastive_weight > 0
    train = EncoderData.build(train_cases, model, with_texts)
    val = EncoderData.build(val_cases, model, with_texts=False)
    if cfg.extra_cohorts:
        for data, parts in ((train, splits["train"]), (val, splits["val"])):
            at = 0
            for source, cases in zip(sources, parts, strict=True):
                annotate_items(data.items[at : at + len(cases)], cases, source, model.panel.keys,
                               model.config.finding_labels)
                at += len(cases)
    prep_s = time.perf_counter() - start

    train_only(model, model.trainable_parts("encoders"))
    objective = EncoderObjective(model.fusion, cfg)

    def step(idx: np.ndarray, objective: nn.Module, accelerator) -> StepReport:
        objective.train()
        batch = {k: v.to(accelerator.device) for k, v in train.batch(shard(idx, accelerator)).items()}
        losses = objective(batch)
        accelerator.backward(losses["loss"])
        return loss_report(losses, samples=len(idx))

    run = run_loop(cfg, out, Stage("encoders", objective, len(train.items), step, throughput="cases_per_s"))

    # ---- calibration on the validation split
    model.fusion = run.module.fusion
    model.card["findings_trained"] = cfg.finding_weight > 0 and model.config.fusion != "early"
    val_metrics = calibrate(model, val_cases, val)
    run.log.log(run.steps, **{"val_" + k: v for k, v in val_metrics["diagnosis"].items()})
    stage = {"stage": "encoders", "steps": run.steps, "seconds": round(run.seconds, 1), "command": command,
             "config": cfg.as_dict(), "validation": val_metrics}
    if cfg.extra_cohorts:
        stage["sources"] = [source_summary(s, len(splits["train"][i]), len(splits["val"][i]),
                                           len(splits["test"][i]) if i else split_size(s, "test", cfg.split_seed))
                            for i, s in enumerate(sources)]
    model.card.update({
        "trained": True,
        "training_data": f"{len(train_cases)} training / {len(val_cases)} validation cases of "
                         + (f"cohorts {', '.join(repr(s.name) for s in sources)} (patient-level split per source"
                            if cfg.extra_cohorts else f"cohort '{out_name(cfg.cohort)}' (patient-level split")
                         + f", seed {cfg.split_seed})",
        "stages": [*model.card.get("stages", []), stage],
    })
    run.finish(model)
    return {"stage": "encoders", "steps": run.steps, "train_cases": len(train_cases), "val_cases": len(val_cases),
            "prepare_s": round(prep_s, 1), "train_s": round(run.seconds, 1), "validation": val_metrics, "out": str(out)}


def out_name(path: str) -> str:
    """A folder's own name (never a full path: it may hold a user name or site)."""
    from pathlib import Path

    return Path(path).resolve().name
