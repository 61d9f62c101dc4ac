"""The four fusion strategies (and hybrid without clue tokens) side by side, through `medfuse train encoders`.

Each variant is trained by the same encoder stage as the shipped checkpoint
(`configs/encoders.yaml`, only `model.fusion` / `model.use_clues` changed), on the same
training cases for the same number of epochs, calibrated on the same validation split,
and scored by `medfuse model evaluate` on the same held-out cohort (head decisions; the
language model is not involved). Reports macro/micro F1, mean Jaccard, macro AUROC and
the finding head's Acc@IoU0.5 per variant, and writes benchmarks/results/fusion_strategies.json.

With several `--seeds` every variant is trained once per seed (data order, dropout and
initialisation change; the cases do not), and each variant's held-out macro-F1 is compared
with the first variant's, paired on the same held-out cases and seed: the mean difference
over seeds with its percentile-bootstrap 95 % interval over cases (resampling cases and
averaging the per-seed differences). That is the figure the choice of default strategy
rests on.

    python benchmarks/bench_fusion_strategies.py --cohort cohort/train --eval cohort/eval \
        [--limit 1200] [--epochs 10] [--eval-limit 500] [--variants late,hybrid] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from medfuse.eval.metrics.classification import macro_f1
from medfuse.model import MedFuse
from medfuse.record.store import iter_cohort
from medfuse.train.config import EncodersConfig
from medfuse.train.encoders import train_encoders
from medfuse.train.evaluate import evaluate_checkpoint, head_decisions

RESULTS = Path(__file__).parent / "results" / "fusion_strategies.json"
VARIANTS = {"early": ("early", True), "feature": ("feature", True), "late": ("late", True),
            "hybrid": ("hybrid", True), "hybrid_no_clues": ("hybrid", False)}


def paired_gap(decisions: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]], base: str, other: str,
               n_resamples: int = 1000) -> dict[str, float]:
    """`other` - `base` held-out macro-F1, averaged over the seeds both ran, with a percentile
    bootstrap interval over held-out cases (one resample of cases scores every seed's pair)."""
    seeds = sorted(set(decisions[base]) & set(decisions[other]))
    y = decisions[base][seeds[0]][0]

    def gap(idx: np.ndarray) -> float:
        return float(np.mean([macro_f1(y[idx], decisions[other][s][1][idx]) - macro_f1(y[idx], decisions[base][s][1][idx])
                              for s in seeds]))

    rng = np.random.default_rng(0)
    draws = [gap(rng.integers(0, len(y), len(y))) for _ in range(n_resamples)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"mean_gap": round(gap(np.arange(len(y))), 4), "ci95": [round(float(low), 4), round(float(high), 4)],
            "seeds": seeds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, required=True, help="training cohort")
    parser.add_argument("--eval", type=Path, required=True, help="held-out cohort")
    parser.add_argument("--config", type=Path, default=Path("configs/encoders.yaml"))
    parser.add_argument("--limit", type=int, default=1200, help="training cases per variant")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--eval-limit", type=int, default=500, help="held-out cases scored")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, the first is the reference ({', '.join(VARIANTS)})")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"what": __doc__.splitlines()[0], "train_cases": args.limit, "epochs": args.epochs,
                    "eval_cases": args.eval_limit, "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                    "python": platform.python_version(), "torch": torch.__version__, "variants": {}}
    base = EncodersConfig.from_yaml(args.config, {"cohort": str(args.cohort), "quiet": True})
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s): {', '.join(unknown)}")
    seeds = [int(x) for x in args.seeds.split(",")]
    result["seeds"] = seeds
    held_out = list(iter_cohort(args.eval))[: args.eval_limit]
    decisions: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {n: {} for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            for name in names:
                fusion, clues = VARIANTS[name]
                model_cfg = {**base.model, "fusion": fusion, "use_clues": clues}
                cfg = EncodersConfig.from_dict({**base.as_dict(), "model": model_cfg, "out": str(Path(tmp) / name),
                                                "limit": args.limit, "epochs": args.epochs, "seed": seed,
                                                "overwrite": True})
                start = time.perf_counter()
                summary = train_encoders(cfg)
                model = MedFuse.load(Path(tmp) / name)
                ev = evaluate_checkpoint(model, args.eval, limit=args.eval_limit, single_modality=False)
                labels, pred, _ = head_decisions(model, held_out)
                decisions[name][seed] = (labels, pred)
                row = {"train_s": round(time.perf_counter() - start, 1),
                       "validation": summary["validation"]["diagnosis"],
                       "held_out": {k: ev["diagnosis"][k] for k in ("macro_f1", "micro_f1", "jaccard", "macro_auroc",
                                                                    "ece")},
                       "held_out_grounding_acc_iou_0.5": (ev["grounding"] or {}).get("acc_iou_0.5")}
                key = name if len(seeds) == 1 else f"{name}@seed{seed}"
                result["variants"][key] = row
                print(key, json.dumps(row), flush=True)
    if len(names) > 1:
        result["gap_to_" + names[0]] = {n: paired_gap(decisions, names[0], n) for n in names[1:]}
        print(json.dumps(result["gap_to_" + names[0]]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
