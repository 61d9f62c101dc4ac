"""Training stages end to end on a tiny synthetic cohort with tiny models (issue 5).

Each stage runs a few steps through the same code path `medfuse train STAGE` uses; the
tests check that the loss falls, the checkpoint loads, what the model card records, and
that an interrupted run resumes from its saved state.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from medfuse.cli import main
from medfuse.errors import ConfigError, InputError
from medfuse.model import MedFuse
from medfuse.record.case import MODALITIES
from medfuse.train.config import EncodersConfig, GRPOConfig, SFTConfig

from test_model_diagnose import TINY


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cohort(small_synth_cohort):
    return small_synth_cohort


def _metrics(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def encoders_ckpt(cohort, tmp_path_factory):
    from medfuse.train.encoders import train_encoders

    out = tmp_path_factory.mktemp("enc") / "ckpt"
    cfg = EncodersConfig.from_dict({"cohort": str(cohort), "out": str(out), "model": TINY, "tiny_llm": True,
                                    "epochs": 8, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "log_every": 1,
                                    "quiet": True})
    summary = train_encoders(cfg, command="medfuse train encoders --config tiny.yaml")
    return out, summary


def test_encoders_stage_trains_calibrates_and_writes_a_checkpoint(encoders_ckpt):
    out, summary = encoders_ckpt
    rows = [r for r in _metrics(out) if "loss" in r]
    first, last = sum(r["loss"] for r in rows[:4]) / 4, sum(r["loss"] for r in rows[-4:]) / 4
    assert last < first, f"loss did not fall ({first:.3f} -> {last:.3f})"
    assert {"fusion", "image_text", "ecg_text", "findings", "cases_per_s"} <= set(rows[0])
    model = MedFuse.load(out)
    card = model.card
    assert card["trained"] and card["findings_trained"]
    stage = card["stages"][-1]
    assert stage["stage"] == "encoders" and stage["command"].startswith("medfuse train encoders")
    assert set(stage["validation"]["diagnosis"]) >= {"jaccard", "macro_f1", "macro_auroc"}
    # Thresholds were fitted on validation data (not the 0.5 defaults for every disease).
    assert summary["validation"]["diagnosis"]["n_samples"] == summary["val_cases"]
    assert not (out.parent / f".{out.name}.train_state").exists(), "the resumable state is removed at the end"


def test_encoders_stage_resumes_after_an_interruption(cohort, tmp_path, monkeypatch):
    from medfuse.train import encoders as enc

    out = tmp_path / "ckpt"
    base = {"cohort": str(cohort), "out": str(out), "model": TINY, "tiny_llm": True, "epochs": 2, "batch_size": 8,
            "save_every": 3, "log_every": 1, "quiet": True}
    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def crash_after_four(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", crash_after_four)
    with pytest.raises(KeyboardInterrupt):
        enc.train_encoders(EncodersConfig.from_dict(base))
    state = out.parent / f".{out.name}.train_state"
    assert (state / "state.pt").is_file() and not out.exists()
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    summary = enc.train_encoders(EncodersConfig.from_dict(base))
    steps = [r["step"] for r in _metrics(out) if "loss" in r]
    # Steps 1-4 ran before the crash (state saved at 3); the rerun continues at 4, not at 1.
    assert steps[:4] == [1, 2, 3, 4] and steps[4] == 4 and steps[-1] == summary["steps"]
    assert not state.exists()
    # A changed config does not silently resume someone else's state.
    with pytest.raises(InputError, match="different config"):
        monkeypatch.setattr(torch.optim.AdamW, "step", crash_after_four)
        calls["n"] = 0
        other = tmp_path / "other"
        try:
            enc.train_encoders(EncodersConfig.from_dict({**base, "out": str(other)}))
        except KeyboardInterrupt:
            pass
        monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
        enc.train_encoders(EncodersConfig.from_dict({**base, "out": str(other), "lr": 0.5}))


# The fusion model's parts above the encoders that sft trains, besides the auxiliary heads,
# the modality type embedding and the clue tokens every strategy has.
SFT_FUSION_LAYERS = {"early": ("joint", "head"), "feature": ("joint", "head"), "late": (), "hybrid": ("perception", "head")}


@pytest.mark.parametrize("fusion", ["early", "feature", "late", "hybrid"])
def test_each_stage_trains_exactly_its_parts(fusion):
    from medfuse.model.config import ModelConfig
    from medfuse.train.loop import train_only

    model = MedFuse.build(ModelConfig.from_dict({**TINY, "fusion": fusion}), tiny_llm=True)
    model.lm.add_lora(r=4, alpha=8)
    names = [n for n, _ in model.named_parameters()]
    upper = ("aux_heads", "type_embed", "clues", *SFT_FUSION_LAYERS[fusion])
    lora = {n for n in names if "lora_" in n}
    projector = {n for n in names if n.startswith("lm.projector.")}
    fusion_upper = {n for n in names if n.startswith("fusion.") and n.split(".")[1] in upper}
    expected = {
        ("encoders", False): {n for n in names if n.startswith("fusion.")},
        ("align", False): projector,
        ("sft", True): lora | projector | fusion_upper,
        ("sft", False): lora | projector,
        ("grpo", False): lora,
    }
    assert lora and projector and fusion_upper
    for (stage, train_fusion), want in expected.items():
        trainable = train_only(model, model.trainable_parts(stage, train_fusion=train_fusion))
        got = {n for n, p in model.named_parameters() if p.requires_grad}
        assert got == want, (stage, train_fusion, sorted(got ^ want)[:5])
        assert len(trainable) == len(want)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'batchsize'"):
        EncodersConfig.from_dict({"cohort": "c", "out": "o", "batchsize": 3})
    with pytest.raises(ConfigError, match="batch_size: expected int"):
        EncodersConfig.from_dict({"cohort": "c", "out": "o", "batch_size": "many"})
    with pytest.raises(ConfigError, match="init: required"):
        SFTConfig.from_dict({"cohort": "c", "out": "o"})
    with pytest.raises(ConfigError, match="group_size"):
        GRPOConfig.from_dict({"cohort": "c", "out": "o", "init": "x", "group_size": 1})


def test_cli_flags_override_the_yaml_and_bad_input_is_one_line(cohort, tmp_path, capsys):
    cfg = tmp_path / "enc.yaml"
    cfg.write_text(yaml.safe_dump({"cohort": str(cohort), "out": str(tmp_path / "ckpt"), "model": TINY,
                                   "tiny_llm": True, "epochs": 50, "batch_size": 8}))
    assert main(["train", "encoders", "--config", str(cfg), "--max-steps", "2", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2
    assert main(["train", "encoders", "--config", str(cfg), "--max-steps", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0] and "Traceback" not in err[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text("cohort: [unclosed")
    assert main(["train", "sft", "--config", str(bad)]) == 2
    assert "invalid YAML" in capsys.readouterr().err


# ------------------------------------------------------------------ language-model stages

@pytest.fixture(scope="module")
def tasks_dir(cohort, tmp_path_factory):
    from medfuse.tasks import build_tasks, save_tasks

    out = tmp_path_factory.mktemp("tasks") / "ds"
    save_tasks(build_tasks(cohort, seed=0), out)
    return out


def _lm_cfg(cls, cohort, tasks_dir, init, out, **extra):
    base = {"cohort": str(cohort), "tasks": str(tasks_dir), "init": str(init), "out": str(out), "quiet": True,
            "log_every": 1, "warmup_steps": 1, "eval_samples": 0, "max_target_tokens": 48}
    return cls.from_dict({**base, **extra})


def test_align_trains_only_the_projector(cohort, tasks_dir, encoders_ckpt, tmp_path):
    from medfuse.train.config import AlignConfig
    from medfuse.train.lm_stages import train_lm_stage

    init, _ = encoders_ckpt
    out = tmp_path / "align"
    summary = train_lm_stage(_lm_cfg(AlignConfig, cohort, tasks_dir, init, out, max_samples=4, epochs=6,
                                     batch_size=4, lr=5e-3))
    rows = [r for r in _metrics(out) if "lm" in r]
    assert rows[-1]["lm"] < rows[0]["lm"]
    before, after = MedFuse.load(init), MedFuse.load(out)
    changed = lambda a, b: not torch.equal(a, b)  # noqa: E731
    assert any(changed(p, q) for p, q in zip(before.lm.projector.parameters(), after.lm.projector.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(before.fusion.parameters(), after.fusion.parameters()))
    assert not after.lm.has_lora
    # Only per-modality QA tasks are aligned on.
    assert summary["trainable_parameters"] == sum(p.numel() for p in after.lm.projector.parameters())


@pytest.fixture(scope="module")
def sft_ckpt(cohort, tasks_dir, encoders_ckpt, tmp_path_factory):
    from medfuse.train.lm_stages import train_lm_stage

    init, _ = encoders_ckpt
    out = tmp_path_factory.mktemp("sft") / "ckpt"
    summary = train_lm_stage(_lm_cfg(SFTConfig, cohort, tasks_dir, init, out, max_samples=6, epochs=6, batch_size=3,
                                     lr=5e-3, lora_r=4, lora_alpha=8, eval_samples=2))
    return out, summary


def test_sft_trains_lora_perception_and_head_and_recalibrates(sft_ckpt, encoders_ckpt):
    out, summary = sft_ckpt
    rows = [r for r in _metrics(out) if "lm" in r]
    assert rows[-1]["loss"] < rows[0]["loss"] and "disease" in rows[0]
    model = MedFuse.load(out)
    assert model.lm.has_lora
    before = MedFuse.load(encoders_ckpt[0])
    # The perception layer learned; the encoders stay as the encoder stage left them.
    assert any(not torch.equal(p, q) for p, q in zip(before.fusion.perception.parameters(),
                                                     model.fusion.perception.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(before.fusion.encoders.parameters(), model.fusion.encoders.parameters()))
    stage = model.card["stages"][-1]
    assert stage["stage"] == "sft" and set(stage["validation"]) == {"diagnosis", "findings", "answers"}
    assert "macro_f1" in stage["validation"]["diagnosis"]
    assert {"mean_jaccard", "format_rate", "answer_tag_rate"} <= set(stage["validation"]["answers"])
    assert [s["stage"] for s in model.card["stages"]] == ["encoders", "sft"]


def test_grpo_runs_groups_logs_rewards_and_compares_with_its_start(cohort, tasks_dir, sft_ckpt, tmp_path):
    from medfuse.train.grpo import train_grpo

    init, _ = sft_ckpt
    out = tmp_path / "grpo"
    summary = train_grpo(_lm_cfg(GRPOConfig, cohort, tasks_dir, init, out, max_samples=4, max_steps=2, batch_size=2,
                                 group_size=3, max_new_tokens=12, eval_samples=2, lr=1e-3))
    rows = [r for r in _metrics(out) if "reward_mean" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert {"zero_std_share", "reward/jaccard", "reward/format", "kl", "completion_tokens"} <= set(rows[0])
    # Two prompts per step (batch_size), each a group of 3: the share of groups whose
    # rewards are all equal is 0, 1/2 or 1, and 1 whenever the step's rewards are all equal.
    assert all(r["zero_std_share"] in (0.0, 0.5, 1.0) for r in rows)
    assert all(r["zero_std_share"] == 1.0 for r in rows if r["reward_std"] == 0.0)
    val = summary["validation"]
    assert val["mean_zero_std_share"] == pytest.approx(sum(r["zero_std_share"] for r in rows) / len(rows), abs=1e-4)
    assert val["before"]["n"] == val["after"]["n"] == 2 and "mean_jaccard" in val["after"]
    before, after = MedFuse.load(init), MedFuse.load(out)
    lora = lambda m: {k: v for k, v in m.lm.lm.state_dict().items() if "lora_" in k}  # noqa: E731
    assert any(not torch.equal(v, lora(after)[k]) for k, v in lora(before).items()), "GRPO updated the adapter"
    assert all(torch.equal(p, q) for p, q in zip(before.fusion.parameters(), after.fusion.parameters()))


def test_evaluate_reports_diagnosis_single_modality_grounding_and_answers(cohort, sft_ckpt, tmp_path, capsys):
    from medfuse.record.store import iter_cohort
    from medfuse.train.evaluate import evaluate_checkpoint, only_modality

    model = MedFuse.load(sft_ckpt[0])
    result = evaluate_checkpoint(model, cohort, lm_samples=2, limit=30)
    assert result["n_cases"] == 30 and result["diagnosis"]["n_samples"] == 30
    assert set(result["single_modality"]) <= set(MODALITIES) and result["single_modality"]
    best = result["best_single_modality"]
    assert result["fusion_margin_macro_f1"] == pytest.approx(
        result["diagnosis"]["macro_f1"] - result["single_modality"][best]["macro_f1"], abs=1e-3)
    assert result["grounding"] is None or "acc_iou_0.5" in result["grounding"]
    answers = result["answers"]
    # An answer without an <answer> tag earns Jaccard 0 (not the 1 of two empty sets), so
    # the mean cannot exceed the share of tagged answers.
    assert answers["n"] == 2 and answers["mean_jaccard"] <= answers["answer_tag_rate"]
    case = next(c for c in iter_cohort(cohort) if {"ecg", "labs"} <= set(c.modalities()))
    assert only_modality(case, "ecg").modalities() == ["ecg"]
    # CLI: --write stores the result in the model card.
    ckpt = tmp_path / "ckpt"
    model.save(ckpt)
    assert main(["model", "evaluate", str(ckpt), "--cohort", str(cohort), "--limit", "20", "--write"]) == 0
    assert json.loads(capsys.readouterr().out)["n_cases"] == 20
    assert MedFuse.load(ckpt).card["evaluation"]["n_cases"] == 20
    assert main(["model", "evaluate", str(ckpt), "--cohort", str(tmp_path / "nope")]) == 2
