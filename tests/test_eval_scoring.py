"""Scores of whole runs never flatter: failed or unparsed answers, classes with nothing to
score, surplus or mislabelled boxes, and adapters that answer another question."""

from __future__ import annotations

import pytest

from medfuse.eval.benchmarks.base import EvalItem
from medfuse.eval.models import medfuse_checkpoint
from medfuse.eval.models.medfuse_checkpoint import MedfuseCheckpointModel
from medfuse.eval.prompts import build_prompt
from medfuse.eval.scoring import score_run


def diagnosis_item(k: int, gold: list[str]) -> EvalItem:
    return EvalItem(id=f"d{k}", benchmark="t", task_type="diagnosis", answer_type="label_set", question="Which?",
                    candidates=["pneumonia", "sepsis", "hypertension"], gold=gold)


def test_failed_and_unparsed_diagnoses_score_zero_and_are_counted():
    items = [diagnosis_item(0, []), diagnosis_item(1, []), diagnosis_item(2, []), diagnosis_item(3, ["pneumonia"])]
    outputs = [None, "The patient looks healthy.", "<answer>none</answer>", "<answer>Pneumonia</answer>"]
    records, block = score_run(items, outputs, n_resamples=0)
    # Only the stated empty set on the healthy case (item 2) and item 3 are right.
    assert [r["score"]["jaccard"] for r in records] == [0.0, 0.0, 1.0, 1.0]
    assert block["metrics"]["jaccard"] == 0.5
    assert (block["details"]["n_failed"], block["details"]["n_unparsed"], block["n_failed"]) == (1, 1, 1)
    assert block["answered"] == {"n": 3, "metrics": pytest.approx({"jaccard": 2 / 3, "micro_f1": 1.0, "macro_f1": 1.0,
                                                                  "micro_precision": 1.0, "micro_recall": 1.0})}


def test_diagnosis_macro_f1_ignores_candidates_nobody_has_or_predicts():
    items = [diagnosis_item(0, ["pneumonia"]), diagnosis_item(1, [])]
    _, block = score_run(items, ["<answer>pneumonia</answer>", "<answer>none</answer>"], n_resamples=50)
    assert block["metrics"]["macro_f1"] == 1.0  # not 1/3: sepsis and hypertension have nothing to score
    assert block["details"]["f1_excluded"] == ["sepsis", "hypertension"]
    assert block["ci95"]["macro_f1"] == [1.0, 1.0]


def test_yes_no_maybe_macro_f1_leaves_out_an_unused_class():
    items = [EvalItem(id=str(k), benchmark="t", task_type="multiple_choice", answer_type="yes_no_maybe", question="?",
                      gold=g) for k, g in enumerate(["yes", "no", "yes"])]
    _, block = score_run(items, ["yes", "no", "<answer>yes</answer>"], n_resamples=0)
    assert block["metrics"]["macro_f1"] == 1.0 and block["metrics"]["accuracy"] == 1.0


def grounding_item(label: str, gold: list[list[int]]) -> EvalItem:
    return EvalItem(id=label, benchmark="t", task_type="grounding", answer_type="boxes",
                    question=f"Locate every {label} in the image.", gold=gold, metadata={"label": label})


def test_grounding_matches_the_queried_label_and_penalises_surplus_boxes():
    box = [100, 100, 300, 300]
    items = [grounding_item("pleural effusion", [box]), grounding_item("nodule", [box]), grounding_item("mass", [box])]
    grid = ", ".join(f"[{x}, {y}, {x + 20}, {y + 20}]" for x in range(0, 940, 20) for y in range(0, 960, 20))
    outputs = [
        f"<ref>Pleural_Effusion</ref><box>[{box}]</box>",  # the queried label, written differently: a match
        f"<ref>pleural effusion</ref><box>[{box}]</box>",  # the right place, but for another label: no match
        f"<ref>mass</ref><box>[{grid}, [100, 100, 300, 300]]</box>",  # the gold box hidden in 2,256 others
    ]
    records, block = score_run(items, outputs, n_resamples=0)
    assert block["headline"][0] == "f1"
    assert [r["score"]["acc_iou_0.5"] for r in records] == [1.0, 0.0, pytest.approx(1 / 2257)]
    assert [r["score"]["f1"] for r in records] == [1.0, 0.0, pytest.approx(2 / 2258)]
    assert block["details"]["n_pred"] == 1 + 1 + 2257 and block["details"]["n_matched"] == 2
    assert block["metrics"]["acc_iou_0.5"] == pytest.approx(2 / (1 + 1 + 2257))
    assert block["metrics"]["precision"] == pytest.approx(2 / 2259) and block["metrics"]["recall"] == pytest.approx(2 / 3)


def test_medfuse_adapter_routes_by_task_type(tmp_path, monkeypatch):
    case_dir = tmp_path / "case1"
    case_dir.mkdir()
    (case_dir / "case.json").write_text("{}")
    image = str(case_dir / "cxr0.png")
    vqa = EvalItem(id="v", benchmark="t", task_type="vqa", answer_type="open", question="What organ is shown?",
                   images=[image], gold="lung")
    choice = EvalItem(id="c", benchmark="t", task_type="multiple_choice", answer_type="choice", question="Which?",
                      options={"A": "x", "B": "y"}, images=[image], gold="A")
    diag = EvalItem(id="d", benchmark="medfuse-cohort", task_type="diagnosis", answer_type="label_set",
                    question="Which diseases?", candidates=["sepsis"], gold=[],
                    metadata={"case_dir": str(case_dir)})  # no images: found through its case folder
    adapter = MedfuseCheckpointModel.__new__(MedfuseCheckpointModel)
    adapter.batch_size = 8
    diagnosed, answered = [], []
    monkeypatch.setattr(medfuse_checkpoint, "read_case", lambda folder: folder)
    monkeypatch.setattr(adapter, "_diagnose", lambda cases, _n: diagnosed.extend(cases) or ["diag"] * len(cases))
    monkeypatch.setattr(adapter, "_answer", lambda ps: answered.extend(p.user for p in ps) or ["text"] * len(ps))
    outputs = adapter.generate([build_prompt(it) for it in (vqa, choice, diag)])
    assert outputs == ["text", "text", "diag"]
    assert diagnosed == [case_dir]
    assert answered[0].startswith("What organ is shown?") and "Which?" in answered[1]
