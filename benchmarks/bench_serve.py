"""Loopback load test of `medfuse serve`: requests/s and latency percentiles of a review
session's requests (GET result, GET review page, POST a committed feedback decision).

    python benchmarks/bench_serve.py [--requests 2000] [--clients 1 4 8]

The server is the real command (`python -m medfuse serve --lazy`, uvicorn, one worker,
SQLite in WAL mode with synchronous=FULL) in its own process on 127.0.0.1, so the client
threads and the server do not share an interpreter lock. The stored case is a tiny
model's diagnosis of a small multimodal case (PNG radiograph, 4 s 12-lead ECG, labs):
the requests measure the service (auth, database, page rendering with the ECG grid),
not generation. Writes benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from test_model_diagnose import TINY  # noqa: E402  (the tests' tiny model config)
from test_record import full_case  # noqa: E402


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per client setting")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8], help="concurrent clients to try")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serve.json")
    args = parser.parse_args(argv)

    import httpx
    import torch

    torch.set_num_threads(1)
    from medfuse.model import MedFuse
    from medfuse.model.config import ModelConfig
    from medfuse.serve import ReviewStore, TokenRegistry, run_load_test
    from medfuse.serve.app import store_analysis
    from medfuse.serve.engine import ModelEngine

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = MedFuse.build(ModelConfig.from_dict(TINY), tiny_llm=True)
        ckpt = model.save(tmp / "tiny")
        case = full_case("bench-case")
        case.ecg = case.ecg.model_copy(update={"signal": case.ecg.signal[:2000], "n_samples": 2000})
        db = f"sqlite:///{tmp / 'serve.db'}"
        store = ReviewStore(db)
        ref = store_analysis(store, case, ModelEngine(model=model, max_new_tokens=8).analyse(case, explain=False), {},
                             "bench")
        store.close()
        tokens = TokenRegistry()
        token = tokens.add("bench", "admin")
        tokens.write(tmp / "tokens.json")
        port = _free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        server = subprocess.Popen([sys.executable, "-m", "medfuse", "serve", "--model", str(ckpt), "--db", db,
                                   "--port", str(port), "--tokens", str(tmp / "tokens.json"), "--lazy"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 60
            while True:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit("the server did not start")
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            rows = []
            for clients in args.clients:
                stats = run_load_test(url, token, ref, n_requests=args.requests, clients=clients)
                print(json.dumps(stats))
                rows.append(stats)
        finally:
            server.terminate()
            server.wait(10)
    result = {"benchmark": "serve", "mix": "GET /api/cases/{ref}, GET /review/{ref}, POST feedback (committed), in turn",
              "server": "medfuse serve (uvicorn, 1 worker, SQLite WAL synchronous=FULL), own process, 127.0.0.1",
              "rows": rows, "python": platform.python_version(), "cpus": os.cpu_count(),
              "machine": platform.machine()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
