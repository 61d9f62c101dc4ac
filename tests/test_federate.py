"""`medfuse federate` (issue 13): sites with their own modalities and label shift, Flower
FedAvg / FedProx with only the trainable weights on the wire, central DP with its epsilon,
SecAgg+ masking, and the CLI's checkpoint + report. Runs in-process (no Ray, no sockets)
on a tiny synthetic cohort and a tiny model, 1-2 rounds each.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from flwr.common import serde
from test_model_diagnose import TINY

from medfuse.cli import main
from medfuse.federate import FederateConfig, federate
from medfuse.federate.config import default_site_modalities
from medfuse.federate.local import SiteTrainer, get_arrays, travelling_names
from medfuse.federate.partition import partition_sites
from medfuse.federate.privacy import site_level_epsilon
from medfuse.model import MedFuse
from medfuse.model.config import ModelConfig
from medfuse.record.case import Diagnosis, Labels, PatientCase

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cohort(small_synth_cohort):
    return small_synth_cohort


def _cfg(cohort, out, **kw) -> FederateConfig:
    return FederateConfig.from_dict({"cohort": str(cohort), "out": str(out), "model_config": TINY, "rounds": 1,
                                     "batch_size": 8, "quiet": True, **kw})


def _wire_arrays(message) -> list[np.ndarray]:
    """The float arrays a decoded Flower reply carries (its ArrayRecords)."""
    return [a.numpy() for record in message.content.array_records.values() for a in record.values()]


@pytest.fixture(scope="module")
def fedavg_run(cohort, tmp_path_factory):
    return federate(_cfg(cohort, tmp_path_factory.mktemp("avg") / "ckpt", rounds=2), keep_uplink=True)


# ---------------------------------------------------------------------- sites


def _labelled(i: int, diseases: list[str], patient: str | None = None) -> PatientCase:
    return PatientCase(case_id=f"c{i}", patient_id=patient,
                       labels=Labels(diagnoses=[Diagnosis(name=d) for d in diseases]))


def test_sites_split_by_patient_reproducibly_with_label_shift():
    rng = np.random.default_rng(0)
    names = ["atrial fibrillation", "pneumonia", "sepsis", "diabetes mellitus", "heart failure"]
    cases = [_labelled(i, list(rng.choice(names, size=int(rng.integers(0, 3)), replace=False)), f"p{i // 2}")
             for i in range(600)]  # two encounters per patient
    plan = default_site_modalities(3)
    sites = partition_sites(cases, plan, seed=3, alpha=0.1)
    again = partition_sites(list(reversed(cases)), plan, seed=3, alpha=0.1)
    assert [sorted(c.case_id for c in s.cases) for s in sites] == [sorted(c.case_id for c in s.cases) for s in again]
    where = {c.group_id: s.name for s in sites for c in s.cases}
    assert all(where[c.group_id] == s.name for s in sites for c in s.cases), "a patient is split across sites"
    assert sum(len(s.cases) for s in sites) == len(cases)

    def spread(parts) -> float:
        """Largest difference between two sites in the share of cases with a disease."""
        shares = [Counter(d for c in s.cases for d in c.labels.disease_names()) for s in parts]
        return max(abs(a[d] / max(1, len(sa.cases)) - b[d] / max(1, len(sb.cases)))
                   for d in names for a, sa in zip(shares, parts, strict=True)
                   for b, sb in zip(shares, parts, strict=True))

    even = partition_sites(cases, plan, seed=3, alpha=1000.0)
    assert spread(sites) > 0.25 > spread(even), "a small Dirichlet alpha must shift the sites' disease mix"


def test_sites_keep_only_their_modalities(cohort):
    from medfuse.train.common import split_cases

    cases = split_cases(cohort, "train")
    plan = [("ecg", "labs", "vitals", "notes", "genomics"), ("cxr", "labs", "vitals", "notes"), ("labs", "notes")]
    sites = partition_sites(cases, plan, seed=0)
    for site, allowed in zip(sites, plan, strict=True):
        seen = {m for c in site.cases for m in c.modalities()}
        assert seen <= set(allowed), f"{site.name} holds {seen - set(allowed)}"
        assert seen, "a site keeps the modalities it has"
        if "cxr" not in allowed:
            assert all(not c.labels.findings for c in site.cases), "boxes go with the radiograph"
    assert {m for s in sites for c in s.cases for m in c.modalities()} >= {"cxr", "ecg", "labs", "notes"}


# ---------------------------------------------------------------------- what travels


def test_only_the_trainable_weights_travel_and_bytes_are_counted(fedavg_run):
    model = MedFuse.build(ModelConfig.from_dict({"seed": 0, **TINY}), tiny_llm=True)
    expected = travelling_names(model, "encoders")
    # Exactly the parameters `MedFuse.trainable_parts("encoders")` trains: the fusion model, never the LLM.
    trained = {id(p) for part in model.trainable_parts("encoders") for p in part.parameters()}
    assert set(expected) == {n for n, p in model.named_parameters() if id(p) in trained}
    assert not any(n.startswith("lm.") for n in expected)
    shapes = [tuple(dict(model.named_parameters())[n].shape) for n in expected]
    replies = [m for m in fedavg_run.grid.uplink if m.content.array_records]
    assert len(replies) == 2 * 3, "one weight reply per site per round"
    for reply in replies:
        assert [a.shape for a in _wire_arrays(reply)] == shapes
    report = fedavg_run.report
    payload = 4 * sum(int(np.prod(s)) for s in shapes)
    assert report["travelling"]["parameters"] * 4 == payload
    assert report["travelling"]["not_sent_parameters"] == sum(p.numel() for p in model.lm.parameters())
    for row in report["rounds_detail"]:
        # Three sites, the float32 weights each way, plus framing (a .npy header per tensor).
        assert 3 * payload <= row["bytes_down"] < 3 * payload * 1.1
        assert 3 * payload <= row["bytes_up"] < 3 * payload * 1.1


def test_fedavg_averages_each_tensor_over_the_sites_that_trained_it(fedavg_run):
    clients, names = fedavg_run.clients, fedavg_run.names
    final = get_arrays(fedavg_run.model.fusion, names)
    for t, name in enumerate(names):
        weights = np.array([c.trainer.n_cases * c.trained[-1][t] for c in clients], dtype=float)
        if weights.sum() == 0:  # nobody trained it: every site sent the global value back
            weights = np.array([c.trainer.n_cases for c in clients], dtype=float)
        expected = np.average(np.stack([c.sent[-1][t] for c in clients]), axis=0, weights=weights)
        np.testing.assert_allclose(final[t], expected, rtol=1e-5, atol=1e-6, err_msg=name)
    # The sites without radiographs (site1: no CXR, site3: notes + labs) never train the image encoder.
    cxr = [t for t, n in enumerate(names) if n.startswith("fusion.encoders.cxr.")]
    assert cxr and all(not clients[k].trained[-1][t] for k in (0, 2) for t in cxr)
    assert all(clients[1].trained[-1][t] for t in cxr)
    rounds = fedavg_run.report["rounds_detail"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(np.isfinite(r["train_loss"]) and r["val_macro_f1"] is not None for r in rounds)


def test_fusion_stage_keeps_the_encoders_at_home(cohort, tmp_path):
    start = tmp_path / "pretrained"
    model = MedFuse.build(ModelConfig.from_dict(TINY), tiny_llm=True)
    model.save(start)
    run = federate(_cfg(cohort, tmp_path / "ckpt", stage="fusion", model=str(start)), keep_uplink=True)
    assert run.names and not any(n.startswith(("fusion.encoders.", "lm.")) for n in run.names)
    assert {len(_wire_arrays(m)) for m in run.grid.uplink if m.content.array_records} == {len(run.names)}
    before = dict(MedFuse.load(start).fusion.encoders.named_parameters())
    after = dict(MedFuse.load(tmp_path / "ckpt").fusion.encoders.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before), "frozen encoders changed"
    assert run.report["travelling"]["parameters"] < sum(p.numel() for p in model.fusion.parameters())


def test_fedprox_proximal_term_keeps_the_local_model_near_the_global_one(cohort, tmp_path):
    from medfuse.train.common import split_cases

    model = MedFuse.build(ModelConfig.from_dict(TINY), tiny_llm=True)
    names = travelling_names(model, "encoders")
    cases = split_cases(cohort, "train")[:16]
    moved = {}
    for mu in (0.0, 50.0):
        trainer = SiteTrainer("s", cases, model, names, "encoders", batch_size=8, lr=0.02, warmup_steps=0,
                              finding_weight=1.0, workdir=tmp_path, cohort=str(cohort))
        start = trainer.get_arrays()
        trainer.train(2, seed=0, mu=mu)
        moved[mu] = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(trainer.get_arrays(), start, strict=True)))
    assert moved[50.0] < 0.8 * moved[0.0]


def test_site_schedule_continues_across_rounds_and_keeps_its_adam_state(cohort, tmp_path):
    from medfuse.train.common import split_cases
    from medfuse.train.loop import lr_factor

    model = MedFuse.build(ModelConfig.from_dict(TINY), tiny_llm=True)
    names = travelling_names(model, "encoders")
    cases = split_cases(cohort, "train")[:16]  # 2 steps of 8 per round
    lr, rounds = 0.01, 3

    def site(**kw) -> SiteTrainer:
        return SiteTrainer("s", cases, model, names, "encoders", batch_size=8, lr=lr, warmup_steps=0,
                           finding_weight=1.0, workdir=tmp_path, cohort=str(cohort), **kw)

    trainer = site(keep_optimizer=True)
    schedule = [f for r in range(1, rounds + 1) for f in trainer.lr_factors(1, r, rounds)]
    assert schedule == [lr_factor(s, 0, 2 * rounds) for s in range(2 * rounds)]  # one schedule, not one per round
    for r in range(1, rounds + 1):
        trainer.train(1, seed=r, server_round=r, rounds=rounds)
        # the loop ran the round's slice of the federation-wide schedule
        assert trainer._optimizer.param_groups[0]["lr"] == pytest.approx(lr * trainer.lr_factors(1, r, rounds)[-1])
    steps = {int(state["step"]) for state in trainer._optimizer.state.values()}
    assert steps == {2 * rounds}, "AdamW state restarted between rounds"
    # A fraction of an epoch per round: that share of the epoch's steps, on the same schedule.
    quarter = site()
    assert quarter.local_steps(0.5) == 1 and quarter.local_steps(0.25) == 1 and quarter.local_steps(1.5) == 3
    assert quarter.train(0.5, seed=0, server_round=2, rounds=4)["steps"] == 1
    assert quarter.lr_factors(0.5, 2, 4) == [lr_factor(1, 0, 4)]
    per_round = site(lr_schedule="local", keep_optimizer=False)
    assert per_round.lr_factors(1, 1, rounds) == per_round.lr_factors(1, rounds, rounds)
    per_round.train(1, seed=0, server_round=2, rounds=rounds)
    assert per_round._optimizer is None


def test_normalised_averaging_takes_the_pooled_direction_for_the_rounds_total_steps():
    from flwr.common import (
        Code,
        FitRes,
        Status,
        ndarrays_to_parameters,
        parameters_to_ndarrays,
    )

    from medfuse.federate.run import _normalised_average

    class Average:  # stands in for FedAvg: its weights are replaced, its metrics kept
        def aggregate_fit(self, server_round, results, failures):
            return ndarrays_to_parameters([np.zeros(2), np.zeros(1)]), {"train_loss": 0.5}

    def reply(cases: int, steps: int, sent: list[list[float]], trained: str) -> tuple[None, FitRes]:
        return None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.array(a) for a in sent]), cases,
                            {"trained": trained, "steps": steps, "loss": 0.5})

    def aggregate(results) -> list[np.ndarray]:
        strategy = Average()
        _normalised_average(strategy, {"global": [np.zeros(2), np.zeros(1)]})
        params, metrics = strategy.aggregate_fit(1, results, [])
        assert metrics == {"train_loss": 0.5}
        return parameters_to_ndarrays(params)

    # Site A: 100 cases, 10 local steps of +1; site B: 300 cases, 30 steps of -0.5, and the only
    # site to train tensor 1 (a modality A lacks: A sends it back unchanged).
    weights = aggregate([reply(100, 10, [[10.0, 0.0], [0.0]], "10"), reply(300, 30, [[-15.0, 3.0], [6.0]], "11")])
    # 40 steps along 0.25 * (+1) + 0.75 * (-0.5) per step = the sum of the updates, where one
    # centralised epoch over the 400 cases goes (FedAvg's case-weighted mean: [-8.75, 2.25]).
    np.testing.assert_allclose(weights[0], [-5.0, 3.0])
    np.testing.assert_allclose(weights[1], [6.0])  # B's own update; A's untouched copy does not pull it back
    # Equal sites, unequal local steps: each site's per-step direction counts by its cases,
    # not by cases x steps (FedAvg's mean of the updates would give (40 - 10) / 2 = +15).
    weights = aggregate([reply(100, 40, [[40.0, 0.0], [0.0]], "10"), reply(100, 10, [[-10.0, 0.0], [0.0]], "10")])
    np.testing.assert_allclose(weights[0], [50 * (0.5 * 1 + 0.5 * -1), 0.0])
    np.testing.assert_allclose(weights[1], [0.0])  # trained by nobody: stays at the global value


def test_normalised_aggregation_runs_end_to_end_from_the_sites_step_counts(cohort, tmp_path):
    run = federate(_cfg(cohort, tmp_path / "nova", rounds=2, aggregation="normalised"))
    clients, names = run.clients, run.names
    model = MedFuse.build(ModelConfig.from_dict({"seed": 0, **TINY}), tiny_llm=True)
    current = get_arrays(model.fusion, names)
    steps = np.array([c.trainer.local_steps(1.0) for c in clients], dtype=float)
    cases = np.array([c.trainer.n_cases for c in clients], dtype=float)
    for r in range(2):  # each round starts from the global model the previous one handed out
        expected = []
        for t, g in enumerate(current):
            trained = np.array([c.trained[r][t] for c in clients])
            if not trained.any():
                expected.append(g)
                continue
            share = np.where(trained, cases, 0) / cases[trained].sum()
            direction = sum(share[k] / steps[k] * (clients[k].sent[r][t] - g) for k in np.flatnonzero(trained))
            expected.append(g + steps[trained].sum() * direction)
        current = expected
    final = get_arrays(run.model.fusion, names)
    for name, got, want in zip(names, final, current, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)
    assert run.report["config"]["aggregation"] == "normalised"


def test_server_momentum_steps_along_the_averaged_update():
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

    from medfuse.federate.run import _server_momentum

    class SameAverage:  # stands in for FedAvg: every round's average is 1
        def aggregate_fit(self, server_round, results, failures):
            return ndarrays_to_parameters([np.ones(3, dtype=np.float32)]), {}

    strategy = SameAverage()
    _server_momentum(strategy, [np.zeros(3, dtype=np.float32)], lr=2.0, momentum=0.5)
    # round 1: g = 0 - 1, v = g, w = 0 - 2 v = 2; round 2: g = 2 - 1, v = 0.5 * -1 + 1, w = 2 - 2 * 0.5 = 1
    for expected in (2.0, 1.0):
        (weights,) = parameters_to_ndarrays(strategy.aggregate_fit(1, [], [])[0])
        np.testing.assert_allclose(weights, expected)
        assert weights.dtype == np.float32


def test_gap_ci_is_paired_and_brackets_the_gap():
    from medfuse.federate.compare import gap_ci

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=(200, 4))
    noisy = np.where(rng.random(labels.shape) < 0.3, 1 - labels, labels)
    same = gap_ci(labels, noisy, noisy.copy(), n_resamples=200)
    assert same["macro_f1"] == 0 and same["ci95"] == [0, 0]
    better = gap_ci(labels, noisy, labels, n_resamples=200)  # the arm is right on every case: clearly above "central"
    assert 0 < better["ci95"][0] <= better["macro_f1"] <= better["ci95"][1]
    worse = gap_ci(labels, labels, noisy, n_resamples=200)
    assert worse["ci95"][1] < 0


# ---------------------------------------------------------------------- privacy


def test_secagg_server_sees_only_masked_updates_and_their_sum(cohort, tmp_path, fedavg_run):
    run = federate(_cfg(cohort, tmp_path / "ckpt", secagg=True), keep_uplink=True)
    wire = [serde.message_to_proto(m).SerializeToString() for m in run.grid.uplink]
    largest = max(range(len(run.names)), key=lambda i: run.clients[0].sent[0][i].size)
    for client in run.clients:
        assert not any(client.sent[0][largest].tobytes() in blob for blob in wire), "a plain update reached the server"
    # The same probe finds the plain weights when SecAgg+ is off (so the check above can fail).
    plain = [serde.message_to_proto(m).SerializeToString() for m in fedavg_run.grid.uplink]
    assert any(fedavg_run.clients[0].sent[0][largest].tobytes() in blob for blob in plain)
    weights = np.array([c.trainer.n_cases for c in run.clients], dtype=float)
    final = get_arrays(run.model.fusion, run.names)
    for i, f in enumerate(final):
        expected = np.average(np.stack([c.sent[0][i] for c in run.clients]), axis=0, weights=weights)
        np.testing.assert_allclose(f, expected, atol=2e-4)  # SecAgg+ quantises to 2^22 levels
    assert run.report["secure_aggregation"] == "flower secagg+"


def test_dp_clips_each_site_update_and_reports_epsilon(cohort, tmp_path):
    clip = 0.05
    run = federate(_cfg(cohort, tmp_path / "dp", dp_clip=clip, dp_noise=1.0, rounds=2, delta=1e-5), keep_uplink=True)
    model = MedFuse.build(ModelConfig.from_dict({"seed": 0, **TINY}), tiny_llm=True)
    start = get_arrays(model.fusion, run.names)
    first_round = [m for m in run.grid.uplink if m.content.array_records][:3]
    for reply in first_round:  # updates relative to the initial global model
        update = np.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(_wire_arrays(reply), start, strict=True)))
        assert 0 < update <= clip * 1.001
    privacy = run.report["privacy"]
    assert privacy["epsilon"] == pytest.approx(site_level_epsilon(1.0, 2, 1e-5), abs=1e-3)
    per_round = [r["epsilon"] for r in run.report["rounds_detail"]]
    assert per_round[0] < per_round[1] == privacy["epsilon"]
    assert site_level_epsilon(2.0, 2, 1e-5) < privacy["epsilon"] < site_level_epsilon(0.5, 2, 1e-5)
    assert site_level_epsilon(0.0, 2, 1e-5) == float("inf"), "clipping without noise is no DP guarantee"


# ---------------------------------------------------------------------- CLI


def test_cli_writes_the_checkpoint_and_report(cohort, tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(json.dumps({"model_config": TINY, "batch_size": 8}), encoding="utf-8")
    out = tmp_path / "ckpt"
    rc = main(["federate", "--cohort", str(cohort), "--config", str(cfg), "--sites", "3", "--rounds", "1",
               "--strategy", "fedprox", "--mu", "0.1", "--dp-clip", "5", "--dp-noise", "0.5", "--out", str(out)])
    assert rc in (0, None)
    printed = capsys.readouterr().out
    assert "held out" in printed and "epsilon" in printed
    report = json.loads((out / "federate.json").read_text())
    assert report["strategy"] == "fedprox" and report["mu"] == 0.1
    assert report["rounds_detail"][0]["bytes_up"] > 0 and report["privacy"]["epsilon"] > 0
    assert [s["modalities"] for s in report["sites"]] == [list(m) for m in default_site_modalities(3)]
    loaded = MedFuse.load(out)
    assert loaded.card["trained"] and loaded.card["stages"][-1]["stage"] == "federated encoders"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "tiny.yaml"], "temporary files left behind"


def test_cli_bad_input_is_one_line_and_writes_nothing(cohort, tmp_path, capsys):
    out = tmp_path / "ckpt"
    rc = main(["federate", "--cohort", str(cohort), "--sites", "40", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"medfuse: error: {cohort}") and "40 sites" in err
    assert not out.exists() and not list(tmp_path.iterdir())
    rc = main(["federate", "--cohort", str(cohort), "--out", str(cohort / "inside")])
    assert rc == 2 and "lies inside" in capsys.readouterr().err
    rc = main(["federate", "--cohort", str(cohort), "--site-modalities", "labs,xray", "--sites", "2",
               "--site-modalities", "ecg", "--out", str(out)])
    assert rc == 2 and "site_modalities" in capsys.readouterr().err
