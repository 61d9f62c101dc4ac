"""Centralised vs federated vs local-only training on the same sites, scored on the same held-out cases.

Every arm starts from the same initial model, trains the same local objective through the
same loop (`SiteTrainer`) for the same total epochs (rounds x local epochs), is calibrated
on the coordinator's validation split and scored on the held-out test split:
- centralised: one trainer on the pooled cases of all sites (each as its site recorded it);
- federated: `federate` with each strategy (and any extra variants, e.g. DP or SecAgg+);
- local-only: each site alone.
Each arm's gap to centralised (arm - centralised held-out macro-F1) comes with a paired
percentile-bootstrap 95 % interval over the held-out cases (`gap_ci`): the same resampled
cases score both arms, each at its own fitted thresholds.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.eval.bootstrap import bootstrap_ci
from medfuse.eval.metrics.classification import macro_f1
from medfuse.federate.config import FederateConfig
from medfuse.federate.local import evaluate_fusion, held_out_decisions, travelling_names
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
    decisions: dict[str, tuple[Any, Any]] = {}  # arm -> (labels, decisions) on the held-out cases

    def alone(name: str, cases: list, data: EncoderData, workdir: Path) -> dict[str, Any]:
        start = time.perf_counter()
        model = copy.deepcopy(base)
        trainer = site_trainers(cfg, model, names, [(name, cases)], workdir, [data])[0]
        trainer.train(epochs, seed=cfg.seed)
        scores = evaluate_fusion(model, trainer.fusion, splits.val, splits.test, val=splits.val_data,
                                 test=splits.test_data, findings_trained=findings)
        decisions[name] = held_out_decisions(model, splits.test_data)
        return {"held_out": {k: scores["held_out"][k] for k in HELD_OUT_KEYS},
                "train_cases": trainer.n_cases, "seconds": round(time.perf_counter() - start, 1)}

    with tempfile.TemporaryDirectory(prefix="medfuse-federate-compare-") as tmp:
        work = Path(tmp)
        pooled = [c for s in splits.sites for c in s.cases]
        pooled_data = EncoderData([item for d in splits.site_data for item in d.items])
        arms["centralised"] = alone("pooled", pooled, pooled_data, work)
        decisions["centralised"] = decisions.pop("pooled")
        for name, overrides in variants.items():
            start = time.perf_counter()
            run = federate(replace(cfg, **{"out": str(work / name), "overwrite": True, **overrides}), splits=splits)
            r = run.report
            decisions[name] = held_out_decisions(run.model, splits.test_data)
            arms[name] = {"held_out": {k: r["held_out"][k] for k in HELD_OUT_KEYS},
                          "bytes_per_round": [{"round": x["round"], "down": x["bytes_down"], "up": x["bytes_up"]}
                                              for x in r["rounds_detail"]],
                          "travelling_parameters": r["travelling"]["parameters"],
                          "privacy": r["privacy"], "secure_aggregation": r["secure_aggregation"],
                          "seconds": round(time.perf_counter() - start, 1)}
        for site, data in zip(splits.sites, splits.site_data, strict=True):
            arms[f"local_only_{site.name}"] = alone(site.name, site.cases, data, work)
            decisions[f"local_only_{site.name}"] = decisions.pop(site.name)
    labels, central = decisions["centralised"]
    for name, arm in arms.items():
        if name != "centralised":
            arm["gap_to_centralised"] = gap_ci(labels, central, decisions[name][1], cfg.seed)
    return {"sites": [s.summary() for s in splits.sites], "total_epochs": epochs, "rounds": cfg.rounds,
            "local_epochs": cfg.local_epochs, "validation_cases": len(splits.val), "held_out_cases": len(splits.test),
            "arms": arms}


def gap_ci(labels, central, arm, seed: int = 0, n_resamples: int = 1000) -> dict[str, Any]:
    """macro-F1(arm) - macro-F1(central) on the held-out cases, with its paired
    percentile-bootstrap 95 % interval (cases resampled, both arms scored on each resample)."""
    def gap(rows):
        return macro_f1(labels[rows], arm[rows]) - macro_f1(labels[rows], central[rows])

    every = np.arange(len(labels))
    low, high = bootstrap_ci(every, statistic=gap, n_resamples=n_resamples, seed=seed)
    return {"macro_f1": round(gap(every), 4), "ci95": [round(low, 4), round(high, 4)], "resamples": n_resamples}
