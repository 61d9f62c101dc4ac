"""The evaluation run: load items -> build prompts -> cache lookup -> generate what is
missing -> parse -> score -> per-item JSONL + summary.json.

Output folder of a run (one model on one benchmark):
- `run.json`: what was run (benchmark, data, split, language, limit, model spec and id,
  prompt version); a folder never mixes two runs;
- `cache.sqlite`: every model (and judge) output, keyed by (model id, prompt version,
  prompt hash), committed as it arrives;
- `items.jsonl`: one line per item: the item, prompt, raw output (or error), parsed
  answer, per-item scores, judge verdict if any;
- `summary.json`: headline metrics with bootstrap 95 % CIs, details, breakdowns, counts.

Failed requests: each is scored as a wrong answer (never as a model answer that happens
to score), counted in `n_errors` and by cause in `error_causes`; when some but not all
failed, `answered` holds the metrics over the answered items alone. When the share of
failed requests exceeds `max_error_share` the run has no score: `score_valid` is false,
every metric is null, and the CLI exits non-zero after printing the causes.

Rerunning the same command resumes: cached outputs are reused and only missing items
(never answered, or failed) call the model; when every output is cached the model is not
even loaded. Scoring always runs on the current parsers and metrics, so a metric change
is picked up by a rerun or by `rescore` (which needs only the folder).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from medfuse.errors import InputError, MedfuseError
from medfuse.eval.benchmarks import EvalItem, get_benchmark
from medfuse.eval.benchmarks.base import iter_jsonl, read_json
from medfuse.eval.cache import OutputCache
from medfuse.eval.prompts import PROMPT_VERSION, Prompt, build_prompt
from medfuse.record.store import write_text_atomic

RUN_FILE = "run.json"
ITEMS_FILE = "items.jsonl"
SUMMARY_FILE = "summary.json"


@dataclass
class EvalConfig:
    """One `medfuse eval run`; every field is a CLI flag of the same name."""

    model: str  # hf:PATH | openai:BASE_URL | medfuse:PATH
    benchmark: str  # a registered benchmark name (`medfuse eval list`)
    data: Path  # the benchmark's file or release folder
    out: Path  # the run's output folder
    split: str | None = None  # None: the benchmark's report split
    lang: str | None = None  # keep one language (SLAKE: en / zh)
    limit: int | None = None  # first N items only
    model_name: str | None = None  # openai: the served model's name
    concurrency: int = 8  # openai: requests in flight
    timeout_s: float = 120.0  # openai: per-request timeout
    max_retries: int = 5  # openai: retries on 429 / 5xx / timeouts
    batch_size: int = 4  # hf: prompts per generate() call
    max_new_tokens: int | None = None  # None: per-answer-type default (prompts.py)
    judge: str | None = None  # openai-compatible base URL of an LLM judge for open answers
    judge_model: str | None = None  # the judge's model name
    n_resamples: int = 1000  # bootstrap resamples for the 95 % CIs
    max_error_share: float = 0.5  # above this share of failed requests the run has no score
    progress: bool = True  # progress bar on stderr
    extra: dict = field(default_factory=dict)  # recorded in run.json as given


def _read_run(out: Path) -> dict | None:
    path = out / RUN_FILE
    if not path.is_file():
        return None
    run = read_json(path)
    if not isinstance(run, dict):
        raise InputError(path, "not a medfuse eval run file (expected a JSON object)")
    return run


def _check_max_error_share(value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise MedfuseError(f"--max-error-share must lie in [0, 1], got {value}")


def one_line(message: str, limit: int = 300) -> str:
    """An error cause as one short line (causes are printed one per line)."""
    return " ".join(str(message).split())[:limit]


def count_causes(messages) -> dict[str, int]:
    """{cause: number of requests that failed with it}, most frequent first."""
    from collections import Counter

    return dict(Counter(one_line(m) for m in messages).most_common())


def run_eval(cfg: EvalConfig, model=None, judge=None) -> dict:
    """Run (or resume) one evaluation and return its summary (also written to cfg.out).

    `model` / `judge` may be given as ready adapters (tests, notebooks); otherwise they
    are built from `cfg` only if some output is missing from the cache.
    """
    from medfuse.eval.models import create_model, model_cache_id

    _check_max_error_share(cfg.max_error_share)
    bench = get_benchmark(cfg.benchmark)
    items = bench.load(cfg.data, split=cfg.split, lang=cfg.lang, limit=cfg.limit)
    if not items:
        skipped = ", ".join(f"{k}: {v}" for k, v in bench.skipped.items()) or "none"
        raise InputError(cfg.data, f"no {bench.name} items to evaluate (split {cfg.split or bench.default_split}, skipped: {skipped})")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "output exists and is not a folder")
    model_id = model.model_id if model is not None else model_cache_id(cfg.model, cfg.model_name)
    run_info = {
        "benchmark": bench.name,
        "task_type": bench.task_type,
        "data": str(Path(cfg.data).resolve()),
        "split": cfg.split or bench.default_split,
        "lang": cfg.lang,
        "limit": cfg.limit,
        "model": cfg.model,
        "model_id": model_id,
        "prompt_version": PROMPT_VERSION,
        "max_new_tokens": cfg.max_new_tokens,
        "breakdowns": list(bench.breakdowns),
    }
    previous = _read_run(out)
    if previous is not None:
        for key in ("benchmark", "model_id"):
            if previous.get(key) != run_info[key]:
                raise MedfuseError(
                    f"{out}: this folder holds a run of {key} '{previous.get(key)}', not '{run_info[key]}'; "
                    "use a new --out folder per model and benchmark"
                )
    out.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    write_text_atomic(out / RUN_FILE, json.dumps({**run_info, "started": started, **cfg.extra}, indent=1, ensure_ascii=False))

    prompts = [build_prompt(it, cfg.max_new_tokens) for it in items]
    hashes = [p.cache_hash() for p in prompts]
    with OutputCache(out) as cache:
        cached = cache.lookup(model_id, PROMPT_VERSION)
        missing = list(dict.fromkeys(h for h in hashes if h not in cached))  # unique, in item order
        errors: dict[str, str] = {}
        accepts_images = previous.get("accepts_images") if previous else None
        n_cached = sum(h in cached for h in hashes)
        if missing:
            owned = model is None
            if owned:
                model = create_model(cfg.model, model_name=cfg.model_name, concurrency=cfg.concurrency,
                                     timeout_s=cfg.timeout_s, max_retries=cfg.max_retries, batch_size=cfg.batch_size)
            accepts_images = bool(model.accepts_images)
            by_hash = {h: p for h, p in zip(hashes, prompts, strict=True)}
            todo = [by_hash[h] for h in missing]
            try:
                _generate_into_cache(model, todo, missing, cache, model_id, errors, cfg.progress, f"eval {bench.name}")
            finally:
                if owned:
                    model.close()
            cached = cache.lookup(model_id, PROMPT_VERSION)
        outputs = [cached[h][0] if h in cached else None for h in hashes]
        probabilities = [(cached[h][1] or {}).get("probabilities") if h in cached else None for h in hashes]

        judged = None
        if cfg.judge or judge is not None:
            judged = _judge_open_answers(cfg, items, outputs, cache, judge)

    run_info.update({"accepts_images": accepts_images, "started": started})
    counts = {
        "n_cached": n_cached,
        "n_generated": len(missing) - len(errors),
        "n_errors": sum(h in errors for h in hashes),
        "error_causes": count_causes(errors[h] for h in hashes if h in errors),
        "skipped": dict(bench.skipped),
    }
    return write_results(out, run_info, items, prompts, hashes, outputs, probabilities, judged, counts, cfg.n_resamples,
                         extra=cfg.extra, max_error_share=cfg.max_error_share)


def _generate_into_cache(model, prompts: list[Prompt], hashes: list[str], cache: OutputCache, model_id: str,
                         errors: dict[str, str], progress: bool, desc: str) -> None:
    from tqdm import tqdm

    from medfuse.eval.models import GenerationError

    bar = tqdm(total=len(prompts), unit="item", desc=desc, disable=not progress, file=sys.stderr)
    try:
        for i, result in model.generate_iter(prompts):
            if isinstance(result, GenerationError):
                errors[hashes[i]] = str(result)
            else:
                probs = getattr(result, "probabilities", None)
                cache.put(model_id, PROMPT_VERSION, hashes[i], str(result), {"probabilities": probs} if probs else None)
            bar.update(1)
    finally:
        bar.close()


def _judge_open_answers(cfg: EvalConfig, items, outputs, cache: OutputCache, judge) -> dict | None:
    """Judge verdicts for open VQA answers: {item index: 1.0 | 0.0 | None} plus the judge id."""
    from medfuse.eval.judge import JUDGE_PROMPT_VERSION, judge_prompt, parse_verdict
    from medfuse.eval.scoring import extract_answer

    open_ix = [i for i, it in enumerate(items) if it.answer_type == "open" and outputs[i] is not None]
    if not open_ix:
        return None
    if judge is None:
        from medfuse.eval.models.openai_compat import OpenAICompatibleModel

        judge = OpenAICompatibleModel(cfg.judge, model_name=cfg.judge_model, concurrency=cfg.concurrency,
                                      timeout_s=cfg.timeout_s, max_retries=cfg.max_retries)
    prompts = [judge_prompt(items[i].question, str(items[i].gold), extract_answer(outputs[i])) for i in open_ix]
    hashes = [p.cache_hash() for p in prompts]
    cached = cache.lookup(judge.model_id, JUDGE_PROMPT_VERSION)
    todo = [k for k, h in enumerate(hashes) if h not in cached]
    if todo:
        from tqdm import tqdm

        from medfuse.eval.models import GenerationError

        bar = tqdm(total=len(todo), unit="item", desc="judge", disable=not cfg.progress, file=sys.stderr)
        for k, result in judge.generate_iter([prompts[k] for k in todo]):
            if not isinstance(result, GenerationError):
                cache.put(judge.model_id, JUDGE_PROMPT_VERSION, hashes[todo[k]], str(result))
            bar.update(1)
        bar.close()
        cached = cache.lookup(judge.model_id, JUDGE_PROMPT_VERSION)
    verdicts = {i: (parse_verdict(cached[h][0]) if h in cached else None) for i, h in zip(open_ix, hashes, strict=True)}
    return {"judge": judge.model_id, "prompt_version": JUDGE_PROMPT_VERSION, "verdicts": verdicts}


def write_results(out: Path, run_info: dict, items: list[EvalItem], prompts: list[Prompt] | list[dict], hashes: list[str],
                  outputs: list[str | None], probabilities: list[dict | None], judged: dict | None, counts: dict,
                  n_resamples: int = 1000, extra: dict | None = None, max_error_share: float = 0.5) -> dict:
    """Score and write items.jsonl + summary.json (atomically); returns the summary.

    A run whose share of failed requests exceeds `max_error_share` gets `score_valid`
    false and null metrics (see the module docstring).
    """
    import numpy as np

    from medfuse.eval.scoring import score_run

    records, block = score_run(items, outputs, probabilities, breakdown_keys=run_info.get("breakdowns", []),
                               n_resamples=n_resamples)
    verdicts = (judged or {}).get("verdicts", {})
    lines = []
    for i, (it, p, h, out_text, rec) in enumerate(zip(items, prompts, hashes, outputs, records, strict=True)):
        row = {
            "id": it.id,
            "prompt": p.as_dict() if isinstance(p, Prompt) else p,
            "prompt_hash": h,
            "raw_output": out_text,
            "error": out_text is None,
            "parsed": rec["parsed"],
            "gold": it.gold,
            "score": rec["score"],
        }
        if probabilities[i]:
            row["probabilities"] = probabilities[i]
        if i in verdicts or str(i) in verdicts:
            row["judge"] = verdicts.get(i, verdicts.get(str(i)))
        row["item"] = it.model_dump(mode="json")
        lines.append(json.dumps(row, ensure_ascii=False))
    write_text_atomic(out / ITEMS_FILE, "\n".join(lines) + "\n")

    summary = {
        "benchmark": run_info["benchmark"],
        "task_type": run_info["task_type"],
        "model": run_info["model"],
        "model_id": run_info["model_id"],
        "prompt_version": run_info["prompt_version"],
        "split": run_info.get("split"),
        "lang": run_info.get("lang"),
        "n_items": len(items),
        **{k: counts.get(k) for k in ("n_cached", "n_generated", "n_errors", "error_causes", "skipped")},
        "images_ignored": (sum(bool(it.images) for it in items) if run_info.get("accepts_images") is False else 0),
        **block,
    }
    n_failed = summary.pop("n_failed")  # the same count as n_errors, kept once
    error_share = n_failed / len(items) if items else 0.0
    summary.update(error_share=error_share, max_error_share=max_error_share, score_valid=error_share <= max_error_share)
    if not summary["score_valid"]:
        # No number may stand for a run that mostly did not answer.
        summary["metrics"] = dict.fromkeys(summary["metrics"])
        summary["ci95"] = {}
    summary |= {
        "bootstrap": {"method": "percentile", "confidence": 0.95, "n_resamples": n_resamples, "seed": 0},
        "scored_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if judged and verdicts:
        values = [v for v in verdicts.values() if v is not None]
        summary["judged"] = {
            "judge": judged["judge"],
            "prompt_version": judged["prompt_version"],
            "open_accuracy": float(np.mean(values)) if values else None,
            "n_judged": len(values),
            "n_unparsed": sum(v is None for v in verdicts.values()),
        }
    write_text_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=1, ensure_ascii=False, default=_jsonable))
    write_text_atomic(out / RUN_FILE, json.dumps({**run_info, **(extra or {}), "finished": summary["scored_at"]}, indent=1,
                                             ensure_ascii=False))
    return summary


def _jsonable(value):
    """numpy scalars and arrays from metric dicts -> plain JSON values."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def rescore(out: str | Path, n_resamples: int = 1000, max_error_share: float = 0.5) -> dict:
    """Re-parse and re-score a finished run folder with the current parsers and metrics;
    never calls a model (the raw outputs are in items.jsonl)."""
    _check_max_error_share(max_error_share)
    out = Path(out)
    run_info = _read_run(out)
    items_path = out / ITEMS_FILE
    if run_info is None or not items_path.is_file():
        raise InputError(out, "not a finished eval run (no run.json / items.jsonl); rerun `medfuse eval run`, which reuses the cache")
    items, prompts, hashes, outputs, probabilities, verdicts = [], [], [], [], [], {}
    lineno = 0
    try:
        for lineno, row in iter_jsonl(items_path):
            items.append(EvalItem.model_validate(row["item"]))
            prompts.append(row["prompt"])
            hashes.append(row["prompt_hash"])
            outputs.append(row["raw_output"])
            probabilities.append(row.get("probabilities"))
            if "judge" in row:
                verdicts[len(items) - 1] = row["judge"]
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(items_path, f"not a medfuse items file ({e.__class__.__name__} at line {lineno})") from None
    old = read_json(out / SUMMARY_FILE) if (out / SUMMARY_FILE).is_file() else {}
    if not isinstance(old, dict):
        raise InputError(out / SUMMARY_FILE, "not a medfuse summary (expected a JSON object)")
    judged = None
    if verdicts and old.get("judged"):
        judged = {"judge": old["judged"]["judge"], "prompt_version": old["judged"]["prompt_version"], "verdicts": verdicts}
    counts = {k: old.get(k) for k in ("n_cached", "n_generated", "n_errors", "error_causes", "skipped")}
    counts["n_errors"] = sum(o is None for o in outputs)
    return write_results(out, run_info, items, prompts, hashes, outputs, probabilities, judged, counts, n_resamples,
                         max_error_share=max_error_share)


__all__ = ["EvalConfig", "run_eval", "rescore", "write_results"]
