"""A bounded loopback load test of a running service: requests/s and latency percentiles.

Used by the test suite (a few hundred requests) and `benchmarks/bench_serve.py` (more).
The mix is what a review session does: open the result, load the review page, record a
decision; each client is a thread with its own keep-alive HTTP connection (httpx).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np


def run_load_test(base_url: str, token: str, ref: str, n_requests: int = 300, clients: int = 4,
                  timeout_s: float = 30.0) -> dict[str, Any]:
    """Send `n_requests` (GET result, GET review page, POST feedback, in turn) from `clients`
    concurrent clients; returns counts, errors, requests/s and p50/p95/p99 latency (ms)."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n_requests))

    def client() -> None:
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                try:
                    if i % 3 == 0:
                        r = http.get(f"/api/cases/{ref}")
                    elif i % 3 == 1:
                        r = http.get(f"/review/{ref}")
                    else:
                        r = http.post(f"/api/cases/{ref}/feedback",
                                      json={"target": "diagnosis", "index": 0, "decision": "accept"})
                    ok = r.status_code < 400
                    problem = None if ok else f"HTTP {r.status_code}"
                except httpx.HTTPError as e:
                    problem = e.__class__.__name__
                elapsed = (time.perf_counter() - start) * 1000
                with lock:
                    latencies.append(elapsed)
                    if problem:
                        errors.append(problem)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    lat = np.asarray(latencies)
    return {"requests": len(latencies), "clients": clients, "errors": len(errors), "wall_s": round(wall, 3),
            "requests_per_s": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p95_ms": round(float(np.percentile(lat, 95)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1)}
