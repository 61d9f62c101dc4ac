"""`federate(cfg)`: one federated training run, from a cohort to a checkpoint and a report.

1. The cohort's patient-level TRAINING split is divided into `cfg.sites` hospitals
   (`partition_sites`: label shift + each site's own modalities); the validation split
   stays with the coordinator for calibration and per-round scores, the test split is the
   held-out set of the report.
2. A new model's feature statistics are pooled from per-site statistics (counts, means,
   variances: aggregates, never records); a `model` checkpoint keeps its own.
3. Flower runs the rounds: the legacy `FedAvg` / `FedProx` strategy (wrapped by
   `DifferentialPrivacyClientSideFixedClipping` for central DP) inside `DefaultWorkflow`,
   whose fit step is `SecAggPlusWorkflow` with `secagg`; the sites are `ClientApp`s
   reached through `LocalGrid` (protobuf on the wire, bytes counted). Only the travelling
   weights (`travelling_names`) are ever sent. Without DP and SecAgg+ each tensor is
   combined over the sites that trained it (modality shift): their case-weighted mean
   (`aggregation: mean`, `_average_over_trainers`) or FedNova's normalised average
   (`aggregation: normalised`, `_normalised_average`); `server_lr` / `server_momentum`
   put a FedAvgM server optimiser on the result. A round's local work may be a fraction
   of an epoch (`local_epochs` < 1: more, shorter rounds for the same total epochs).
   Each site's learning rate follows one warm-up + cosine schedule across all rounds
   (`lr_schedule: global`, see `SiteTrainer`).
4. After each round the global model is calibrated and scored on the validation split;
   at the end the checkpoint is written atomically with `federate.json` (per-round loss and
   metrics, bytes down/up per round, epsilon at delta, sites, what travelled) inside it.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfuse.errors import InputError
from medfuse.federate.client import SiteClient, site_client_app
from medfuse.federate.config import FederateConfig
from medfuse.federate.local import (
    SiteTrainer,
    evaluate_fusion,
    set_arrays,
    travelling_names,
)
from medfuse.federate.partition import Site, partition_sites
from medfuse.federate.privacy import site_level_epsilon
from medfuse.federate.transport import LocalGrid
from medfuse.record.case import PatientCase
from medfuse.train.common import seed_everything, split_cases

REPORT_FILE = "federate.json"
FIRST_NODE_ID = 101  # Flower node ids of the sites: 101, 102, ...


@dataclass
class CohortSplits:
    """The coordinator's view: the sites (training split) and its own validation and test cases."""

    sites: list[Site]
    val: list[PatientCase]
    test: list[PatientCase]
    # Featurized inputs (`EncoderData`) of each site, val and test, filled by `featurize`
    # and shared by every run on these splits (the comparison trains several arms).
    site_data: list[Any] | None = None
    val_data: Any = None
    test_data: Any = None

    def featurize(self, model) -> CohortSplits:
        """Featurize every split once with `model`'s statistics (idempotent)."""
        from medfuse.train.encoders import EncoderData

        if self.site_data is None:
            self.site_data = [EncoderData.build(s.cases, model, with_texts=False) for s in self.sites]
            self.val_data = EncoderData.build(self.val, model, with_texts=False)
            self.test_data = EncoderData.build(self.test, model, with_texts=False)
        return self


