"""Generation throughput of `medfuse synth` for the full case, with 1 and 2 workers.

Every case has every modality (12-lead 10 s 500 Hz ECG, 256x256 radiograph, labs,
vitals, notes; genomics where drawn) and is written to disk with the cohort index and
datasheet, exactly as `medfuse synth` does. The goal is >= 20 cases/s on 2 CPU
cores. Prints the figures and writes them to benchmarks/results/synth.json.

    python benchmarks/bench_synth.py [--n 400] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from medfuse.synth.cohort import SynthConfig, synth_case, synth_cohort

RESULTS = Path(__file__).parent / "results" / "synth.json"


def _time_parts(config: SynthConfig, n: int = 60) -> dict[str, float]:
    """Milliseconds per full case spent generating it in memory (no disk writes)."""
    start = time.perf_counter()
    for i in range(n):
        synth_case(0, i, config)
    generate_ms = (time.perf_counter() - start) / n * 1000
    return {"generate_ms_per_case": round(generate_ms, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="cases per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per worker count; the best is reported")
    args = parser.parse_args()

    config = SynthConfig(p_cxr=1.0, p_ecg=1.0, p_labs=1.0, p_vitals=1.0, p_notes=1.0)
    result: dict = {
        "what": "full synthetic case: 12-lead 10 s 500 Hz ECG + 256x256 CXR + labs + vitals + notes, written to disk",
        "n_cases": args.n,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "goal_cases_per_s_2_workers": 20.0,
    }
    result.update(_time_parts(config))
    tmp = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        for workers in (1, 2):
            best = 0.0
            for r in range(args.repeats):
                out = tmp / f"w{workers}_{r}"
                summary = synth_cohort(n=args.n, seed=r, out=out, config=config, workers=workers, progress=False)
                best = max(best, summary["cases_per_s"])
                shutil.rmtree(out)
            result[f"cases_per_s_{workers}_worker{'s' if workers > 1 else ''}"] = best
            print(f"{workers} worker(s): {best:.1f} cases/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["meets_goal"] = result["cases_per_s_2_workers"] >= result["goal_cases_per_s_2_workers"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
