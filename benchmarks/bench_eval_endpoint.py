"""Requests in flight vs configured concurrency against a local OpenAI-compatible stub,
and the time to score 10,000 cached multiple-choice items.

    python benchmarks/bench_eval_endpoint.py [--latency 0.05] [--items 200] [--score-items 10000]

The stub answers every request after `--latency` seconds, like a server whose batch
slots are never full; with N requests in flight the throughput should be about
N / latency and the maximum in flight exactly N. The scoring part runs `medfuse eval
run` twice on a generated MedQA-format file: once to fill the cache, then a timed rerun
that only loads, looks up the cache, parses, scores (with 1,000 bootstrap resamples) and
writes results (goal: <= 10 s on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import eval_stub_server  # noqa: E402  (the stub server of the tests)
from eval_stub_server import StubServer, write_medqa  # noqa: E402

eval_stub_server.MAX_REQUESTS = 10**9  # the tests' runaway guard; benchmarks send many more

from medfuse.eval.harness import EvalConfig, run_eval  # noqa: E402
from medfuse.eval.models.openai_compat import OpenAICompatibleModel  # noqa: E402
from medfuse.eval.prompts import Prompt  # noqa: E402


def _serve(latency: float, port_queue) -> None:
    """Run the stub in its own process, so that the client's threads and the server's
    do not share one interpreter lock and the measurement is the client's."""
    eval_stub_server.MAX_REQUESTS = 10**9
    with StubServer(_answer_a, delay_s=latency) as server:
        port_queue.put(server.url)
        server.thread.join()


def _answer_a(text: str) -> str:
    return "<answer>A</answer>"


def bench_concurrency(latency: float, n_items: int) -> list[dict]:
    import multiprocessing as mp
    import urllib.request

    rows = []
    for concurrency in (1, 4, 8, 16, 32):
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        proc = ctx.Process(target=_serve, args=(latency, q), daemon=True)
        proc.start()
        try:
            url = q.get(timeout=60)
            model = OpenAICompatibleModel(url, model_name="stub", concurrency=concurrency, timeout_s=30)
            prompts = [Prompt(system="s", user=f"Question number {k}?", max_new_tokens=8) for k in range(n_items)]
            t0 = time.perf_counter()
            outputs = model.generate(prompts)
            dt = time.perf_counter() - t0
            assert len(outputs) == n_items
            with urllib.request.urlopen(url.rsplit("/v1", 1)[0] + "/stats") as resp:
                stats = json.load(resp)
            rows.append({"concurrency": concurrency, "max_in_flight": stats["max_in_flight"],
                         "requests_per_s": round(n_items / dt, 1), "ideal_requests_per_s": round(concurrency / latency, 1)})
        finally:
            proc.terminate()
            proc.join()
    return rows


def bench_scoring(n_items: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "test.jsonl"
        write_medqa(data, n_items)
        with StubServer(lambda text: "The answer is <answer>B</answer>.") as server:
            cfg = EvalConfig(model=f"openai:{server.url}", model_name="stub", benchmark="medqa", data=data,
                             out=Path(tmp) / "run", concurrency=32, progress=False)
            t0 = time.perf_counter()
            run_eval(cfg)
            fill = time.perf_counter() - t0
            t0 = time.perf_counter()
            summary = run_eval(cfg)
            rescore_s = time.perf_counter() - t0
            assert server.requests == n_items and summary["n_cached"] == n_items
        return {"items": n_items, "first_run_s": round(fill, 2), "cached_rerun_s": round(rescore_s, 2),
                "accuracy": summary["metrics"]["accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.05, help="stub latency per request, seconds")
    ap.add_argument("--items", type=int, default=200, help="requests per concurrency level")
    ap.add_argument("--score-items", type=int, default=10000, help="cached items to score (0 to skip)")
    args = ap.parse_args()
    print("concurrency  max_in_flight  requests/s  ideal")
    for r in bench_concurrency(args.latency, args.items):
        print(f"{r['concurrency']:>11}  {r['max_in_flight']:>13}  {r['requests_per_s']:>10}  {r['ideal_requests_per_s']:>5}")
    if args.score_items:
        print(json.dumps({"scoring": bench_scoring(args.score_items)}))


if __name__ == "__main__":
    main()
