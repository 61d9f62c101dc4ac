"""Held-out evaluation of a checkpoint on a cohort: `medfuse model evaluate CKPT --cohort DIR`.

What the model card's `evaluation` reports (the quality targets), all on the given
cohort (use a fresh synthetic seed, never the training cohort):
- `diagnosis`: the disease head at its stored thresholds over every case — per-sample
  Jaccard, micro/macro F1 (a disease with no case and no prediction is left out of the
  macro mean), macro AUROC, pooled ECE and, beside it, each disease's F1 and ECE
  (`per_disease_f1`, `per_disease_ece`; `medfuse.eval.metrics.classification`). A
  disease `diagnose` declines for insufficient data counts as predicted absent.
- `single_modality`: the same model given ONE modality of each case (the others removed),
  for each modality; `fusion_margin` = all-modality macro-F1 minus the best of these. This
  is the fused model read through one modality, not a model trained on one modality: see
  `benchmarks/bench_fusion.py` for separately trained strategies.
- `grounding`: the finding head on the cases with an image, over (image, finding label)
  pairs: Hungarian precision/recall/F1 (the headline), Acc@IoU 0.25/0.5/0.75 and mean
  IoU, where surplus boxes count against the score (`medfuse.eval.metrics.grounding`).
- `answers`: the language model's own `<answer>` on `lm_samples` diagnosis prompts
  (greedy): Jaccard, format rate, and the share of numbers in its reasoning that the
  faithfulness check finds in the case (`lm_eval.evaluate_answers`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfuse.errors import InputError
from medfuse.record.case import MODALITIES, PatientCase

_DROP = {"cxr": {"cxr": []}, "ecg": {"ecg": None}, "labs": {"labs": []}, "vitals": {"vitals": []},
         "notes": {"notes": []}, "genomics": {"genomics": []}}


def only_modality(case: PatientCase, keep: str) -> PatientCase | None:
    """The case with every modality but `keep` removed (None when it lacks `keep`)."""
    if keep not in case.modalities():
        return None
    update: dict[str, Any] = {}
    for m in MODALITIES:
        if m != keep:
            update.update(_DROP[m])
    return case.model_copy(update=update)


def synthetic_origin(cohort: Path) -> dict[str, int] | None:
    """{"seed", "n"} of a `medfuse synth` cohort (from its DATASHEET.md), so it can be regenerated."""
    import re

    sheet = cohort / "DATASHEET.md"
    if not sheet.is_file():
        return None
    m = re.search(r"with seed (\d+): (\d+) cases", sheet.read_text(encoding="utf-8"))
    return {"seed": int(m.group(1)), "n": int(m.group(2))} if m else None


def _head_predictions(model, cases: list[PatientCase], batch_size: int) -> tuple[np.ndarray, np.ndarray, list]:
    """(probabilities (n, D), predictions (n, D), findings per case) from fusion passes."""
    from medfuse.model.diagnosis import insufficient_diseases

    probs, preds, findings = [], [], []
    keys = model.panel.keys
    for start in range(0, len(cases), batch_size):
        chunk = cases[start : start + batch_size]
        fused = model.fuse(chunk)
        p = fused.probabilities
        y = (p >= fused.thresholds[None, :]).astype(int)
        for i, case in enumerate(chunk):
            for key in insufficient_diseases(case, model.panel):
                y[i, keys.index(key)] = 0
        probs.append(p)
        preds.append(y)
        findings.extend(fused.findings)
    return np.concatenate(probs), np.concatenate(preds), findings


def _labels(model, cases: list[PatientCase]) -> np.ndarray:
    from medfuse.model.inputs import label_vector

    rows = [label_vector(c, model.panel) for c in cases]
    if any(r is None for r in rows):
        raise InputError(None, "every evaluation case needs labels (ground-truth diagnoses)")
    return np.stack(rows).astype(int)


def head_decisions(model, cases: list[PatientCase], batch_size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, decisions, probabilities), each (n cases, panel diseases), of the disease head on
    labelled `cases`, decided as `evaluate_checkpoint` decides: for paired comparisons of
    two models on the same cases."""
    model.eval()
    with torch.no_grad():
        probs, pred, _ = _head_predictions(model, cases, batch_size)
    return _labels(model, cases), pred, probs


def evaluate_checkpoint(model, cohort: str | Path, lm_samples: int = 0, batch_size: int = 32,
                        limit: int | None = None, single_modality: bool = True) -> dict[str, Any]:
    """Run the evaluation above; returns the `evaluation` mapping of the model card."""
    from medfuse.record.store import iter_cohort
    from medfuse.train.encoders import grounding_by_label, summarise_diagnosis

    cohort = Path(cohort)
    if not cohort.is_dir():
        raise InputError(cohort, "no such cohort folder")
    start = time.perf_counter()
    cases = list(iter_cohort(cohort))
    if limit is not None:
        cases = cases[:limit]
    if not cases:
        raise InputError(cohort, "the cohort has no cases")
    model.eval()
    names = [d.name for d in model.panel]
    y = _labels(model, cases)
    with torch.no_grad():
        probs, pred, findings = _head_predictions(model, cases, batch_size)
        result: dict[str, Any] = {"cohort": cohort.resolve().name, "n_cases": len(cases),
                                  "synthetic": synthetic_origin(cohort),
                                  "diagnosis": summarise_diagnosis(y, pred, probs, names)}
        single: dict[str, Any] = {}
        for m in MODALITIES if single_modality else ():
            idx = [i for i, c in enumerate(cases) if m in c.modalities()]
            if len(idx) < 20 or m == "genomics":
                continue  # too few cases to score (genomics: lung-cancer patients only)
            restricted = [only_modality(cases[i], m) for i in idx]
            p, yhat, _ = _head_predictions(model, restricted, batch_size)
            single[m] = summarise_diagnosis(y[idx], yhat, p, names)
            single[m]["all_modalities_macro_f1_same_cases"] = summarise_diagnosis(
                y[idx], pred[idx], probs[idx], names)["macro_f1"]
    result["single_modality"] = single
    scored = {k: v for k, v in single.items() if v["macro_f1"] is not None}  # None: no disease to score
    if scored and result["diagnosis"]["macro_f1"] is not None:
        best = max(scored, key=lambda k: scored[k]["macro_f1"])
        result["best_single_modality"] = best
        result["fusion_margin_macro_f1"] = round(result["diagnosis"]["macro_f1"] - scored[best]["macro_f1"], 4)
    result["grounding"] = (grounding_by_label(cases, findings, model.config.finding_labels)
                           if model.card.get("findings_trained") else None)
    if lm_samples:
        from types import SimpleNamespace

        from medfuse.train.lm_eval import evaluate_answers

        cfg = SimpleNamespace(cohort=str(cohort), tasks="", langs=["en", "zh"], seed=0, split_seed=0)
        result["answers"] = evaluate_answers(model, cfg, lm_samples, split="all")
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result
