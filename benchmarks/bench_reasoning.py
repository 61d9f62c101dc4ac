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
    python benchmarks/bench_reasoning.py --n 200 --shard 0/2 --out a.json   # and --shard 1/2 --out b.json
    python benchmarks/bench_reasoning.py --merge a.json b.json --out reasoning.json

`--free` measures the unconstrained generation of earlier releases on the same cases
(the model writes its own `<think>` and `<answer>`) for comparison. Writes
benchmarks/results/reasoning.json (reasoning_free.json with --free) after every batch
("complete": false until the last), with one record per case so that `--shard` runs
(cases i, i+k, ... of the same cohort, for spare cores) merge into exactly the result
of one run (`--merge`). Rationale lines the scaffold writes whole (a disease no listed
item is tied to) are counted apart, not as model-written sentences.
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
    ("tests", ("no such result", "calls ", "says no item is abnormal", "evidence list does not tie",
               "not an evidence item or test")),
)
_CODE_WRITTEN = ("Considered, not reported", "No candidate disease reaches")
# Rationale sentences the scaffold writes whole for a disease no listed item is tied to.
_CODE_WRITTEN_RATIONALE = (": no listed evidence item shows it directly.", ": supported by the listed evidence cited below.")


def _kind(reason: str) -> str:
    for kind, cues in _KINDS:
        if any(c in reason for c in cues):
            return kind
    return "other"


def _cases(indices: list[int], seed: int):
    from medfuse.synth.cohort import SynthConfig, synth_case

    return [synth_case(seed, i, SynthConfig()) for i in indices]


def _record(d, panel, tokenizer) -> dict:
    """What one diagnosed case contributes to the measures (merged across shards exactly)."""
    from medfuse.formats import parse_answer_set
    from medfuse.model.faithfulness import check_consistency, split_sentences

    head = {panel.lookup(x.name).key for x in d.result.diagnoses if x.present}
    names = parse_answer_set(d.raw_text, panel) or []
    answer = {panel.lookup(n).key for n in names if panel.lookup(n) is not None}
    consistency = d.consistency or check_consistency(d.check.text, head, panel)
    shown = split_sentences(d.check.text)
    model_written = [s for s in shown if not s.startswith(_CODE_WRITTEN) and not s.endswith(_CODE_WRITTEN_RATIONALE)]
    think = d.raw_text.split("</think>")[0].removeprefix("<think>")
    lines = [ln for ln in think.split("\n")
             if any(ln.lower().startswith(panel.by_key(k).display("en").lower() + ":") for k in head)]
    return {
        "case_id": d.result.case_id,
        "answer_is_head": answer == head,
        "consistent": consistency.consistent and answer == head,
        "problems": [p.split(" ", 3)[0] + " " + p.split(" ", 3)[1] for p in consistency.problems],
        "model_written_sentences": len(model_written) + len(d.check.dropped),
        "removed": [_kind(c.reason) for c in d.check.dropped],
        "removed_reasons": [c.reason for c in d.check.dropped],
        "truncated": bool(d.check.truncated),
        "rationale_lines": len(lines),
        "rationale_lines_citing": sum("[E" in ln for ln in lines),
        "rationale_lines_code_written": sum(s.endswith(_CODE_WRITTEN_RATIONALE) for s in shown),
        "tokens": d.generated_tokens or len(tokenizer(d.raw_text, add_special_tokens=False)["input_ids"]),
        "head_nonempty": bool(head),
        "raw": d.raw_text, "shown": d.result.reasoning,
    }


def _summary(records: list[dict], seconds: float, n_planned: int, meta: dict) -> dict:
    """The measures over per-case records (one shard's, or several merged)."""
    n = len(records)
    sentences = sum(r["model_written_sentences"] for r in records)
    dropped = Counter(k for r in records for k in r["removed"])
    lines = sum(r["rationale_lines"] for r in records)

    def share(bad: int) -> float | None:
        return round(1 - bad / sentences, 4) if sentences else None

    examples = [{k: r[k] for k in ("case_id", "raw", "shown", "removed_reasons")}
                for r in [r for r in records if r["head_nonempty"]][:3]]
    return {
        **meta,
        "n_cases": n,
        "complete": n >= n_planned,
        "consistency_with_head": round(sum(r["consistent"] for r in records) / n, 4) if n else None,
        "answer_equals_head_set": round(sum(r["answer_is_head"] for r in records) / n, 4) if n else None,
        "consistency_problems": dict(Counter(p for r in records for p in r["problems"])),
        "model_written_sentences": sentences,
        "faithfulness_overall": share(sum(dropped.values())),
        "faithfulness_by_kind": {k: share(dropped[k]) for k in
                                 ("numbers", "tests", "leads", "findings", "citations", "other")},
        "removed_sentences_by_kind": dict(dropped),
        "removed_reasons": [x for r in records for x in r["removed_reasons"]],
        "truncated_reasonings": sum(r["truncated"] for r in records),
        "rationale_lines": lines,
        "rationale_lines_code_written": sum(r["rationale_lines_code_written"] for r in records),
        "rationale_lines_citing_evidence": round(sum(r["rationale_lines_citing"] for r in records) / lines, 4)
        if lines else None,
        "mean_generated_tokens": round(statistics.mean(r["tokens"] for r in records), 1) if n else None,
        "seconds_per_case_batched": round(seconds / n, 3) if n else None,
        "goals": {"consistency_with_head": 1.0, "faithfulness_overall": 0.99, "truncated_reasonings": 0},
        "examples": examples,
    }


