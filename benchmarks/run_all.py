"""Run the benchmarks (`make bench`): each one as its own process, with the settings the
README's "Measured results" table quotes, then a one-line summary per benchmark.

    python benchmarks/run_all.py             # the quick set (about 10 minutes on 2 cores)
    python benchmarks/run_all.py --full      # also the training comparisons (fusion strategies, federated)
                                             # and the real-data benchmarks ($MEDFUSE_REAL_DATA)
    python benchmarks/run_all.py --only synth eval_scoring
    python benchmarks/run_all.py --list

Every benchmark writes its figures to a JSON file in benchmarks/results/; this script only
orchestrates them and exits non-zero when any of them fails.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHECKPOINT = ROOT / "src" / "medfuse" / "data" / "checkpoint"
# The team's real data sets (see their MANIFEST.md); never read by the tests.
REAL = Path(os.environ.get("MEDFUSE_REAL_DATA", ROOT.parent / "shared" / "data" / "real"))


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    args: tuple[str, ...]
    what: str
    full_only: bool = False  # long training runs: only with --full


BENCHES = (
    Bench("synth", "bench_synth.py", ("--n", "300"), "synthetic cohort throughput, 1 and 2 workers"),
    Bench("eval_scoring", "bench_eval_scoring.py", (), "scoring 10,000 cached multiple-choice items"),
    Bench("eval_endpoint", "bench_eval_endpoint.py", (), "OpenAI-compatible endpoint concurrency (local stub)"),
    Bench("fusion_speed", "bench_fusion.py", ("--skip-quality",), "fusion model inference per strategy"),
    Bench("llm_decode", "bench_llm_decode.py", ("--repeats", "1", "--new-tokens", "64"),
          "SmolLM2-135M decode, fused vs plain transformers"),
    Bench("diagnose", "bench_diagnose.py", ("--model", str(CHECKPOINT), "--n", "4", "--batch-sizes", "8"),
          "diagnose latency and batched throughput with the shipped checkpoint"),
    Bench("reasoning", "bench_reasoning.py", ("--n", "40"),
          "decision-consistent, cited reasoning with the shipped checkpoint (consistency, faithfulness)"),
    Bench("llamacpp", "bench_llamacpp.py", ("--cases", "4", "--cohort", "8", "--new-tokens", "48"),
          "llama.cpp decode backend vs plain llama.cpp vs torch (shipped checkpoint)"),
    Bench("explain", "bench_explain.py", ("--n", "60"),
          "explain: deletion AOPC vs random order, counterfactual validity and plausibility, latency"),
    Bench("serve", "bench_serve.py", ("--requests", "2000"),
          "review service loopback load: requests/s and p95 (1, 4, 8 clients)"),
    Bench("fusion_strategies", "bench_fusion_strategies.py", (),
          "the fusion strategies trained through the encoder stage (needs cohorts; built here)", full_only=True),
    Bench("federate", "bench_federate.py", ("--rounds", "32", "--local-epochs", "0.25"),
          "centralised vs federated (FedAvg, FedProx, DP+SecAgg+) vs local-only, synthetic cohort", full_only=True),
    Bench("federate_lora", "bench_federate_lora.py", (),
          "federated vs centralised SFT of the shipped LM's LoRA, same step budget", full_only=True),
    Bench("real_ecg", "bench_real_ecg.py", ("--root", str(REAL)),
          "AF F1 on real CinC-2017 / CPSC-2018 recordings ($MEDFUSE_REAL_DATA)", full_only=True),
    Bench("real_targets", "bench_real_targets.py", ("--root", str(REAL), "--mixed"),
          "shipped checkpoint on real data: CXR pneumonia AUROC, MIMIC-IV labs macro AUROC", full_only=True),
)


def _strategy_args(work: Path) -> tuple[str, ...]:
    """Build the training and held-out cohorts the strategy comparison reads."""
    train, held_out = work / "train", work / "eval"
    for out, n, seed in ((train, 1200, 101), (held_out, 500, 202)):
        subprocess.run([sys.executable, "-m", "medfuse", "synth", "--n", str(n), "--seed", str(seed),
                        "--out", str(out)], check=True, cwd=ROOT)
    return ("--cohort", str(train), "--eval", str(held_out), "--limit", "1000", "--epochs", "10",
            "--eval-limit", "500")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--full", action="store_true", help="include the long training comparisons")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)

    known = {b.name for b in BENCHES}
    unknown = sorted(set(args.only or ()) - known)
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    if args.list:
        for b in BENCHES:
            print(f"{b.name:18s} {b.what}{'  [--full]' if b.full_only else ''}")
        return 0
    chosen = [b for b in BENCHES if (b.name in args.only if args.only else (args.full or not b.full_only))]

    outcome: list[tuple[str, str, float]] = []
    with tempfile.TemporaryDirectory(prefix="medfuse-bench-") as tmp:
        for b in chosen:
            print(f"\n== {b.name}: {b.what}", flush=True)
            start = time.perf_counter()
            try:
                extra = _strategy_args(Path(tmp)) if b.name == "fusion_strategies" else ()
                run = subprocess.run([sys.executable, str(HERE / b.script), *b.args, *extra], cwd=ROOT)
                status = "ok" if run.returncode == 0 else f"failed (exit {run.returncode})"
            except subprocess.CalledProcessError as e:
                status = f"failed to build its input (exit {e.returncode})"
            outcome.append((b.name, status, time.perf_counter() - start))

    print("\n== summary (figures in benchmarks/results/*.json)")
    for name, status, seconds in outcome:
        print(f"{name:18s} {status:28s} {seconds:7.1f} s")
    return 0 if all(s == "ok" for _, s, _ in outcome) else 1


if __name__ == "__main__":
    sys.exit(main())
