"""Faithfulness and speed of `medfuse explain` with the shipped checkpoint on fresh synthetic cases.

Measures, on `--n` synthetic cases (default mix of modalities, a seed the checkpoint was
not trained on):
- deletion / insertion AOPC of attribution order vs `--n-random` random orders
  (`medfuse.explain.deletion_insertion`); goal: deletion ratio >= 2;
- counterfactual validity (the decision flips when the modified case is re-run through
  `MedFuse.fuse`; goal >= 95 %) and plausibility (every value in its plausible range;
  goal 100 %), and how many explained diseases got one;
- integrated-gradients completeness: |convergence delta| per modality;
- time per `explain_case` (wall and CPU), one torch thread; goal < 3 s per case.

    python benchmarks/bench_explain.py [--model CKPT] [--n 60] [--seed 2026] [--n-random 10]

Writes benchmarks/results/explain.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "explain.json"
CHECKPOINT = ROOT / "src" / "medfuse" / "data" / "checkpoint"


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=CHECKPOINT, help="checkpoint folder (default: the shipped one)")
    parser.add_argument("--n", type=int, default=60, help="synthetic cases")
    parser.add_argument("--seed", type=int, default=2026, help="synthetic cohort seed")
    parser.add_argument("--n-random", type=int, default=10, help="random deletion orders per case")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers.utils import logging as hf_logging

    from medfuse.explain import deletion_insertion, explain_case
    from medfuse.model import MedFuse
    from medfuse.synth.cohort import SynthConfig, synth_case

    hf_logging.disable_progress_bar()
    model = MedFuse.load(args.model)
    cases = [synth_case(args.seed, i, SynthConfig()) for i in range(args.n)]
    explain_case(model, cases[0], counterfactuals=False)  # warm-up (MiniLM, first passes)

    explanations, wall, cpu = [], [], []
    for case in cases:
        t0, c0 = time.perf_counter(), time.process_time()
        explanations.append(explain_case(model, case))
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    t0 = time.perf_counter()
    faith = deletion_insertion(model, cases, explanations=explanations, n_random=args.n_random)
    faith_s = time.perf_counter() - t0

    cfs = [cf for e in explanations for cf in e.counterfactuals]
    explained = sum(len(e.explained) for e in explanations)
    deltas: dict[str, list[float]] = {}
    for e in explanations:
        for a in e.attributions:
            for m, d in a.convergence_delta.items():
                deltas.setdefault(m, []).append(abs(d))
    validity = sum(cf.valid for cf in cfs) / len(cfs) if cfs else 0.0
    plausibility = sum(cf.plausible for cf in cfs) / len(cfs) if cfs else 0.0
    result = {
        "what": "medfuse explain (disease head only) on fresh synthetic cases, shipped checkpoint",
        "checkpoint": str(args.model.resolve().relative_to(ROOT)) if args.model.resolve().is_relative_to(ROOT)
        else str(args.model),
        "n_cases": args.n,
        "seed": args.seed,
        "torch_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faithfulness": {
            "n_pairs": faith.n_pairs,
            "n_random_orders": faith.n_random_orders,
            "deletion_aopc": round(faith.deletion_aopc, 4),
            "deletion_aopc_random": round(faith.deletion_aopc_random, 4),
            "deletion_ratio": round(faith.deletion_ratio, 3),
            "insertion_aopc": round(faith.insertion_aopc, 4),
            "insertion_aopc_random": round(faith.insertion_aopc_random, 4),
            "insertion_ratio": round(faith.insertion_ratio, 3),
            "deletion_beats_random_share": round(faith.deletion_beats_random, 3),
            "seconds": round(faith_s, 1),
        },
        "counterfactuals": {
            "explained_diseases": explained,
            "found": len(cfs),
            "found_share": round(len(cfs) / explained, 3) if explained else 0.0,
            "one_item": sum(len(cf.changes) == 1 for cf in cfs),
            "two_items": sum(len(cf.changes) == 2 for cf in cfs),
            "validity": round(validity, 4),
            "plausibility": round(plausibility, 4),
            "examples": [cf.text for cf in cfs[:5]],
        },
        "ig_abs_convergence_delta": {m: {"mean": round(float(np.mean(v)), 4), "p90": round(_pct(v, 0.9), 4),
                                         "max": round(max(v), 4)} for m, v in deltas.items()},
        "explain_case_s": {"wall_p50": round(statistics.median(wall), 3), "wall_p90": round(_pct(wall, 0.9), 3),
                           "cpu_p50": round(statistics.median(cpu), 3), "cpu_p90": round(_pct(cpu, 0.9), 3),
                           "mean_explained_diseases": round(explained / len(explanations), 2)},
        "goals": {
            "deletion_ratio_ge_2": faith.deletion_ratio >= 2.0,
            "counterfactual_validity_ge_0.95": validity >= 0.95,
            "counterfactual_plausibility_1": plausibility == 1.0,
            "explain_under_3s_p50_cpu": statistics.median(cpu) < 3.0,
        },
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