def _write(out_path: Path, result: dict) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.partial")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(out_path)


def _merge(paths: list[Path], out_path: Path) -> None:
    """One result from shard results (`--shard i/k` runs of the same settings)."""
    parts = [json.loads(p.read_text()) for p in paths]
    records = [r for part in parts for r in part["per_case"]]
    meta = {k: v for k, v in parts[0].items() if k in _META_KEYS}
    meta["shards"] = [{"file": str(p), "n_cases": part["n_cases"], "seconds_per_case_batched":
                       part["seconds_per_case_batched"], "load_average_1min": part.get("load_average_1min")}
                      for p, part in zip(paths, parts)]
    n_planned = sum(part.get("n_planned", part["n_cases"]) for part in parts)
    seconds = sum(part["seconds"] for part in parts)  # each shard's own decode time, added
    result = _summary(records, seconds, n_planned, meta)
    result["per_case"] = records
    _write(out_path, result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("examples", "per_case", "removed_reasons")},
                     indent=2))


_META_KEYS = ("what", "checkpoint", "seed", "batch_size", "max_new_tokens", "torch_threads", "cpu_count", "python",
              "torch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=CHECKPOINT, help="checkpoint folder (default: the shipped one)")
    parser.add_argument("--n", type=int, default=200, help="fresh synthetic cases")
    parser.add_argument("--seed", type=int, default=20261206, help="cohort seed (not used by any training cohort)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--free", action="store_true", help="unconstrained generation (earlier releases)")
    parser.add_argument("--shard", default="0/1", help="i/k: run the cases whose index is i modulo k")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="merge shard results into --out")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out_path = args.out or RESULTS / ("reasoning_free.json" if args.free else "reasoning.json")
    if args.merge:
        _merge(args.merge, out_path)
        return
    shard, shards = (int(x) for x in args.shard.split("/"))

    from transformers.utils import logging as hf_logging

    from medfuse.interpret.case import interpret_case
    from medfuse.model import MedFuse
    from medfuse.model.diagnosis import diagnose_many

    hf_logging.disable_progress_bar()
    model = MedFuse.load(args.model)
    panel = model.panel
    cases = _cases([i for i in range(args.n) if i % shards == shard], args.seed)
    evidence = [interpret_case(c) for c in cases]
    diagnose_many(model, cases[:1], max_new_tokens=8, evidence=evidence[:1])  # warm-up: lazy imports, vocab table
    meta = {
        "what": ("diagnose reasoning with the shipped checkpoint on fresh synthetic cases (default modality mix), "
                 + ("free generation" if args.free else "decision-conditioned, scaffolded, constrained decoding")),
        "checkpoint": str(args.model), "seed": args.seed, "shard": args.shard, "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "torch_threads": args.threads, "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "torch": torch.__version__,
    }

    records: list[dict] = []
    seconds = 0.0
    for start in range(0, len(cases), args.batch_size):
        batch, ev = cases[start:start + args.batch_size], evidence[start:start + args.batch_size]
        t = time.perf_counter()
        done = diagnose_many(model, batch, max_new_tokens=args.max_new_tokens, evidence=ev, constrained=not args.free)
        seconds += time.perf_counter() - t
        records += [_record(d, panel, model.lm.tokenizer) for d in done]
        print(f"{len(records)}/{len(cases)} cases, {seconds:.0f} s", flush=True)
        # Written after every batch: a run stopped early still reports what it measured ("complete": false).
        result = _summary(records, seconds, len(cases), {**meta, "load_average_1min": round(os.getloadavg()[0], 2)})
        _write(out_path, {**result, "n_planned": len(cases), "seconds": round(seconds, 1), "per_case": records})
    print(json.dumps({k: v for k, v in result.items() if k not in ("examples", "removed_reasons")}, indent=2))


if __name__ == "__main__":
    main()
