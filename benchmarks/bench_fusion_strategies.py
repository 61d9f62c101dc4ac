"""The four fusion strategies (and hybrid without clue tokens) side by side, through `medfuse train encoders`.

Each variant is trained by the same encoder stage as the shipped checkpoint
(`configs/encoders.yaml`, only `model.fusion` / `model.use_clues` changed), on the same
training cases for the same number of epochs, calibrated on the same validation split,
and scored by `medfuse model evaluate` on the same held-out cohort (head decisions; the
language model is not involved). Reports macro/micro F1, mean Jaccard, macro AUROC and
the finding head's Acc@IoU0.5 per variant, and writes benchmarks/results/fusion_strategies.json.

    python benchmarks/bench_fusion_strategies.py --cohort cohort/train --eval cohort/eval \
        [--limit 1200] [--epochs 10] [--eval-limit 500]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from medfuse.model import MedFuse
from medfuse.train.config import EncodersConfig
from medfuse.train.encoders import train_encoders
from medfuse.train.evaluate import evaluate_checkpoint

RESULTS = Path(__file__).parent / "results" / "fusion_strategies.json"
VARIANTS = [("early", True), ("feature", True), ("late", True), ("hybrid", True), ("hybrid", False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, required=True, help="training cohort")
    parser.add_argument("--eval", type=Path, required=True, help="held-out cohort")
    parser.add_argument("--config", type=Path, default=Path("configs/encoders.yaml"))
    parser.add_argument("--limit", type=int, default=1200, help="training cases per variant")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--eval-limit", type=int, default=500, help="held-out cases scored")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"what": __doc__.splitlines()[0], "train_cases": args.limit, "epochs": args.epochs,
                    "eval_cases": args.eval_limit, "cpu_count": os.cpu_count(), "torch_threads": args.threads,
                    "python": platform.python_version(), "torch": torch.__version__, "variants": {}}
    base = EncodersConfig.from_yaml(args.config, {"cohort": str(args.cohort), "quiet": True})
    with tempfile.TemporaryDirectory() as tmp:
        for fusion, clues in VARIANTS:
            name = fusion if clues else f"{fusion}_no_clues"
            model_cfg = {**base.model, "fusion": fusion, "use_clues": clues}
            cfg = EncodersConfig.from_dict({**base.as_dict(), "model": model_cfg, "out": str(Path(tmp) / name),
                                            "limit": args.limit, "epochs": args.epochs})
            start = time.perf_counter()
            summary = train_encoders(cfg)
            model = MedFuse.load(Path(tmp) / name)
            ev = evaluate_checkpoint(model, args.eval, limit=args.eval_limit, single_modality=False)
            row = {"train_s": round(time.perf_counter() - start, 1),
                   "validation": summary["validation"]["diagnosis"],
                   "held_out": {k: ev["diagnosis"][k] for k in ("macro_f1", "micro_f1", "jaccard", "macro_auroc", "ece")},
                   "held_out_grounding_acc_iou_0.5": (ev["grounding"] or {}).get("acc_iou_0.5")}
            result["variants"][name] = row
            print(name, json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
