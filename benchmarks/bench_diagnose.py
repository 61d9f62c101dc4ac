"""Speed of `diagnose` with the default SmolLM2-135M backbone on CPU.

Measures, after a one-time load of the checkpoint:
- single-case latency (p50, p90) of `diagnose` on full synthetic cases (CXR, 12-lead ECG,
  labs, vitals, notes), split into its stages: evidence reading (`interpret_case`), fusion
  (featurize + fusion model + calibrated head), generation, checking/assembly;
- batched throughput (cases/s) of `diagnose_many` for the given batch sizes.

Generation is greedy with `--max-new-tokens` (default 128). By default `diagnose` explains
the head's decision with the scaffolded, constrained decoder: the plan of each case
(headers, one rationale slot per reported disease with its budget) decides how many tokens
it takes, up to the plan's worst case, and `min_new_tokens` cannot lengthen it. `--free`
measures the unconstrained generation of earlier releases, where an untrained checkpoint
may stop early, which would flatter it: there every case is forced to generate exactly
`--max-new-tokens` tokens (`min_new_tokens`) unless `--natural` lets it stop at EOS. Goals (2 CPU cores): single
case p50 <= 2 s, batched >= 5 cases/s.

    python benchmarks/bench_diagnose.py [--model CKPT] [--n 12] [--batch-sizes 8 16] [--threads 2] [--backend llamacpp]

`--backend llamacpp` decodes with the llama.cpp backend (`MEDFUSE_DECODER`), and the
generate stage is then split into prefill, llama_decode calls and the Python between them.

Without `--model` an untrained default checkpoint is built in a temporary folder (the
speed does not depend on the weights' values). Writes benchmarks/results/diagnose.json.
"""

from __future__ import annotations

import argparse
import json
import os

# As the CLI does (`prefer_passive_openmp_wait`), before torch loads: OpenMP threads that
# spin stall on this project's shared 2 cores, and llama.cpp shares torch's libgomp.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "diagnose.json"


def _cases(n: int, seed: int):
    from medfuse.synth.cohort import SynthConfig, synth_case

    config = SynthConfig(p_cxr=1.0, p_ecg=1.0, p_labs=1.0, p_vitals=1.0, p_notes=1.0)
    return [synth_case(seed, i, config) for i in range(n)]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="checkpoint folder (default: build an untrained one)")
    parser.add_argument("--n", type=int, default=12, help="cases for the single-case latency")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--natural", action="store_true", help="with --free: let generation stop at EOS")
    parser.add_argument("--free", action="store_true", help="unconstrained generation (earlier releases)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the reference machine's 2 cores)")
    parser.add_argument("--backend", choices=("torch", "llamacpp"), default="torch", help="language model decoder")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["MEDFUSE_DECODER"] = args.backend

    from transformers.utils import logging as hf_logging

    from medfuse.interpret.case import interpret_case
    from medfuse.model import MedFuse
    from medfuse.model.diagnosis import diagnose_many

    hf_logging.disable_progress_bar()
    tmp = None
    t0 = time.perf_counter()
    if args.model is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_diagnose_")
        MedFuse.build().save(Path(tmp.name) / "ckpt")
        args.model = Path(tmp.name) / "ckpt"
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = MedFuse.load(args.model)
    load_s = time.perf_counter() - t0
    gen = {} if args.natural or not args.free else {"min_new_tokens": args.max_new_tokens}

    *cases, spare = _cases(max(args.n, max(args.batch_sizes)) + 1, seed=11)
    # Warm-up: first calls pay for lazy imports, MiniLM and neurokit2 set-up. On a case not
    # timed after: llama.cpp's prefix cache would otherwise hold the first timed prompt.
    diagnose_many(model, [spare], max_new_tokens=8)

    stages: dict[str, list[float]] = {"interpret": [], "fuse": [], "generate": [], "total": []}
    if args.backend == "llamacpp":
        stages |= {"prefill": [], "decode_llama": [], "decode_python": []}
    tokens: list[int] = []
    for case in cases[: args.n]:
        t = time.perf_counter()
        ev = interpret_case(case)
        t_interp = time.perf_counter() - t
        # Time fusion and generation inside diagnose_many by wrapping the model's methods.
        timings: dict[str, float] = {}

        def timed(name, fn, timings=timings):
            def wrapper(*a, **k):
                s = time.perf_counter()
                out = fn(*a, **k)
                timings[name] = time.perf_counter() - s
                return out
            return wrapper

        fuse, generate = model.fuse, model.generate
        model.fuse, model.generate = timed("fuse", fuse), timed("generate", generate)
        try:
            (d,) = diagnose_many(model, [case], max_new_tokens=args.max_new_tokens, evidence=[ev], generate_kwargs=gen,
                                 constrained=not args.free)
        finally:
            model.fuse, model.generate = fuse, generate
        total = time.perf_counter() - t
        stages["interpret"].append(t_interp)
        stages["fuse"].append(timings["fuse"])
        stages["generate"].append(timings["generate"])
        stages["total"].append(total)
        decoder = model.__dict__.get("_llamacpp_decoder")
        if args.backend == "llamacpp" and decoder is not None:
            st = decoder.stats
            stages["prefill"].append(st.prefill_s)
            stages["decode_llama"].append(st.decode_llama_s)
            stages["decode_python"].append(st.decode_s - st.decode_llama_s)
        tokens.append(d.generated_tokens or len(model.lm.tokenizer(d.raw_text, add_special_tokens=False)["input_ids"]))

    result: dict = {
        "what": "diagnose on full synthetic cases (CXR + 12-lead ECG + labs + vitals + notes), default SmolLM2-135M "
                "backbone, greedy decoding" + (", decision-conditioned constrained decoding" if not args.free else
                                               "" if args.natural else f", forced to {args.max_new_tokens} new tokens"),
        "checkpoint": "untrained default (built for the benchmark)" if tmp else str(args.model),
        "torch_threads": args.threads,
        "backend": args.backend,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "build_and_save_s": round(build_s, 2) if tmp else None,
        "load_s": round(load_s, 2),
        "max_new_tokens": args.max_new_tokens,
        "mean_generated_tokens": round(statistics.mean(tokens), 1),
        "single_case_s": {k: {"p50": round(_pct(v, 0.5), 3), "p90": round(_pct(v, 0.9), 3)} for k, v in stages.items()},
        "decode_tokens_per_s_single": round(statistics.median(tokens) / _pct(stages["generate"], 0.5), 1),
        "goal_single_case_p50_s": 2.0,
        "goal_batched_cases_per_s": 5.0,
        "batched": {},
    }
    for bs in args.batch_sizes:
        batch = cases[:bs]
        evidence = [interpret_case(c) for c in batch]
        t = time.perf_counter()
        diagnose_many(model, batch, max_new_tokens=args.max_new_tokens, evidence=evidence, generate_kwargs=gen,
                      constrained=not args.free)
        dt = time.perf_counter() - t
        t = time.perf_counter()
        [interpret_case(c) for c in batch]
        dt_interp = time.perf_counter() - t
        result["batched"][str(bs)] = {"cases_per_s": round(bs / (dt + dt_interp), 2),
                                      "seconds": round(dt + dt_interp, 2), "interpret_s": round(dt_interp, 2)}
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
