"""Scoring speed of cached multiple-choice outputs: parse + accuracy + bootstrap 95 % CI.

The goal: 10,000 cached multiple-choice items score in <= 10 s on 2 CPU cores.
This builds 10,000 realistic model outputs (short answers, chain-of-thought with
``<think>``, ``\\boxed{}``, ``<answer>`` tags, Chinese answers, option text, refusals,
ambiguous answers; 4-10 options), writes them to a JSONL cache as the harness does, then
times reading the cache, `parse_choice` on every output, `mc_metrics`, and a
1000-resample `bootstrap_ci` of accuracy. When the harness's `score_run` is importable it
is timed on the same items too. Prints the figures and writes them to
benchmarks/results/eval_scoring.json.

    python benchmarks/bench_eval_scoring.py [--n 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from medfuse.eval.bootstrap import bootstrap_ci
from medfuse.eval.metrics.multiple_choice import mc_metrics
from medfuse.eval.parsers import parse_choice

RESULTS = Path(__file__).parent / "results" / "eval_scoring.json"
GOAL_S = 10.0

_DRUGS = ["Amoxicillin", "Doxycycline", "Ceftriaxone", "Azithromycin", "Vancomycin", "Metformin", "Lisinopril",
          "Furosemide", "Heparin", "Warfarin"]  # fmt: skip
_REASONING = (
    "The patient presents with fever, productive cough and a right lower lobe consolidation on the chest "
    "radiograph. White cell count is raised and procalcitonin is elevated, which supports a bacterial cause. "
    "Option {w} would not cover the likely organisms, and renal function must be considered before dosing. "
)


def _output(rng: random.Random, letters: str, options: dict[str, str], gold: str) -> str:
    """One model output in one of the styles models produce (right ~70 % of the time)."""
    pick = gold if rng.random() < 0.7 else rng.choice(letters)
    wrong = rng.choice([x for x in letters if x != pick] or [pick])
    style = rng.randrange(12)
    think = _REASONING.format(w=wrong) * rng.randint(1, 4)
    if style == 0:
        return pick
    if style == 1:
        return f"The answer is ({pick})."
    if style == 2:
        return f"<think>{think}</think><answer>{pick}</answer>"
    if style == 3:
        return f"{think}\nTherefore, the final answer is $\\boxed{{{pick}}}$."
    if style == 4:
        return f"答案：{pick}"
    if style == 5:
        return f"{pick}. {options[pick]} is the most appropriate choice here.\n\n{think}"
    if style == 6:
        return options[pick].lower()
    if style == 7:
        return "I'm sorry, but I cannot provide medical advice. Please consult a physician."
    if style == 8:
        return f"Both {pick} and {wrong} seem reasonable; the answer is {pick} or {wrong}."
    if style == 9:
        return f"{think}\n**Answer:** {pick}"
    if style == 10:
        return f"<think>{think}</think>\nBased on the findings above, I would choose {pick}."
    return f"Answer: Based on the presentation, {options[pick]} is preferred."


def build_items(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        k = rng.choice([4, 4, 5, 5, 10])
        letters = "ABCDEFGHIJ"[:k]
        options = dict(zip(letters, rng.sample(_DRUGS, k), strict=True))
        gold = rng.choice(letters)
        items.append({"id": f"q{i}", "options": options, "gold": gold, "output": _output(rng, letters, options, gold)})
    return items


def score_cached(cache: Path) -> dict[str, float]:
    """Read the cache and score it; returns seconds per stage and the results."""
    t0 = time.perf_counter()
    records = [json.loads(line) for line in cache.read_text(encoding="utf-8").splitlines()]
    t1 = time.perf_counter()
    parsed = [parse_choice(r["output"], r["options"]) for r in records]
    t2 = time.perf_counter()
    gold = [r["gold"] for r in records]
    metrics = mc_metrics(parsed, gold)
    correct = np.array([p == g for p, g in zip(parsed, gold, strict=True)], dtype=float)
    t3 = time.perf_counter()
    ci = bootstrap_ci(correct, n_resamples=1000, seed=0)
    t4 = time.perf_counter()
    return {
        "read_s": t1 - t0,
        "parse_s": t2 - t1,
        "metrics_s": t3 - t2,
        "bootstrap_s": t4 - t3,
        "total_s": t4 - t0,
        "accuracy": metrics["accuracy"],
        "abstention_rate": metrics["abstention_rate"],
        "ci95": list(ci),
    }


def time_score_run(items: list[dict]) -> float | None:
    """Seconds for the harness's own `score_run` on the same items, if it is available."""
    try:
        from medfuse.eval.benchmarks.base import EvalItem
        from medfuse.eval.scoring import score_run
    except ImportError:
        return None
    eval_items = [
        EvalItem(id=it["id"], benchmark="bench", task_type="multiple_choice", answer_type="choice",
                 question="q", options=it["options"], gold=it["gold"])
        for it in items
    ]  # fmt: skip
    start = time.perf_counter()
    score_run(eval_items, [it["output"] for it in items], n_resamples=1000)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="cached items to score")
    parser.add_argument("--repeats", type=int, default=3, help="runs; the fastest is reported")
    args = parser.parse_args()

    items = build_items(args.n)
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        cache = Path(tmp) / "outputs.jsonl"
        cache.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items), encoding="utf-8")
        runs = [score_cached(cache) for _ in range(args.repeats)]
    best = min(runs, key=lambda r: r["total_s"])
    score_run_s = time_score_run(items)
    result = {
        "what": "parse + accuracy + 1000-resample bootstrap CI of cached multiple-choice outputs",
        "n_items": args.n,
        "mean_output_chars": round(float(np.mean([len(it["output"]) for it in items])), 1),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "goal_s": GOAL_S,
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in best.items()},
        "items_per_s": round(args.n / best["total_s"]),
        "score_run_s": None if score_run_s is None else round(score_run_s, 3),
        "meets_goal": best["total_s"] <= GOAL_S and (score_run_s is None or score_run_s <= GOAL_S),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for key, value in result.items():
        print(f"{key:>20}: {value}")


if __name__ == "__main__":
    main()
