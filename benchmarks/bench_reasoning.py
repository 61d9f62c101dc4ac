"""Trustworthiness of `diagnose`'s reasoning with the shipped checkpoint, on fresh synthetic cases.

For N fresh synthetic cases (a seed no training cohort used; the default modality mix)
`diagnose_many` runs as `medfuse diagnose` does: the head decides, the language model
explains that decision under the scaffold and constraints of `medfuse.model.constrained`.
Measured:
- consistency of the reasoning with the head: the `<answer>` equals the head's set, every
  reported disease keeps a rationale after the faithfulness check, no sentence argues for
  an unreported disease (`check_consistency`); goal 100 %;
- faithfulness: share of model-written sentences that `check_reasoning` keeps, overall
  and per kind of claim (numbers, tests, ECG leads, image findings, citations, other);
  goal >= 99 % (the code-written lines, such as the considered-but-absent line, are not
  counted);
- truncated sentences (goal 0); how often a rationale cites an evidence id at all;
- generated tokens and seconds per case (batched), with 3 example reasonings.

    python benchmarks/bench_reasoning.py [--n 200] [--batch-size 8] [--threads 1] [--free]

`--free` measures the unconstrained generation of earlier releases on the same cases
(the model writes its own `<think>` and `<answer>`) for comparison. Writes
benchmarks/results/reasoning.json (reasoning_free.json with --free).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections import Counter
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CHECKPOINT = HERE.parent / "src" / "medfuse" / "data" / "checkpoint"

# Kind of claim a faithfulness reason is about (first match wins), for the per-kind shares.
_KINDS = (
    ("truncated", ("cut off mid-sentence",)),
    ("citations", ("cites ",)),
    ("leads", ("names lead", " in V", " in I", " in aV", "which the ECG reading does not report", "the ECG does not")),
    ("numbers", ("states the number", "which does not match the case", "which the case does not report")),
    ("findings", ("image findings", "no chest X-ray")),
    ("tests", ("no such result", "calls ", "says no item is abnormal")),
)
_CODE_WRITTEN = ("Considered, not reported", "No candidate disease reaches")


def _kind(reason: str) -> str:
    for kind, cues in _KINDS:
        if any(c in reason for c in cues):
            return kind
    return "other"


def _cases(n: int, seed: int):
    from medfuse.synth.cohort import SynthConfig, synth_case

    return [synth_case(seed, i, SynthConfig()) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=CHECKPOINT, help="checkpoint folder (default: the shipped one)")
    parser.add_argument("--n", type=int, default=200, help="fresh synthetic cases")
    parser.add_argument("--seed", type=int, default=20261206, help="cohort seed (not used by any training cohort)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--free", action="store_true", help="unconstrained generation (earlier releases)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out_path = args.out or RESULTS / ("reasoning_free.json" if args.free else "reasoning.json")

    from transformers.utils import logging as hf_logging

    from medfuse.formats import parse_answer_set
    from medfuse.interpret.case import interpret_case
    from medfuse.model import MedFuse
    from medfuse.model.diagnosis import diagnose_many
    from medfuse.model.faithfulness import check_consistency, split_sentences

    hf_logging.disable_progress_bar()
    model = MedFuse.load(args.model)
    panel = model.panel
    cases = _cases(args.n, args.seed)
    evidence = [interpret_case(c) for c in cases]
    diagnose_many(model, cases[:1], max_new_tokens=8, evidence=evidence[:1])  # warm-up: lazy imports, vocab table

    results = []
    seconds = 0.0
    for start in range(0, len(cases), args.batch_size):
        batch, ev = cases[start:start + args.batch_size], evidence[start:start + args.batch_size]
        t = time.perf_counter()
        results += diagnose_many(model, batch, max_new_tokens=args.max_new_tokens, evidence=ev,
                                 constrained=not args.free)
        seconds += time.perf_counter() - t
        print(f"{len(results)}/{len(cases)} cases, {seconds:.0f} s", flush=True)

    consistent = answer_is_head = 0
    sentences = 0
    dropped: Counter = Counter()
    truncated = 0
    rationale_lines = cited_lines = 0
    tokens = []
    problems: Counter = Counter()
    for d in results:
        head = {panel.lookup(x.name).key for x in d.result.diagnoses if x.present}
        names = parse_answer_set(d.raw_text, panel) or []
        answer = {panel.lookup(n).key for n in names if panel.lookup(n) is not None}
        answer_is_head += answer == head
        consistency = d.consistency or check_consistency(d.check.text, head, panel)
        ok = consistency.consistent and answer == head
        consistent += ok
        problems.update(p.split(" ", 3)[0] + " " + p.split(" ", 3)[1] for p in consistency.problems)
        model_written = [s for s in split_sentences(d.check.text) if not s.startswith(_CODE_WRITTEN)]
        sentences += len(model_written) + len(d.check.dropped)
        for claim in d.check.dropped:
            dropped[_kind(claim.reason)] += 1
        truncated += d.check.truncated
        think = d.raw_text.split("</think>")[0].removeprefix("<think>")
        for line in think.split("\n"):
            if any(line.lower().startswith(panel.by_key(k).display("en").lower() + ":") for k in head):
                rationale_lines += 1
                cited_lines += "[E" in line
        tokens.append(d.generated_tokens or len(model.lm.tokenizer(d.raw_text, add_special_tokens=False)["input_ids"]))

    def share(bad: int) -> float | None:
        return round(1 - bad / sentences, 4) if sentences else None

    examples = [{"case_id": d.result.case_id,
                 "head": [x.name for x in d.result.diagnoses if x.present],
                 "raw": d.raw_text, "shown": d.result.reasoning,
                 "removed": [f"{c.reason}: {c.sentence}" for c in d.check.dropped]}
                for d in [r for r in results if any(x.present for x in r.result.diagnoses)][:3]]
    n = len(results)
    result = {
        "what": ("diagnose reasoning with the shipped checkpoint on fresh synthetic cases (default modality mix), "
                 + ("free generation" if args.free else "decision-conditioned, scaffolded, constrained decoding")),
        "checkpoint": str(args.model),
        "n_cases": n,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "torch_threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "consistency_with_head": round(consistent / n, 4),
        "answer_equals_head_set": round(answer_is_head / n, 4),
        "consistency_problems": dict(problems),
        "model_written_sentences": sentences,
        "faithfulness_overall": share(sum(dropped.values())),
        "faithfulness_by_kind": {k: share(dropped[k]) for k in
                                 ("numbers", "tests", "leads", "findings", "citations", "other")},
        "removed_sentences_by_kind": dict(dropped),
        "truncated_reasonings": truncated,
        "rationale_lines": rationale_lines,
        "rationale_lines_citing_evidence": round(cited_lines / rationale_lines, 4) if rationale_lines else None,
        "mean_generated_tokens": round(statistics.mean(tokens), 1),
        "seconds_per_case_batched": round(seconds / n, 3),
        "goals": {"consistency_with_head": 1.0, "faithfulness_overall": 0.99, "truncated_reasonings": 0},
        "examples": examples,
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.partial")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(out_path)
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}, indent=2))


if __name__ == "__main__":
    main()
