"""Federated vs centralised SFT of the shipped checkpoint's language model (LoRA), same step budget (`medfuse federate --stage sft`).

A synthetic cohort is generated (or `--cohort` is read); its training patients are
divided into `--sites` hospitals with label shift and their own modalities (no CXR / no
ECG / notes + labs only), as `medfuse federate` divides them. Each site builds its
instruction samples from its own cases. Three arms start from the same checkpoint
(default: the shipped one, SmolLM2-135M + its LoRA adapter) and are scored on the same
held-out instruction samples and diagnosis prompts of the cohort's test split:
- initial: the checkpoint as it is;
- federated: `federate_lm` (FedAvg), sites x rounds x local_steps optimiser steps in all;
- centralised: one trainer on the pooled samples of all sites (exactly the union of the
  sites' samples), the same number of optimiser steps of the same batch size, one
  warm-up + cosine schedule.
Scores: held-out LM loss (per-token cross-entropy of the targets), answer Jaccard and
format rate of greedy-decoded diagnosis answers (`lm_eval.evaluate_answers`), and the
re-calibrated disease head's held-out macro-F1. Writes benchmarks/results/federate_lora.json.

    OMP_NUM_THREADS=1 python benchmarks/bench_federate_lora.py [--n 300] [--sites 3] [--rounds 2] [--local-steps 3]
        [--samples-per-site 48] [--eval-samples 12] [--answer-samples 6] [--cohort DIR] [--model CKPT]
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from medfuse.federate.local import evaluate_fusion, set_arrays
from medfuse.federate.lora import (
    FederatedSFTConfig,
    LoraSiteTrainer,
    SiteTaskData,
    federate_lm,
    held_out_answers,
    lm_loss,
    lora_travelling_names,
    prepare_lm_model,
)
from medfuse.federate.run import load_splits

RESULTS = Path(__file__).parent / "results" / "federate_lora.json"
SHIPPED = Path(__file__).parents[1] / "src" / "medfuse" / "data" / "checkpoint"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def score(model, cfg: FederatedSFTConfig, test_data, splits, answers: int) -> dict:
    """Held-out LM loss, answers and diagnosis macro-F1 of `model` (a copy is calibrated)."""
    out = {"lm_loss": round(lm_loss(model, test_data, cfg.max_target_tokens), 5), "lm_samples": len(test_data)}
    if answers:
        out["answers"] = held_out_answers(model, cfg, answers)
    # Calibration refits the head (not weights): keep the arm's own head and card, not a 0.5 GB model copy.
    head, card = copy.deepcopy(model.head), dict(model.card)
    diag = evaluate_fusion(model, model.fusion, splits.val, splits.test,
                           findings_trained=bool(card.get("findings_trained")))["held_out"]
    model.head, model.card = head, card
    out["diagnosis_macro_f1"] = diag["macro_f1"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, help="cohort to use (default: a new synthetic one of --n cases)")
    parser.add_argument("--model", type=Path, default=SHIPPED, help="checkpoint to start from (default: shipped)")
    parser.add_argument("--n", type=int, default=300, help="synthetic cases (80/10/10 train/val/test by patient)")
    parser.add_argument("--seed", type=int, default=2026, help="seed of the synthetic cohort (not the shipped one's 101)")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--samples-per-site", type=int, default=48)
    parser.add_argument("--eval-samples", type=int, default=12)
    parser.add_argument("--answer-samples", type=int, default=6)
    parser.add_argument("--max-target-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start, cpu_start = time.perf_counter(), cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="medfuse-bench-federate-lora-") as tmp:
        cohort = args.cohort
        if cohort is None:
            from medfuse.synth.cohort import SynthConfig, synth_cohort

            cohort = Path(tmp) / "cohort"
            synth_cohort(n=args.n, seed=args.seed, out=cohort, config=SynthConfig(image_size=224), workers=1,
                         progress=False)
        cfg = FederatedSFTConfig.from_dict({
            "cohort": str(cohort), "out": str(Path(tmp) / "federated"), "model": str(args.model),
            "sites": args.sites, "rounds": args.rounds, "local_steps": args.local_steps,
            "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": 1, "langs": ["en"],
            "samples_per_site": args.samples_per_site, "eval_samples": args.eval_samples,
            "answer_samples": args.answer_samples, "max_target_tokens": args.max_target_tokens,
            "seed": 0, "threads": args.threads, "quiet": False})
        splits = load_splits(cfg)
        timings = {}

        # initial: the checkpoint as it is
        t = time.perf_counter()
        base = prepare_lm_model(cfg)
        names = lora_travelling_names(base, cfg.train_fusion)
        test_data = SiteTaskData(splits.test, base, cfg.tasks(), tuple(cfg.langs), cfg.seed, cfg.eval_samples,
                                 order_seed=cfg.seed + 2)  # the samples federate_lm scores
        initial = score(base, cfg, test_data, splits, args.answer_samples)
        timings["initial_s"] = round(time.perf_counter() - t, 1)
        print("initial", json.dumps(initial), flush=True)

        # federated (FedAvg)
        t = time.perf_counter()
        run = federate_lm(cfg, command="bench_federate_lora", splits=splits)
        rep = run.report
        federated = {**rep["held_out"], "diagnosis_macro_f1": rep["held_out"]["diagnosis"]["macro_f1"]}
        federated.pop("diagnosis")
        timings["federated_s"] = round(time.perf_counter() - t, 1)
        print("federated", json.dumps(federated), flush=True)

        # centralised: the pooled samples, the same optimiser steps
        t = time.perf_counter()
        pooled = SiteTaskData.pooled([c.trainer.data for c in run.clients], seed=cfg.seed)
        del run, base  # the federation's model copies: the first full run was OOM-killed here (15 GB RSS)
        gc.collect()
        steps = args.sites * args.local_steps  # per "round": what all sites together took
        central_cfg = FederatedSFTConfig.from_dict({**cfg.as_dict(), "local_steps": steps})
        model = prepare_lm_model(cfg)
        central = LoraSiteTrainer("centralised", [c for s in splits.sites for c in s.cases], model, names, central_cfg,
                                  Path(tmp), data=pooled)
        central_losses = []
        for r in range(1, args.rounds + 1):
            central_losses.append(central.train(1, seed=cfg.seed + 1000 * r, server_round=r, rounds=args.rounds))
        set_arrays(model, names, central.get_arrays(), prefix="")
        centralised = score(model, cfg, test_data, splits, args.answer_samples)
        timings["centralised_s"] = round(time.perf_counter() - t, 1)
        print("centralised", json.dumps(centralised), flush=True)

    arms = {"initial": initial, "federated_fedavg": federated, "centralised": centralised}
    summary = {
        "held_out_lm_loss": {k: v["lm_loss"] for k, v in arms.items()},
        "answer_jaccard": {k: v.get("answers", {}).get("mean_jaccard") for k, v in arms.items()},
        "diagnosis_macro_f1": {k: v["diagnosis_macro_f1"] for k, v in arms.items()},
        "optimiser_steps": {"federated": args.sites * args.rounds * args.local_steps,
                            "centralised": args.rounds * steps},
        "bytes_per_round": {"down": rep["rounds_detail"][0]["bytes_down"], "up": rep["rounds_detail"][0]["bytes_up"]},
        "travelling_parameters": rep["travelling"]["parameters"],
        "never_sent_parameters": rep["travelling"]["not_sent_parameters"],
    }
    out = {"what": __doc__.splitlines()[0], "cases": None if args.cohort else args.n, "cohort_seed": args.seed,
           "command": "OMP_NUM_THREADS=1 python benchmarks/bench_federate_lora.py " + shlex.join(sys.argv[1:]),
           "summary": summary, "arms": arms,
           "federated_rounds": [rep["initial"], *rep["rounds_detail"]],
           "centralised_rounds": [{k: round(v, 5) for k, v in r.items() if k in ("loss", "lm_loss")}
                                  for r in central_losses],
           "sites": rep["sites"], "travelling": {k: v for k, v in rep["travelling"].items() if k != "names"},
           "config": cfg.as_dict(), **timings,
           "seconds": round(time.perf_counter() - start, 1), "cpu_seconds": round(cpu_seconds() - cpu_start, 1),
           "cpu_count": os.cpu_count(), "torch_threads": args.threads, "python": platform.python_version(),
           "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=float) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