@dataclass
class FederatedRun:
    """What `federate` returns: the trained model, the report, and the run's plumbing (for audits)."""

    model: Any
    report: dict[str, Any]
    grid: LocalGrid
    clients: list[SiteClient] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def load_splits(cfg: FederateConfig, disease_keys: list[str] | None = None) -> CohortSplits:
    """Read the cohort's splits and partition its training patients into sites."""
    small = None if cfg.limit is None else max(8, cfg.limit // 4)
    train = split_cases(cfg.cohort, "train", cfg.limit, cfg.split_seed)
    val = split_cases(cfg.cohort, "val", small, cfg.split_seed)
    test = split_cases(cfg.cohort, "test", small, cfg.split_seed)
    if not train or not val or not test:
        raise InputError(cfg.cohort, f"too few cases for train/val/test splits "
                                     f"({len(train)} / {len(val)} / {len(test)})")
    try:
        sites = partition_sites(train, cfg.modalities_of_sites(), seed=cfg.seed, alpha=cfg.label_alpha,
                                disease_keys=disease_keys)
    except InputError as e:
        raise InputError(cfg.cohort, e.problem) from None
    return CohortSplits(sites, val, test)


def pooled_feature_stats(sites: list[Site]):
    """Feature statistics of all sites' cases from per-site (count, mean, std) aggregates:
    exact for the labs (per-test counts); the vital signs are weighted by case counts."""
    from medfuse.model.inputs import FeatureStats

    parts = [FeatureStats.fit(s.cases) for s in sites]

    def pool(means: list[float], stds: list[float], counts: list[int]) -> tuple[float, float]:
        n = sum(counts)
        if n == 0:
            return 0.0, 1.0
        mean = sum(c * m for c, m in zip(counts, means, strict=True)) / n
        var = sum(c * (s * s + m * m) for c, m, s in zip(counts, means, stds, strict=True)) / n - mean * mean
        std = math.sqrt(max(var, 0.0))
        return mean, std if std > 1e-6 else 1.0

    keys = parts[0].lab_keys
    labs = [pool([p.lab_mean[i] for p in parts], [p.lab_std[i] for p in parts], [p.lab_counts[i] for p in parts])
            for i in range(len(keys))]
    vitals = [pool([p.vital_mean[i] for p in parts], [p.vital_std[i] for p in parts], [p.n_cases for p in parts])
              for i in range(len(parts[0].vital_mean))]
    return FeatureStats(lab_keys=list(keys), lab_mean=[m for m, _ in labs], lab_std=[s for _, s in labs],
                        vital_mean=[m for m, _ in vitals], vital_std=[s for _, s in vitals],
                        n_cases=sum(p.n_cases for p in parts),
                        lab_counts=[sum(p.lab_counts[i] for p in parts) for i in range(len(keys))])


def initial_model(cfg: FederateConfig, sites: list[Site]):
    """The starting model: the `model` checkpoint, or a new one (config + pooled statistics)."""
    from medfuse.model import MedFuse
    from medfuse.model.config import ModelConfig

    if cfg.model:
        return MedFuse.load(cfg.model)
    config = ModelConfig.from_dict({"seed": cfg.seed, **cfg.model_config}, origin=f"{cfg.cohort}: model_config")
    return MedFuse.build(config, stats=pooled_feature_stats(sites), tiny_llm=cfg.tiny_llm)


def site_trainers(cfg: FederateConfig, model, names: list[str], cases_per_site: list[tuple[str, list[PatientCase]]],
                  workdir: Path, data: list[Any] | None = None) -> list[SiteTrainer]:
    """A `SiteTrainer` per (name, cases) with the run's local training settings (and
    their featurized `data`, when already built)."""
    data = data or [None] * len(cases_per_site)
    return [SiteTrainer(name, cases, model, names, cfg.stage, batch_size=cfg.batch_size, lr=cfg.lr,
                        warmup_steps=cfg.warmup_steps, finding_weight=cfg.finding_weight, workdir=workdir,
                        cohort=cfg.cohort, data=d, lr_schedule=cfg.lr_schedule, keep_optimizer=cfg.keep_optimizer)
            for (name, cases), d in zip(cases_per_site, data, strict=True)]


def _strategy(cfg: FederateConfig, initial: list[np.ndarray], evaluate_fn):
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import (
        DifferentialPrivacyClientSideFixedClipping,
        FedAvg,
        FedProx,
    )

    def fit_config(server_round: int) -> dict[str, Any]:
        return {"server_round": server_round, "rounds": cfg.rounds, "local_epochs": cfg.local_epochs}

    def mean_loss(metrics: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        n = sum(w for w, _ in metrics) or 1
        return {"train_loss": sum(w * float(m["loss"]) for w, m in metrics) / n}

    common = {"fraction_fit": 1.0, "fraction_evaluate": 0.0, "min_fit_clients": cfg.sites,
              "min_available_clients": cfg.sites, "accept_failures": False,
              "initial_parameters": ndarrays_to_parameters(initial), "evaluate_fn": evaluate_fn,
              "on_fit_config_fn": fit_config, "fit_metrics_aggregation_fn": mean_loss}
    strategy = FedProx(proximal_mu=cfg.mu, **common) if cfg.strategy == "fedprox" else FedAvg(**common)
    current = {"global": [a.astype(np.float64) for a in initial]}  # the global model, as the last round left it
    if cfg.dp_clip <= 0 and not cfg.secagg:
        if cfg.aggregation == "normalised":
            _normalised_average(strategy, current)
        else:
            _average_over_trainers(strategy)
    if cfg.dp_clip > 0:
        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy, noise_multiplier=cfg.dp_noise, clipping_norm=cfg.dp_clip, num_sampled_clients=cfg.sites)
    if cfg.server_lr != 1.0 or cfg.server_momentum > 0:
        _server_momentum(strategy, initial, cfg.server_lr, cfg.server_momentum)
    _float32_aggregate(strategy)
    _track_global(strategy, current)
    return strategy


def _average_over_trainers(strategy) -> None:
    """Average each tensor over the sites that trained it (weighted by their case counts).

    Sites differ in modalities: plain FedAvg would pull the ECG encoder, which only the
    sites with ECGs train, back towards its old value by the share of cases at sites
    without ECGs, every round. The sites' `trained` masks say which tensors moved; a
    tensor no site trained keeps the global value. Not used with DP (a mean over fewer
    sites is more sensitive than the noise is scaled for) nor with SecAgg+ (the server
    sees only the sum of all sites).
    """
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

    aggregate = strategy.aggregate_fit

    def aggregate_fit(server_round, results, failures):
        params, metrics = aggregate(server_round, results, failures)
        if params is None or not results or any("trained" not in res.metrics for _, res in results):
            return params, metrics
        plain = parameters_to_ndarrays(params)  # every tensor a site left alone equals the global one
        updates = [parameters_to_ndarrays(res.parameters) for _, res in results]
        masks = [[c == "1" for c in str(res.metrics["trained"])] for _, res in results]
        merged = []
        for t, fallback in enumerate(plain):
            weights = np.array([res.num_examples * masks[k][t] for k, (_, res) in enumerate(results)], dtype=np.float64)
            if weights.sum() == 0:
                merged.append(fallback)
            else:
                merged.append(np.tensordot(weights / weights.sum(), np.stack([u[t] for u in updates]), axes=1))
        return ndarrays_to_parameters([m.astype(np.float32) for m in merged]), metrics

    strategy.aggregate_fit = aggregate_fit


def _normalised_average(strategy, current: dict[str, list[np.ndarray]]) -> None:
    """FedNova's normalised averaging (Wang et al., NeurIPS 2020), per tensor over the sites that trained it.

    Sites run their local epochs, so a site with n_k cases takes tau_k ~ n_k / batch steps
    and FedAvg's case-weighted mean of the updates weights each site's direction by about
    n_k * tau_k ~ n_k^2: the largest site's disease mix dominates the global model
    (FedNova's "objective inconsistency"), and the mean of updates the size of tau_k steps
    moves the model by about sum_k p_k tau_k steps a round, less than the sum_k tau_k steps
    one centralised epoch over the same cases takes. Here each site's update is divided by
    its step count, the normalised updates are averaged with the case weights p_k, and the
    average is taken tau_eff = sum_k tau_k steps: the per-step direction is the pooled
    gradient's and a round moves as far as one centralised epoch. Per tensor, only the sites
    whose data trained it count (a site without radiographs neither pulls the image encoder
    back nor adds steps to it). A tensor no site trained keeps the global value.
    """
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

    aggregate = strategy.aggregate_fit

    def aggregate_fit(server_round, results, failures):
        params, metrics = aggregate(server_round, results, failures)  # Flower's bookkeeping (fit metrics)
        if params is None or not results:
            return params, metrics
        missing = [k for k in ("trained", "steps") if any(k not in res.metrics for _, res in results)]
        if missing:
            raise ValueError(f"normalised averaging needs every site's {' and '.join(missing)} (fit metrics)")
        global_ = current["global"]
        updates = [[w.astype(np.float64) - g
                    for w, g in zip(parameters_to_ndarrays(res.parameters), global_, strict=True)]
                   for _, res in results]
        masks = [[c == "1" for c in str(res.metrics["trained"])] for _, res in results]
        cases = np.array([res.num_examples for _, res in results], dtype=np.float64)
        steps = np.array([max(1, int(res.metrics["steps"])) for _, res in results], dtype=np.float64)
        merged = []
        for t, g in enumerate(global_):
            trained = np.array([mask[t] for mask in masks])
            if not trained.any():
                merged.append(g)
                continue
            share = np.where(trained, cases, 0.0) / cases[trained].sum()  # p_k over the sites that trained it
            tau_eff = steps[trained].sum()
            direction = sum(share[k] / steps[k] * updates[k][t] for k in np.flatnonzero(trained))
            merged.append(g + tau_eff * direction)
        return ndarrays_to_parameters([m.astype(np.float32) for m in merged]), metrics

    strategy.aggregate_fit = aggregate_fit


def _track_global(strategy, current: dict[str, list[np.ndarray]]) -> None:
    """Keep `current["global"]` at the model each round's aggregation hands out (the outermost
    wrapper: what the sites receive next), for the wrappers that need the global weights."""
    from flwr.common import parameters_to_ndarrays

    aggregate = strategy.aggregate_fit

    def aggregate_fit(server_round, results, failures):
        params, metrics = aggregate(server_round, results, failures)
        if params is not None:
            current["global"] = [a.astype(np.float64) for a in parameters_to_ndarrays(params)]
        return params, metrics

    strategy.aggregate_fit = aggregate_fit


def _server_momentum(strategy, initial: list[np.ndarray], lr: float, momentum: float) -> None:
    """Server optimiser on the aggregate (FedAvgM, Hsu et al. 2019, as Flower's `FedAvgM`):
    the pseudo-gradient g = w_global - aggregate feeds v <- momentum * v + g and
    w_global <- w_global - lr * v. Applied after the per-tensor averaging (and DP noise),
    so a tensor no site trained keeps g = 0; Flower's own FedAvgM would average it over all sites.
    """
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

    aggregate = strategy.aggregate_fit
    state = {"global": [a.astype(np.float64) for a in initial], "velocity": None}

    def aggregate_fit(server_round, results, failures):
        params, metrics = aggregate(server_round, results, failures)
        if params is None:
            return params, metrics
        grads = [w - a for w, a in zip(state["global"], parameters_to_ndarrays(params), strict=True)]
        velocity = grads if state["velocity"] is None else \
            [momentum * v + g for v, g in zip(state["velocity"], grads, strict=True)]
        state["velocity"] = velocity if momentum > 0 else None
        state["global"] = [w - lr * v for w, v in zip(state["global"], velocity, strict=True)]
        return ndarrays_to_parameters([w.astype(np.float32) for w in state["global"]]), metrics

    strategy.aggregate_fit = aggregate_fit


def _float32_aggregate(strategy) -> None:
    """Cast the aggregate back to float32: SecAgg+'s dequantised sum and the DP noise come
    back as float64, which would double every later download of a float32 model."""
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

    aggregate = strategy.aggregate_fit

    def aggregate_fit(server_round, results, failures):
        params, metrics = aggregate(server_round, results, failures)
        if params is not None:
            params = ndarrays_to_parameters([a.astype(np.float32) for a in parameters_to_ndarrays(params)])
        return params, metrics

    strategy.aggregate_fit = aggregate_fit


def _workflow(cfg: FederateConfig, total_weight: int):
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    if not cfg.secagg:
        return DefaultWorkflow()
    # Every site shares its mask keys with all others; any two shares rebuild a dropped
    # site's mask. max_weight bounds the reply weights (case counts, or 1 under DP) so the
    # weighted values stay inside the quantisation range.
    threshold = 0.5 if cfg.sites > 3 else 2
    return DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=threshold,
                                                           max_weight=float(max(1, total_weight))))


