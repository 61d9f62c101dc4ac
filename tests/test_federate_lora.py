"""`medfuse federate --stage sft` (issue 13): the language model's LoRA adapter, projector and
fusion layers trained across sites on the SFT objective, each site on instruction samples
built from its own cases only; only those tensors travel, the frozen LLM base never does.
Runs in-process on the small synthetic cohort and a tiny model (2 sites x 2 rounds x 4 steps).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_model_diagnose import TINY

from medfuse.cli import main
from medfuse.errors import ConfigError
from medfuse.federate.lora import (
    FederatedSFTConfig,
    federate_lm,
    lora_travelling_names,
    prepare_lm_model,
)
from medfuse.model import MedFuse
from medfuse.model.config import ModelConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Site 1 has no radiographs, site 2 no ECGs.
SITES = ["ecg,labs,vitals,notes", "cxr,labs,vitals,notes"]
IMAGE_TASKS = {"cxr_qa", "region_to_text", "text_to_region", "grounded_report"}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """An untrained tiny model without a LoRA adapter (the run adds one)."""
    out = tmp_path_factory.mktemp("tiny") / "ckpt"
    MedFuse.build(ModelConfig.from_dict({"seed": 0, **TINY}), tiny_llm=True).save(out)
    return out


def _cfg(cohort, model, out, **kw) -> FederatedSFTConfig:
    return FederatedSFTConfig.from_dict({
        "cohort": str(cohort), "out": str(out), "model": str(model), "sites": 2, "site_modalities": SITES,
        "rounds": 2, "local_steps": 4, "batch_size": 4, "lr": 5e-3, "langs": ["en"], "samples_per_site": 16,
        "eval_samples": 8, "max_target_tokens": 48, "lora_r": 4, "lora_alpha": 8, "quiet": True, **kw})


@pytest.fixture(scope="module")
def sft_run(small_synth_cohort, tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("fed-sft") / "ckpt"
    return federate_lm(_cfg(small_synth_cohort, tiny_ckpt, out), keep_uplink=True), out


def _wire_arrays(message) -> list[np.ndarray]:
    return [a.numpy() for record in message.content.array_records.values() for a in record.values()]


def test_only_lora_projector_and_fusion_layers_travel(sft_run, tiny_ckpt):
    run, out = sft_run
    model = prepare_lm_model(_cfg("c", tiny_ckpt, "o"))
    names = lora_travelling_names(model)
    # Exactly what `medfuse train sft` trains; of the LLM only its LoRA layers and the projector.
    trained = {id(p) for part in model.trainable_parts("sft", train_fusion=True)
               for p in (part.parameters() if isinstance(part, torch.nn.Module) else [part])}
    assert set(names) == {n for n, p in model.named_parameters() if id(p) in trained} == set(run.names)
    assert {"lora", "projector", "fusion"} == {k for k, v in run.report["travelling"]["groups"].items()
                                               if v["tensors"]}
    assert all("lora_" in n or n.startswith(("lm.projector.", "fusion.")) for n in names)
    assert not any(n.startswith("fusion.encoders.") for n in names), "the encoders stay frozen"
    params = dict(model.named_parameters())
    shapes = [tuple(params[n].shape) for n in names]
    replies = [m for m in run.grid.uplink if m.content.array_records]
    assert len(replies) == 2 * 2, "one weight reply per site per round"
    for reply in replies:
        arrays = _wire_arrays(reply)
        assert [a.shape for a in arrays] == shapes and all(a.dtype == np.float32 for a in arrays)
    payload = 4 * sum(int(np.prod(s)) for s in shapes)
    travelling = run.report["travelling"]
    assert travelling["payload_bytes"] == payload and travelling["names"] == names
    assert travelling["not_sent_parameters"] == sum(p.numel() for p in model.parameters()) - payload // 4
    for row in run.report["rounds_detail"]:
        # Two sites, the float32 tensors each way, plus a few hundred bytes of framing per tensor.
        for direction in ("bytes_down", "bytes_up"):
            assert 2 * payload < row[direction] < 2 * (payload + 256 * len(names))
    # The sites' copies share the frozen tensors with the coordinator's model (memory); the travelling ones are their own.
    mine, site = dict(run.model.named_parameters()), dict(run.clients[0].trainer.model.named_parameters())
    assert all((mine[n].data_ptr() == site[n].data_ptr()) == (n not in set(names)) for n in mine)
    # The frozen LLM base and the encoders are what the starting checkpoint holds.
    before, after = MedFuse.load(tiny_ckpt), MedFuse.load(out)
    base_before = dict(before.lm.lm.named_parameters())
    base_after = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
                  for n, p in after.lm.lm.named_parameters() if "lora_" not in n}
    assert base_after.keys() == base_before.keys()
    assert all(torch.equal(base_after[n], base_before[n]) for n in base_before)
    assert all(torch.equal(p, q) for p, q in zip(before.fusion.encoders.parameters(),
                                                 after.fusion.encoders.parameters(), strict=True))


def test_the_server_averages_what_the_sites_sent(sft_run):
    run, out = sft_run
    weights = np.array([c.trainer.n_cases for c in run.clients], dtype=np.float64)
    sent = [c.sent[-1] for c in run.clients]  # each site's reply of the last round
    trained = [c.trained[-1] for c in run.clients]
    final = dict(MedFuse.load(out).named_parameters())
    lora_checked = 0
    for t, name in enumerate(run.names):
        w = weights * np.array([trained[k][t] for k in range(len(sent))])
        if w.sum() == 0:
            continue
        expected = np.tensordot(w / w.sum(), np.stack([s[t] for s in sent]), axes=1)
        np.testing.assert_allclose(final[name].detach().numpy(), expected, rtol=1e-5, atol=1e-6, err_msg=name)
        lora_checked += "lora_" in name and all(trained[k][t] for k in range(len(sent)))
    assert lora_checked == sum("lora_" in n for n in run.names), "every site trains every LoRA tensor"
    # The sites really differed (different data), so the mean is not one site's copy.
    assert not np.allclose(sent[0][0], sent[1][0])


def test_each_site_trains_only_on_its_own_cases(sft_run):
    run, _ = sft_run
    for client, modalities in zip(run.clients, SITES, strict=True):
        trainer = client.trainer
        own = {c.case_id for c in trainer.data._cases.values()}
        assert {s.case_id for s in trainer.data.samples} <= own
        site = next(s for s in run.report["sites"] if s["name"] == trainer.name)
        assert site["instruction_samples"] == len(trainer.data) > 0
        if "cxr" not in modalities:
            assert not {s.task for s in trainer.data.samples} & IMAGE_TASKS, "image tasks at a site without images"
    ids = [{s.case_id for s in c.trainer.data.samples} for c in run.clients]
    assert not ids[0] & ids[1], "a case is at one site only"


def test_held_out_lm_loss_falls_round_after_round(sft_run):
    run, _ = sft_run
    report = run.report
    losses = [report["initial"]["val_lm_loss"]] + [r["val_lm_loss"] for r in report["rounds_detail"]]
    assert losses[0] > losses[1] > losses[2], losses
    assert report["held_out"]["lm_loss"] < report["initial"]["val_lm_loss"]
    assert all(r["train_lm_loss"] > 0 and r["train_loss"] >= r["train_lm_loss"] for r in report["rounds_detail"])


def test_the_checkpoint_loads_with_its_adapter_and_diagnoses(sft_run, small_synth_cohort):
    from medfuse.model import diagnose
    from medfuse.train.common import split_cases

    _, out = sft_run
    assert (out / "adapter" / "adapter_config.json").is_file() and (out / "federate.json").is_file()
    report = json.loads((out / "federate.json").read_text())
    assert report["stage"] == "sft" and len(report["rounds_detail"]) == 2 and report["bytes_total"]["up"] > 0
    model = MedFuse.load(out)
    assert model.lm.has_lora and model.card["stages"][-1]["stage"] == "federated sft"
    assert "macro_f1" in report["held_out"]["diagnosis"], "the disease head is re-calibrated and scored"
    case = split_cases(small_synth_cohort, "test")[0]
    result = diagnose(model, case, max_new_tokens=8)
    assert len(result.diagnoses) == len(model.panel.keys)


def test_fedprox_keeps_a_site_near_the_global_weights(sft_run):
    run, _ = sft_run
    trainer = run.clients[0].trainer
    start = trainer.get_arrays()
    drift = {}
    for mu in (0.0, 1000.0):
        trainer.set_arrays(start)
        trainer.train(1, seed=3, mu=mu)
        drift[mu] = sum(float(((a - b) ** 2).sum()) for a, b in zip(trainer.get_arrays(), start, strict=True))
    trainer.set_arrays(start)
    assert 0 < drift[1000.0] < 0.5 * drift[0.0], drift


def test_config_errors_name_the_key(small_synth_cohort, tmp_path):
    with pytest.raises(ConfigError, match="model: required"):
        FederatedSFTConfig.from_dict({"cohort": str(small_synth_cohort), "out": str(tmp_path / "o")})
    with pytest.raises(ConfigError, match="task_types"):
        _cfg(small_synth_cohort, "m", tmp_path / "o", task_types=["poetry"])
    with pytest.raises(ConfigError, match="rounds"):
        _cfg(small_synth_cohort, "m", tmp_path / "o", rounds=0)


def test_cli_runs_stage_sft_and_bad_input_is_one_line(small_synth_cohort, tiny_ckpt, tmp_path, capsys):
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(json.dumps({"langs": ["en"], "samples_per_site": 8, "eval_samples": 4, "local_steps": 2,
                               "max_target_tokens": 32, "lora_r": 2, "lora_alpha": 4, "train_fusion": False}))
    out = tmp_path / "ckpt"
    rc = main(["federate", "--stage", "sft", "--model", str(tiny_ckpt), "--cohort", str(small_synth_cohort),
               "--config", str(cfg), "--sites", "2", "--rounds", "1", "--batch-size", "4", "--out", str(out)])
    assert rc in (0, None)
    printed = capsys.readouterr().out
    assert "val LM loss" in printed and "never sent" in printed
    report = json.loads((out / "federate.json").read_text())
    assert report["travelling"]["groups"]["fusion"]["tensors"] == 0, "train_fusion false: LoRA + projector only"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "sft.yaml"], "temporary files left behind"
    rc = main(["federate", "--stage", "sft", "--cohort", str(small_synth_cohort), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err and "model: required" in err
    assert not (tmp_path / "x").exists()
