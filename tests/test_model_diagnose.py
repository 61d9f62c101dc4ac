"""The assembled model: checkpoint round trip, `diagnose` output and schema, the CLI,
and the eval-harness adapter. All on a tiny model built from configs (no network)."""

from __future__ import annotations

import copy
import json

import jsonschema
import numpy as np
import pytest
import yaml
from conftest import FIXTURES
from test_record import full_case

from medfuse.cli import main
from medfuse.errors import InputError
from medfuse.eval.prompts import Prompt
from medfuse.model import CHECKPOINT_FILES, MedFuse
from medfuse.model.config import ModelConfig
from medfuse.model.diagnosis import (
    DiagnoseResult,
    diagnose,
    diagnose_many,
    insufficient_diseases,
)
from medfuse.record.case import MODALITIES, LabResult, PatientCase
from medfuse.record.store import read_case, write_case, write_index

# Small enough to build, save and load in about a second on one CPU core.
TINY = {
    "d_model": 32, "n_heads": 2, "tokens": {m: 2 for m in MODALITIES}, "cxr_size": 32, "ecg_channels": 8,
    "cxr_vit": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                "patch_size": 16},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(one_torch_thread) -> MedFuse:
    return MedFuse.build(ModelConfig.from_dict(TINY), tiny_llm=True)


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return model.save(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def case() -> PatientCase:
    # Every modality; the ECG cut to 4 s (the ECG reader's cost grows with its length).
    c = full_case()
    c.ecg = c.ecg.model_copy(update={"signal": c.ecg.signal[:2000], "n_samples": 2000})
    return c


def labs_only(case_id: str = "labs-only") -> PatientCase:
    return PatientCase(case_id=case_id, labs=[LabResult(name="Glucose", code="glucose", value=182.0, unit="mg/dL")])


# ------------------------------------------------------------------ checkpoint

def test_checkpoint_has_the_documented_files_and_an_honest_card(checkpoint, model):
    for name in CHECKPOINT_FILES:
        assert (checkpoint / name).is_file(), name
    assert (checkpoint / "llm" / "config.json").is_file()  # the tiny LLM cannot be re-resolved by name
    card = json.loads((checkpoint / "metadata.json").read_text())
    assert card["trained"] is False and any("UNTRAINED" in x for x in card["limitations"])
    assert [d["key"] for d in card["panel"]["diseases"]] == model.panel.keys
    assert set(card["thresholds"]) == set(model.panel.keys)
    for key in ("inputs", "training_data", "intended_use", "version"):
        assert card[key]
    assert yaml.safe_load((checkpoint / "config.yaml").read_text())["d_model"] == 32


def test_round_trip_gives_identical_probabilities_and_text(checkpoint, model, case):
    loaded = MedFuse.load(checkpoint)
    assert loaded.config == model.config and loaded.panel.keys == model.panel.keys
    assert loaded.stats.to_dict() == model.stats.to_dict()
    a, b = model.fuse([case, labs_only()]), loaded.fuse([case, labs_only()])
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    np.testing.assert_array_equal(a.gates, b.gates)
    prompts = [("sys", "ECG <ecg> labs <labs> which disease?")] * 2
    assert model.generate(prompts, a, max_new_tokens=6) == loaded.generate(prompts, b, max_new_tokens=6)


def test_round_trip_keeps_a_lora_adapter_and_calibration(tmp_path, case, model):
    model = copy.deepcopy(model)
    model.lm.add_lora(r=4, alpha=8)
    with torch_no_grad():
        for name, p in model.lm.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained-looking adapter: changes the output
    model.head.thresholds = np.linspace(0.2, 0.8, len(model.panel))
    model.head.temperature = np.full(len(model.panel), 1.7)
    path = model.save(tmp_path / "lora")
    assert (path / "adapter" / "adapter_config.json").is_file()
    loaded = MedFuse.load(path)
    assert loaded.lm.has_lora
    np.testing.assert_allclose(loaded.head.thresholds, model.head.thresholds)
    a, b = model.fuse([case]), loaded.fuse([case])
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    prompt = [("sys", "ECG <ecg>, image <cxr>. Diagnose.")]
    assert model.generate(prompt, a, max_new_tokens=10) == loaded.generate(prompt, b, max_new_tokens=10)


def torch_no_grad():
    import torch

    return torch.no_grad()


def test_broken_checkpoints_are_one_clear_error(checkpoint, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "stats.json").unlink()
    with pytest.raises(InputError, match="missing stats.json"):
        MedFuse.load(broken)
    shutil.copy(checkpoint / "stats.json", broken / "stats.json")
    (broken / "fusion.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="fusion.safetensors"):
        MedFuse.load(broken)
    with pytest.raises(InputError, match="not empty"):
        MedFuse.build(ModelConfig.from_dict(TINY), tiny_llm=True).save(checkpoint)


# ------------------------------------------------------------------ diagnose

def test_diagnose_output_matches_the_schema_and_the_case(model, case):
    result = diagnose(model, case, max_new_tokens=16)
    data = result.model_dump(mode="json")
    jsonschema.validate(data, DiagnoseResult.model_json_schema())
    assert list(data) == ["case_id", "diagnoses", "evidence", "findings", "modality_weights", "reasoning",
                          "reasoning_language", "report", "insufficient_data", "model"]
    # Every modality is present: every disease is assessed, weights are gates over all six.
    assert [d["name"] for d in data["diagnoses"]] == model.panel.names and data["insufficient_data"] == []
    assert sum(data["modality_weights"].values()) == pytest.approx(1.0, abs=1e-3)
    for d in data["diagnoses"]:
        assert d["present"] == (d["probability"] >= 0.5)  # untrained: stored thresholds are 0.5
    cited = {(e["source"], str(e["value"])) for e in data["evidence"]}
    assert ("labs[0]", "2.4") in cited and ("cxr[0]:finding 0", "[100, 200, 400, 600]") in cited
    assert data["model"]["version"].endswith("+untrained")


def test_too_little_data_is_said_not_guessed(model):
    (d,) = diagnose_many(model, [labs_only()], max_new_tokens=8)
    r = d.result
    # Labs only: AF (ECG, notes), hypertension (ECG, vitals) and lung cancer (CXR, notes,
    # genomics) have none of their evidence modalities.
    assert r.insufficient_data == ["atrial fibrillation", "hypertension", "lung cancer"]
    assert {x.name for x in r.diagnoses}.isdisjoint(r.insufficient_data)
    assert r.modality_weights.labs == pytest.approx(1.0, abs=1e-3)
    assert r.modality_weights.ecg == r.modality_weights.cxr == 0.0
    assert "Insufficient data to assess: atrial fibrillation, hypertension, lung cancer." in r.report
    assert insufficient_diseases(PatientCase(case_id="empty"), model.panel) == model.panel.keys


def test_generated_text_is_checked_and_boxes_parsed(model, case, monkeypatch):
    text = ("<think>Creatinine 2.4 mg/dL is high. Potassium 6.9 mmol/L is critical. Heart rate 112 with fever 38.6."
            "</think><answer>pneumonia; sepsis</answer>"
            "<ref>consolidation</ref><box>[[100, 210, 400, 600]]</box><ref>nodule</ref><box>[[500, 10, 400, 90]]</box>")
    monkeypatch.setattr(model, "generate", lambda prompts, fused, max_new_tokens=128, **_: [text] * len(prompts))
    (d,) = diagnose_many(model, [case])
    r = d.result
    assert r.reasoning.startswith("Creatinine 2.4 mg/dL is high. Heart rate 112 with fever 38.6.")
    assert "6.9" not in r.reasoning and "1 statement(s) not supported" in r.reasoning
    assert [c.reason for c in d.check.dropped] == ["mentions potassium but the case has no such result"]
    assert [(f.label, f.box) for f in r.findings] == [("consolidation", [100, 210, 400, 600])]
    assert d.dropped_findings == ["nodule: box [500, 10, 400, 90] is not a valid 0-999 box"]
    # Boxes need an image to point into.
    (d2,) = diagnose_many(model, [labs_only()])
    assert d2.result.findings == [] and len(d2.dropped_findings) == 2


def test_chinese_output_uses_panel_names(model, case):
    r = diagnose(model, case, lang="zh", max_new_tokens=4)
    assert r.diagnoses[0].name == "心房颤动"
    assert r.report.startswith("印象")


def test_a_note_in_another_language_is_quoted_and_the_answer_language_asked(model, case):
    from medfuse.model.diagnosis import build_prompt
    from medfuse.record.case import Note

    # The case's note is Chinese: asked in English, it is quoted and English is asked for.
    _, user = build_prompt(case, [], model.panel, "en")
    assert 'Notes (history, written in Chinese, quoted as source material): "咳嗽三天，发热。无胸痛。"' in user
    assert user.endswith("The notes quoted above are in Chinese; write the reasoning and the answer in English.")
    _, zh_user = build_prompt(case, [], model.panel, "zh")
    assert "病历 (history): 咳嗽三天，发热。无胸痛。" in zh_user and "原文" not in zh_user
    # An English note: the English prompt is the one the model was trained on; Chinese quotes it.
    english = case.model_copy(update={"notes": [Note(text="Cough for three days.", type="history")]})
    _, user = build_prompt(english, [], model.panel, "en")
    assert user.startswith("Notes (history): Cough for three days.\n\n") and "quoted" not in user
    assert user.endswith("write <answer>none</answer> if none applies.")
    _, zh_user = build_prompt(english, [], model.panel, "zh")
    assert "病历（history，英文原文，仅作为原始资料引用）：“Cough for three days.”" in zh_user
    assert zh_user.endswith("上面引用的病历为英文；请用中文书写推理和答案。")


@pytest.mark.parametrize(("lang", "think", "written_in"), [
    ("en", "需要结合临床判断。", "zh"), ("zh", "Taken together, the data support none of the candidate diseases.", "en")])
def test_reasoning_in_the_other_language_is_flagged(model, case, monkeypatch, lang, think, written_in):
    from medfuse.model.diagnosis import format_result

    text = f"<think>{think}</think><answer>none</answer>"
    monkeypatch.setattr(model, "generate", lambda prompts, fused, max_new_tokens=128, **_: [text] * len(prompts))
    (d,) = diagnose_many(model, [case], lang=lang)
    r = d.result
    assert r.reasoning_language == written_in
    assert r.reasoning.startswith(think)
    assert r.reasoning.endswith("[此推理不是所要求的中文：模型输出偏离了语言要求；请以诊断、证据和报告为准]" if lang == "zh" else
                                "the model drifted; rely on the diagnoses, the evidence and the report]")
    assert "  ! the reasoning is written in" in format_result(d, lang)
    # Reasoning in the requested language carries no mark.
    monkeypatch.setattr(model, "generate", lambda prompts, fused, max_new_tokens=128, **_: ["<answer>none</answer>"])
    (d,) = diagnose_many(model, [case], lang=lang)
    assert d.result.reasoning_language is None and "drift" not in d.result.reasoning


def test_english_generation_cannot_emit_tokens_outside_ascii(model, case, monkeypatch):
    seen: dict[str, dict] = {}

    def generate(prompts, fused, max_new_tokens=128, **kwargs):
        seen[lang] = kwargs
        return ["<answer>none</answer>"] * len(prompts)

    monkeypatch.setattr(model, "generate", generate)
    for lang in ("en", "zh"):
        diagnose_many(model, [case], lang=lang)
    tokenizer = model.lm.tokenizer
    banned = set(seen["en"]["suppress_tokens"])
    # The English targets are ASCII; a Chinese character (whole or in byte pieces) is not.
    assert set(model.lm.placeholder_ids.values()) <= banned
    assert all(i in banned for i in tokenizer.encode("咳嗽", add_special_tokens=False))
    assert not banned & set(tokenizer.encode("Creatinine 2.4 mg/dL (high).", add_special_tokens=False))
    assert "suppress_tokens" not in seen["zh"]  # Chinese reasoning cites English codes


# ------------------------------------------------------------------ CLI

def test_cli_init_diagnose_json_and_batch(tmp_path, capsys, case, monkeypatch):
    monkeypatch.delenv("MEDFUSE_MODEL", raising=False)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    ckpt = tmp_path / "ckpt"
    assert main(["model", "init", "--out", str(ckpt), "--config", str(cfg), "--tiny"]) == 0
    write_case(case, tmp_path / "cohort" / case.case_id)
    write_case(labs_only(), tmp_path / "cohort" / "labs-only")
    write_index(tmp_path / "cohort")
    capsys.readouterr()

    assert main(["diagnose", str(tmp_path / "cohort" / case.case_id), "--model", str(ckpt), "--json",
                 "--max-new-tokens", "8"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1
    jsonschema.validate(json.loads(printed[0]), DiagnoseResult.model_json_schema())

    out = tmp_path / "results.jsonl"
    assert main(["diagnose", str(tmp_path / "cohort"), "--model", str(ckpt), "--out", str(out),
                 "--max-new-tokens", "8"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["case_id"] for r in rows) == ["case-001", "labs-only"]
    for r in rows:
        jsonschema.validate(r, DiagnoseResult.model_json_schema())

    assert main(["diagnose", str(tmp_path / "cohort" / "labs-only"), "--model", str(ckpt), "--max-new-tokens", "4"]) == 0
    human = capsys.readouterr().out
    assert "insufficient data (not assessed): atrial fibrillation, hypertension, lung cancer" in human
    assert "modality weights: labs 1.00" in human

    # A file set of one encounter (WFDB record + radiograph) is imported and merged into one case.
    assert main(["diagnose", str(FIXTURES / "ecg" / "00001_lr.hea"), str(FIXTURES / "cxr" / "nih" / "00000001_000.png"),
                 "--model", str(ckpt), "--json", "--max-new-tokens", "4"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    weights = json.loads(line)["modality_weights"]
    assert weights["ecg"] > 0 and weights["cxr"] > 0 and weights["labs"] == 0


def test_cli_without_a_checkpoint_is_one_line(tmp_path, capsys, monkeypatch):
    from medfuse.model import locate

    monkeypatch.delenv("MEDFUSE_MODEL", raising=False)
    monkeypatch.setattr(locate, "shipped_checkpoint", lambda: tmp_path / "not-installed")
    write_case(labs_only(), tmp_path / "c")
    assert main(["diagnose", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no trained medfuse checkpoint" in err and "--model" in err
    assert main(["diagnose", str(tmp_path / "missing"), "--model", str(tmp_path)]) == 2
    assert "no such file or folder" in capsys.readouterr().err


# ------------------------------------------------------------------ eval adapter

def test_medfuse_eval_adapter_serves_cohort_cases_and_text_prompts(checkpoint, tmp_path, case):
    from medfuse.eval.models import create_model
    from medfuse.formats import has_valid_format, parse_answer_set

    folder = tmp_path / case.case_id
    write_case(case, folder)
    adapter = create_model(f"medfuse:{checkpoint}")
    images = tuple(str(folder / img.file) for img in read_case(folder, load_bulk=False).cxr)
    outputs = adapter.generate([
        Prompt(system="s", user="Which of the candidate diseases?", images=images, max_new_tokens=8, task_type="diagnosis"),
        Prompt(system="s", user="What is the capital of France?", max_new_tokens=4),
    ])
    diag, text = outputs
    assert has_valid_format(diag.split("<ref>")[0])
    assert set(diag.probabilities) == set(adapter.model.panel.names)
    assert set(parse_answer_set(diag)) == {n for n, p in diag.probabilities.items() if p >= 0.5}
    assert isinstance(text, str)


# ------------------------------------------------------------------ decision-conditioned reasoning

def test_reasoning_explains_exactly_the_heads_decision(model, case):
    """Whatever the (random) tiny model writes, the scaffold and the constraints keep the
    reasoning consistent with the head, its citations valid and every sentence finished."""
    import re

    from medfuse.formats import parse_answer_set
    from medfuse.interpret.case import interpret_case
    from medfuse.model.faithfulness import evidence_supports
    from medfuse.model.prompt import numbered_evidence, rationale_options

    model.head.thresholds = [0.0, 0.0, 1.1, 0.0, 1.1, 1.1, 1.1, 1.1, 1.1]  # AF, CAD, renal failure reported
    try:
        (d,) = diagnose_many(model, [case], max_new_tokens=60)
    finally:
        model.head.thresholds = [0.5] * len(model.panel)
    reported = [x.name for x in d.result.diagnoses if x.present]
    assert reported == ["atrial fibrillation", "coronary artery disease", "acute renal failure"]
    assert parse_answer_set(d.raw_text) == reported  # the answer is the head's set, by construction
    think = d.raw_text.split("</think>")[0].removeprefix("<think>")
    lines = think.split("\n")
    # Most probable first, one line each: the header is the decoder's, the rest the model's.
    assert {ln.split(":")[0] for ln in lines[:3]} == set(reported) and len(lines) <= 4
    assert not d.check.truncated and d.generated_tokens > 0
    listed = numbered_evidence(interpret_case(case))
    for line in lines[:3]:
        key = model.panel.lookup(line.split(":")[0]).key
        for k in (int(x) for x in re.findall(r"E(\d+)", " ".join(re.findall(r"\[[^\]]*\]", line)))):
            assert key in evidence_supports(listed[k - 1]), line
        assert re.search(r"[.!?]$", line.rstrip()), line  # a finished sentence
        options = rationale_options(listed, key)
        if options:  # the items tied to that disease, named whole, as the list spells them
            named = line.split(" supported by ", 1)[1].split(". Evidence:")[0].removesuffix(".")
            assert named.startswith(tuple(options)) and all(p in options for p in _split_options(named, options))
        else:
            assert line.endswith(": no listed evidence item shows it directly."), line
    # What the decoder may write is what the checker keeps: nothing removed, nothing missing.
    assert not d.check.dropped, d.check.dropped
    assert d.consistency is not None and d.consistency.consistent, d.consistency.problems


def _split_options(named: str, options: list[str]) -> list[str]:
    """'a (x), b (y)' -> the options it joins (options may hold ', ' themselves)."""
    out, rest = [], named
    while rest:
        option = max((o for o in options if rest.startswith(o)), key=len, default=None)
        if option is None:
            return [rest]
        out.append(option)
        rest = rest[len(option):].removeprefix(", ")
    return out


def test_the_prompt_states_the_decision_and_numbers_the_evidence(model, case):
    from medfuse.interpret.case import interpret_case
    from medfuse.model.prompt import HeadDecision, numbered_evidence

    evidence = interpret_case(case)
    decision = HeadDecision(reported=(("pneumonia", 0.91),), considered=(("sepsis", 0.32),))
    _, user = build_prompt_for(model, case, evidence, decision)
    listed = numbered_evidence(evidence)
    assert f"[E1] {listed[0].cite()}" in user and f"[E{len(listed)}] {listed[-1].cite()}" in user
    assert "Disease head decision: reported: pneumonia 0.91. considered, not reported: sepsis 0.32." in user
    assert "citing the evidence it rests on by id" in user


def build_prompt_for(model, case, evidence, decision):
    from medfuse.model.diagnosis import build_prompt

    return build_prompt(case, evidence, model.panel, "en", decision=decision)
