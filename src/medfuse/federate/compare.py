"""Centralised vs federated vs local-only training on the same sites, scored on the same held-out cases.

Every arm starts from the same initial model, trains the same local objective through the
same loop (`SiteTrainer`) for the same total epochs (rounds x local epochs), is calibrated
on the coordinator's validation split and scored on the held-out test split:
- centralised: one trainer on the pooled cases of all sites (each as its site recorded it);
- federated: `federate` with each strategy (and any extra variants, e.g. DP or SecAgg+);
- local-only: each site alone.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from medfuse.federate.config import FederateConfig
from medfuse.federate.local import evaluate_fusion, travelling_names
from medfuse.federate.run import federate, initial_model, load_splits, site_trainers
from medfuse.train.encoders import EncoderData

HELD_OUT_KEYS = ("macro_f1", "micro_f1", "jaccard", "macro_auroc", "n_samples")


def compare(cfg: FederateConfig, variants: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Held-out scores of each arm; `variants` maps a name to FederateConfig overrides
    (default: fedavg and fedprox with `cfg`'s mu)."""
    variants = variants or {"fedavg": {"strategy": "fedavg"}, "fedprox": {"strategy": "fedprox"}}
    splits = load_splits(cfg)
    base = initial_model(cfg, splits.sites)
    names = travelling_names(base, cfg.stage)
    splits.featurize(base)
    epochs = cfg.rounds * cfg.local_epochs
    findings = cfg.finding_weight > 0 and base.config.fusion != "early"
    arms: dict[str, Any] = {}

    def alone(name: str, cases: list, data: EncoderData, workdir: Path) -> dict[str, Any]:
        start = time.perf_counter()
        model = copy.deepcopy(base)
        trainer = site_trainers(cfg, model, names, [(name, cases)], workdir, [data])[0]
        trainer.train(epochs, seed=cfg.seed)
        scores = evaluate_fusion(model, trainer.fusion, splits.val, splits.test, val=splits.val_data,
                                 test=splits.test_data, findings_trained=findings)
        return {"held_out": {k: scores["held_out"][k] for k in HELD_OUT_KEYS},
                "train_cases": trainer.n_cases, "seconds": round(time.perf_counter() - start, 1)}

    with tempfile.TemporaryDirectory(prefix="medfuse-federate-compare-") as tmp:
        work = Path(tmp)
        pooled = [c for s in splits.sites for c in s.cases]
        pooled_data = EncoderData([item for d in splits.site_data for item in d.items])
        arms["centralised"] = alone("pooled", pooled, pooled_data, work)
        for name, overrides in variants.items():
            start = time.perf_counter()
            run = federate(replace(cfg, **{"out": str(work / name), "overwrite": True, **overrides}), splits=splits)
            r = run.report
            arms[name] = {"held_out": {k: r["held_out"][k] for k in HELD_OUT_KEYS},
                          "bytes_per_round": [{"round": x["round"], "down": x["bytes_down"], "up": x["bytes_up"]}
                                              for x in r["rounds_detail"]],
                          "travelling_parameters": r["travelling"]["parameters"],
                          "privacy": r["privacy"], "secure_aggregation": r["secure_aggregation"],
                          "seconds": round(time.perf_counter() - start, 1)}
        for site, data in zip(splits.sites, splits.site_data, strict=True):
            arms[f"local_only_{site.name}"] = alone(site.name, site.cases, data, work)
    return {"sites": [s.summary() for s in splits.sites], "total_epochs": epochs, "rounds": cfg.rounds,
            "local_epochs": cfg.local_epochs, "validation_cases": len(splits.val), "held_out_cases": len(splits.test),
            "arms": arms}