def start_run(cfg: FederateConfig) -> Path:
    """What every federated run does first: check the output folder (apart from the inputs,
    empty unless `overwrite`), set threads and seeds, quieten Flower; returns the output path."""
    from medfuse.record.store import check_output_apart

    out = Path(cfg.out)
    check_output_apart(out, [cfg.cohort, cfg.model])
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not cfg.overwrite)):
        raise InputError(out, "exists and is not an empty folder (pass --overwrite to replace the checkpoint)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    _quiet_flower()
    return out


def federate(cfg: FederateConfig, command: str | None = None, keep_uplink: bool = False,
             splits: CohortSplits | None = None) -> FederatedRun:
    """Run the federation `cfg` describes and write its checkpoint + report (see the module doc)."""
    from flwr.app import Context, RecordDict
    from flwr.server import ServerConfig
    from flwr.server.compat.legacy_context import LegacyContext

    out = start_run(cfg)
    started = time.perf_counter()
    splits = splits or load_splits(cfg)
    sites = splits.sites
    model = initial_model(cfg, sites)
    names = travelling_names(model, cfg.stage)
    splits.featurize(model)
    val = splits.val_data
    rounds: list[dict[str, Any]] = []
    latest: dict[str, Any] = {}

    def evaluate_global(server_round: int, arrays: list[np.ndarray], config) -> tuple[float, dict[str, Any]]:
        import copy

        from medfuse.train.encoders import calibrate

        set_arrays(model.fusion, names, arrays)
        latest["arrays"], latest["round"] = arrays, server_round
        with torch.no_grad():
            model.fusion.eval()
            batch = val.batch(range(len(val.items)))
            loss = float(model.fusion.loss(batch, model.fusion(batch)))
        scored = copy.deepcopy(model)  # calibration fits the head: keep the global model's untouched
        scored.card["findings_trained"] = False
        metrics = calibrate(scored, splits.val, val)["diagnosis"]
        row = {"round": server_round, "val_loss": round(loss, 5),
               **{f"val_{k}": metrics[k] for k in ("macro_f1", "micro_f1", "jaccard", "macro_auroc")}}
        rounds.append(row)
        if not cfg.quiet:
            print(f"round {server_round}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "round"), flush=True)
        return loss, {k: v for k, v in row.items() if k != "round" and v is not None}

    with tempfile.TemporaryDirectory(prefix="medfuse-federate-") as tmp:  # the sites' local training logs
        trainers = site_trainers(cfg, model, names, [(s.name, s.cases) for s in sites], Path(tmp), splits.site_data)
        unweighted = cfg.dp_clip > 0
        clients = [SiteClient(t, cfg.seed, i, unweighted) for i, t in enumerate(trainers)]
        apps = {FIRST_NODE_ID + i: site_client_app(c, clip=cfg.dp_clip > 0, secagg=cfg.secagg)
                for i, c in enumerate(clients)}
        grid = LocalGrid(apps, keep_uplink=keep_uplink)
        initial = trainers[0].get_arrays()
        strategy = _strategy(cfg, initial, evaluate_global)
        context = LegacyContext(Context(1, 0, {}, RecordDict(), {}), config=ServerConfig(num_rounds=cfg.rounds),
                                strategy=strategy)
        total_weight = len(sites) if unweighted else sum(t.n_cases for t in trainers)
        _workflow(cfg, total_weight)(grid, context)
    if latest.get("round") != cfg.rounds:
        raise RuntimeError(f"the federation stopped after round {latest.get('round')} of {cfg.rounds}")

    fed_s = time.perf_counter() - started
    train_loss = {r: m for r, m in context.history.metrics_distributed_fit.get("train_loss", [])}
    traffic = grid.bytes_per_round()
    for row in rounds:
        r = row["round"]
        if r in train_loss:
            row["train_loss"] = round(float(train_loss[r]), 5)
        if r > 0:
            row["bytes_down"], row["bytes_up"] = traffic.get(r, {}).get("down", 0), traffic.get(r, {}).get("up", 0)
            row["messages"] = traffic.get(r, {}).get("messages", 0)
            row["epsilon"] = _finite(site_level_epsilon(cfg.dp_noise, r, cfg.delta)) if cfg.dp_clip > 0 else None

    set_arrays(model.fusion, names, latest["arrays"])
    scores = evaluate_fusion(model, model.fusion, splits.val, splits.test, val=val, test=splits.test_data,
                             findings_trained=cfg.finding_weight > 0 and model.config.fusion != "early")
    params = dict(model.named_parameters())
    sent = sum(params[n].numel() for n in names)
    report = {
        "what": "medfuse federate: federated training across sites (Flower)",
        "strategy": cfg.strategy, "mu": cfg.mu if cfg.strategy == "fedprox" else None, "stage": cfg.stage,
        "rounds": cfg.rounds, "local_epochs": cfg.local_epochs,
        "secure_aggregation": "flower secagg+" if cfg.secagg else None,
        "privacy": _privacy(cfg),
        "sites": [s.summary() for s in sites],
        "coordinator": {"validation_cases": len(splits.val), "held_out_cases": len(splits.test)},
        "travelling": {"tensors": len(names), "parameters": sent, "payload_bytes": 4 * sent,
                       "not_sent_parameters": sum(p.numel() for p in model.parameters()) - sent,
                       "prefixes": sorted({".".join(n.split(".")[:2]) for n in names})},
        "rounds_detail": [r for r in rounds if r["round"] > 0],
        "initial": next((r for r in rounds if r["round"] == 0), None),
        "bytes_total": {"down": sum(t["down"] for t in traffic.values()), "up": sum(t["up"] for t in traffic.values())},
        "validation": scores["validation"], "held_out": scores["held_out"], "seconds": round(fed_s, 1),
        "command": command, "config": cfg.as_dict(),
    }
    model.card.update({
        "trained": True,
        "training_data": f"federated: {len(sites)} sites, {sum(len(s.cases) for s in sites)} training cases of cohort "
                         f"'{Path(cfg.cohort).resolve().name}' (patient-level split, seed {cfg.split_seed}); "
                         f"calibrated on its {len(splits.val)} validation cases",
        "stages": [*model.card.get("stages", []), {
            "stage": f"federated {cfg.stage}", "rounds": cfg.rounds, "strategy": cfg.strategy,
            "seconds": round(fed_s, 1), "command": command, "privacy": report["privacy"],
            "validation": {"diagnosis": scores["validation"]}}],
    })
    write_checkpoint_and_report(model, out, report, overwrite=cfg.overwrite)
    return FederatedRun(model=model, report=report, grid=grid, clients=clients, names=names)


def write_checkpoint_and_report(model, out: Path, report: dict[str, Any], overwrite: bool) -> None:
    """The checkpoint folder (atomic), then the report moved into it by an atomic rename."""
    staged = out.with_name(f".{out.name}.{REPORT_FILE}")
    staged.parent.mkdir(parents=True, exist_ok=True)
    staged.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=float) + "\n", encoding="utf-8")
    try:
        model.save(out, overwrite=overwrite)
        staged.replace(out / REPORT_FILE)
    finally:
        staged.unlink(missing_ok=True)


def _privacy(cfg: FederateConfig) -> dict[str, Any]:
    if cfg.dp_clip <= 0:
        return {"dp": False, "epsilon": None, "note": "no differential privacy (no clipping, no noise)"}
    eps = site_level_epsilon(cfg.dp_noise, cfg.rounds, cfg.delta)
    return {"dp": True, "mechanism": "central DP: client-side fixed clipping + Gaussian noise at the server (Flower)",
            "clip_norm": cfg.dp_clip, "noise_multiplier": cfg.dp_noise, "delta": cfg.delta, "epsilon": _finite(eps),
            "unit": "site-level (one hospital's whole contribution)",
            "accountant": "opacus RDPAccountant, sample rate 1",
            **({} if math.isfinite(eps) else
               {"note": "no noise: clipping alone gives no DP guarantee (epsilon infinite)"})}


def _finite(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


def _quiet_flower() -> None:
    """Flower logs every protocol step at INFO; keep its warnings and errors only (our own
    per-round line says what a user needs)."""
    from flwr.common.logger import FLOWER_LOGGER

    FLOWER_LOGGER.setLevel(logging.WARNING)
