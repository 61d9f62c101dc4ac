"""Fusion model: inference cost, and the four fusion strategies compared on one synthetic cohort.

Part 1 (speed): featurize + FusionModel forward, default `ModelConfig` (ViT 224, d 256),
single case and a batch of 32, per strategy, after a one-time load.
Part 2 (quality): a synthetic cohort (`medfuse.synth`) split 60/20/20 by patient; each
strategy (and hybrid without clue tokens) is trained with the same budget on a reduced
config (smaller image and widths, so it runs on 2 CPU cores in minutes), calibrated on
the validation split with `DiseaseHead`, and scored on the test split: macro AUROC,
micro F1 and mean per-case Jaccard at the fitted thresholds, and the mean modality
weights (gates) the strategy reports.

This is a smoke-scale comparison (hundreds of cases, a few epochs, no LLM): it shows the
strategies train and rank sensibly, not their final quality.

    python benchmarks/bench_fusion.py [--n 600] [--epochs 12] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score, roc_auc_score

from medfuse.knowledge.labs import load_lab_catalogue
from medfuse.knowledge.panel import load_panel
from medfuse.model.config import FUSION_STRATEGIES, ModelConfig
from medfuse.model.fusion import FusionModel
from medfuse.model.head import DiseaseHead
from medfuse.model.inputs import GENOMICS_VOCAB, FeatureStats, collate, featurize_many
from medfuse.record.case import MODALITIES
from medfuse.synth.cohort import synth_case

RESULTS = Path(__file__).parent / "results" / "fusion.json"


def _speed(cases, panel, n_labs: int) -> dict:
    out: dict = {}
    stats = FeatureStats.fit(cases)
    config = ModelConfig()
    featurize_many(cases[:2], config, stats, panel)  # loads MiniLM once
    start = time.perf_counter()
    items = featurize_many(cases[:32], config, stats, panel)
    out["featurize_ms_per_case_batch32"] = round((time.perf_counter() - start) / 32 * 1000, 2)
    batch = collate([{k: v for k, v in it.items() if k != "labels"} for it in items])
    single = {k: v[:1] for k, v in batch.items()}
    for fusion in FUSION_STRATEGIES:
        model = FusionModel(ModelConfig(fusion=fusion), panel, n_labs, len(GENOMICS_VOCAB)).eval()
        with torch.no_grad():
            model(single)
            t1 = []
            for _ in range(5):
                s = time.perf_counter()
                model(single)
                t1.append(time.perf_counter() - s)
            s = time.perf_counter()
            model(batch)
            t32 = time.perf_counter() - s
        out[fusion] = {"params_m": round(model.n_parameters() / 1e6, 2), "single_case_ms_p50": round(float(np.median(t1)) * 1000, 1),
                       "batch32_cases_per_s": round(32 / t32, 1)}
    return out


def _bench_config(fusion: str, use_clues: bool = True) -> ModelConfig:
    return ModelConfig(fusion=fusion, use_clues=use_clues, d_model=64, n_heads=4, cxr_size=64, ecg_channels=16,
                       cxr_vit={"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                                "intermediate_size": 128, "patch_size": 8}, dropout=0.1)


def _predict(model: FusionModel, batches: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    model.eval()
    logits, labels, gates = [], [], []
    with torch.no_grad():
        for b in batches:
            o = model(b)
            logits.append(o.disease_logits.numpy())
            labels.append(b["labels"].numpy())
            gates.append(o.gates.numpy())
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(gates)


def _quality(cases, panel, n_labs: int, epochs: int, batch_size: int, only: list[str] | None = None) -> dict:
    rng = np.random.default_rng(0)
    groups = sorted({c.group_id for c in cases})
    rng.shuffle(groups)
    n = len(groups)
    split = {g: ("train" if i < 0.6 * n else "val" if i < 0.8 * n else "test") for i, g in enumerate(groups)}
    parts = {s: [c for c in cases if split[c.group_id] == s] for s in ("train", "val", "test")}
    stats = FeatureStats.fit(parts["train"])  # training split only
    results: dict = {"n_train": len(parts["train"]), "n_val": len(parts["val"]), "n_test": len(parts["test"])}
    variants = [(f, True) for f in FUSION_STRATEGIES] + [("hybrid", False)]
    if only:
        variants = [v for v in variants if (v[0] if v[1] else f"{v[0]}_no_clues") in only]
    feats = {s: featurize_many(parts[s], _bench_config("hybrid"), stats, panel) for s in parts}

    def batches(items, shuffle: bool) -> list[dict]:
        order = rng.permutation(len(items)) if shuffle else np.arange(len(items))
        return [collate([items[i] for i in order[j : j + batch_size]]) for j in range(0, len(items), batch_size)]

    val_b, test_b = batches(feats["val"], False), batches(feats["test"], False)
    for fusion, clues in variants:
        name = fusion if clues else f"{fusion}_no_clues"
        torch.manual_seed(0)
        model = FusionModel(_bench_config(fusion, clues), panel, n_labs, len(GENOMICS_VOCAB))
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        start = time.perf_counter()
        for _ in range(epochs):
            model.train()
            for b in batches(feats["train"], True):
                loss = model.loss(b, model(b))
                opt.zero_grad()
                loss.backward()
                opt.step()
        train_s = time.perf_counter() - start
        head = DiseaseHead(panel.keys)
        v_logits, v_y, _ = _predict(model, val_b)
        head.fit_temperature(v_logits, v_y)
        head.fit_thresholds(head.predict_proba(v_logits), v_y)
        t_logits, t_y, t_gates = _predict(model, test_b)
        probs = head.predict_proba(t_logits)
        pred = head.predict(t_logits)
        scorable = [j for j in range(t_y.shape[1]) if 0 < t_y[:, j].sum() < len(t_y)]
        union = np.logical_or(pred, t_y > 0).sum(1)
        inter = np.logical_and(pred, t_y > 0).sum(1)
        jaccard = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
        present_any = t_gates > 0
        results[name] = {
            "train_s": round(train_s, 1),
            "test_macro_auroc": round(float(np.mean([roc_auc_score(t_y[:, j], probs[:, j]) for j in scorable])), 4),
            "test_micro_f1": round(float(f1_score(t_y, pred, average="micro", zero_division=0)), 4),
            "test_mean_jaccard": round(float(jaccard.mean()), 4),
            "temperature": round(float(head.temperature[0]), 3),
            # Mean weight of each modality over the test cases where it is present.
            "mean_gate_when_present": {m: round(float(t_gates[present_any[:, i], i].mean()), 3) if present_any[:, i].any() else None
                                       for i, m in enumerate(MODALITIES)},
        }
        print(name, json.dumps(results[name]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="synthetic cases for the comparison")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--skip-quality", action="store_true", help="only measure speed")
    parser.add_argument("--only", nargs="*", help="variants to train (early feature late hybrid hybrid_no_clues)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    panel, catalogue = load_panel(), load_lab_catalogue()
    start = time.perf_counter()
    cases = [synth_case(0, i) for i in range(args.n)]
    result: dict = {
        "cpu_count": os.cpu_count(), "torch_threads": args.threads, "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "synth_s": round(time.perf_counter() - start, 1),
    }
    result["speed_default_config"] = _speed(cases[:40], panel, len(catalogue))
    print("speed", json.dumps(result["speed_default_config"]), flush=True)
    if not args.skip_quality:
        result["quality_reduced_config"] = {"n_cases": args.n, "epochs": args.epochs,
                                            **_quality(cases, panel, len(catalogue), args.epochs, args.batch_size, args.only)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
