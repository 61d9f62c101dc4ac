"""GRPO rewards on tricky model outputs: Jaccard, format, Hungarian box IoU, the registry."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from medfuse.formats import has_valid_format
from medfuse.record.boxes import box_iou
from medfuse.train.rewards import (
    DEFAULT_WEIGHTS,
    REWARDS,
    box_iou_reward,
    combined_reward,
    completion_text,
    format_reward,
    jaccard_reward,
)


def wrap(answer: str, think: str = "evidence") -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


def jac(text: str, gold: list[str] | str | None, **kw) -> float | None:
    return jaccard_reward([text], answer_diseases=[gold], **kw)[0]


# ---------------------------------------------------------------- jaccard


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("Sepsis; sepsis; SEPSIS", ["sepsis"], 1.0),  # duplicates, any case
        ("PNEUMONIA", ["pneumonia"], 1.0),  # upper case
        ("  atrial   fibrillation ;\n hypertension  ", ["atrial_fibrillation", "hypertension"], 1.0),  # whitespace
        ("AF; HTN; CHF", ["atrial_fibrillation", "hypertension", "heart_failure"], 1.0),  # panel synonyms
        ("AF; atrial fibrillation; a-fib", ["atrial_fibrillation"], 1.0),  # synonym + name: one disease
        ("肺炎、脓毒症", ["pneumonia", "sepsis"], 1.0),  # Chinese names and separator
        ("房颤；高血压", ["atrial_fibrillation", "hypertension"], 1.0),  # zh synonym, full-width ';'
        ("Pneumonia, Sepsis.", ["pneumonia"], 0.5),  # one extra disease
        ("Pneumonia; influenza", ["pneumonia"], 0.5),  # an unknown name still counts as wrong
        ("Pneumonia", ["pneumonia", "sepsis", "acute_renal_failure", "heart_failure"], 0.25),
        ("diabetes mellitus", ["lung_cancer"], 0.0),
        ("none", [], 1.0),  # empty vs empty
        ("None", ["pneumonia"], 0.0),
        ("无", [], 1.0),
        ("", [], 1.0),  # an empty tag is the empty set
        ("Sepsis", [], 0.0),
        ("Atrial Fibrillation", ["atrial fibrillation"], 1.0),  # gold written as names works too
    ],
)
def test_jaccard_answers(answer, gold, expected):
    assert jac(wrap(answer), gold) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text",
    [
        "Pneumonia",  # no tag
        "<think>consolidation</think> Pneumonia",
        "<answer>Pneumonia",  # unclosed
        "<think>x</think><answr>Pneumonia</answr>",  # misspelt tag
        "",
    ],
)
def test_jaccard_without_answer_tag_is_zero(text):
    assert jac(text, ["pneumonia"]) == 0.0
    assert jac(text, []) == 0.0  # even "nothing" must be said inside a tag


def test_jaccard_last_answer_tag_wins():
    text = "<think>x</think><answer>Sepsis</answer> on reflection <ANSWER> pneumonia </ANSWER>"
    assert jac(text, ["pneumonia"]) == 1.0
    assert jac(text, ["sepsis"]) == 0.0
    assert format_reward([text]) == [0.0]  # two answers is not the format


def test_jaccard_gold_forms_and_none():
    out = jaccard_reward(
        [wrap("Sepsis"), wrap("Sepsis"), wrap("Sepsis")],
        answer_diseases=[json.dumps(["sepsis", "pneumonia"]), None, ("sepsis",)],
    )
    assert out == [0.5, None, 1.0]  # JSON string column, not applicable, tuple
    with pytest.raises(ValueError, match="2 completions but 1"):
        jaccard_reward(["a", "b"], answer_diseases=[[]])


def test_jaccard_conversational_and_extra_kwargs():
    completions = [[{"role": "assistant", "content": wrap("Heart failure; AF")}]]
    out = jaccard_reward(
        completions,
        answer_diseases=[["heart_failure", "atrial_fibrillation"]],
        prompts=[[{"role": "user", "content": "q"}]],
        completion_ids=[[1, 2]],
        trainer_state=None,
    )
    assert out == [1.0]


def test_jaccard_custom_panel(tmp_path):
    panel = tmp_path / "panel.yaml"
    panel.write_text(
        "name: tiny\ndiseases:\n  - {key: flu, name: influenza, synonyms: [grippe], zh: 流感}\n"
        "  - {key: cold, name: common cold}\n",
        encoding="utf-8",
    )
    assert jac(wrap("Grippe; 流感"), ["flu"], panel=panel) == 1.0
    assert jac(wrap("influenza; common cold"), ["flu"], panel=str(panel)) == 0.5
    assert jac(wrap("AF"), ["atrial_fibrillation"], panel=panel) == 0.0  # not in this panel: unknown names
    assert jac(wrap("AF"), ["atrial_fibrillation"]) == 1.0  # the default panel knows AF


# ---------------------------------------------------------------- format


FORMAT_CASES = [
    ("<think>ECG: irregular RR</think><answer>atrial fibrillation</answer>", 1.0),
    ("  <think>\nmultiline\nreasoning\n</think>\n\n<answer>none</answer>\n", 1.0),
    ("<THINK>x</THINK><Answer>Sepsis</Answer>", 1.0),
    ("<think>x</think><answer>Effusion <ref>pleural effusion</ref><box>[[10, 600, 300, 900]]</box></answer>", 1.0),
    ("<think>x</think><answer>none</answer><ref>nodule</ref><box>[[1, 2, 3, 4]]</box>", 0.0),  # box after the answer
    ("<answer>Sepsis</answer>", 0.0),  # no think
    ("<think></think><answer>Sepsis</answer>", 0.0),  # empty think
    ("<think>x</think><answer> </answer>", 0.0),  # empty answer
    ("Sure! <think>x</think><answer>Sepsis</answer>", 0.0),  # text before
    ("<think>x</think><answer>Sepsis</answer> Hope this helps.", 0.0),  # text after
    ("<think>x <think>y</think></think><answer>Sepsis</answer>", 0.0),  # nested
    ("<think>x</think><answer>Sepsis</answer><answer>AF</answer>", 0.0),  # two answers
    ("<answer>Sepsis</answer><think>x</think>", 0.0),  # wrong order
    ("<think>x</think>Sepsis", 0.0),
]


@pytest.mark.parametrize(("text", "expected"), FORMAT_CASES)
def test_format_reward(text, expected):
    assert format_reward([text]) == [expected]
    assert format_reward([[{"role": "assistant", "content": text}]]) == [expected]
    assert (expected == 1.0) == has_valid_format(text)  # one rule for rewards and the parser


# ---------------------------------------------------------------- box IoU


def boxes_text(*pairs: tuple[str, list[list[int]]], think: str = "x") -> str:
    inner = " ".join(f"<ref>{label}</ref><box>{json.dumps(b)}</box>" for label, b in pairs)
    return wrap(inner, think)


def iou_r(text: str, gold, task=None) -> float | None:
    return box_iou_reward([text], gold_boxes=[gold], task=None if task is None else [task])[0]


EFFUSION = [{"label": "pleural effusion", "box": [[10, 600, 300, 900], [700, 610, 980, 905]]}]


def test_box_exact_and_swapped_order_match():
    assert iou_r(boxes_text(("pleural effusion", [[10, 600, 300, 900], [700, 610, 980, 905]])), EFFUSION) == 1.0
    # Predicted in the other order, and as two annotations: Hungarian matching pairs them up.
    text = boxes_text(("Pleural Effusion", [[700, 610, 980, 905]]), ("pleural_effusion", [[10, 600, 300, 900]]))
    assert iou_r(text, EFFUSION) == 1.0


def test_box_wrong_label_does_not_match():
    assert iou_r(boxes_text(("consolidation", [[10, 600, 300, 900]])), EFFUSION) == 0.0
    assert iou_r(wrap("<box>[[10, 600, 300, 900]]</box>"), EFFUSION) == 0.0  # no label at all
    # One right, one wrong label: the wrong one is an extra prediction.
    text = boxes_text(("pleural effusion", [[10, 600, 300, 900]]), ("nodule", [[700, 610, 980, 905]]))
    assert iou_r(text, EFFUSION) == pytest.approx(1 / 2)


def test_box_extra_and_missing_boxes_cost():
    gold = [{"label": "nodule", "box": [100, 100, 200, 200]}]
    exact = [[100, 100, 200, 200]]
    assert iou_r(boxes_text(("nodule", exact + [[500, 500, 600, 600], [0, 0, 5, 5]])), gold) == pytest.approx(1 / 3)
    assert iou_r(boxes_text(("pleural effusion", [[10, 600, 300, 900]])), EFFUSION) == pytest.approx(1 / 2)
    half = [[100, 100, 200, 150]]  # IoU 0.5
    assert iou_r(boxes_text(("nodule", half)), gold) == pytest.approx(0.5)
    assert iou_r(boxes_text(("nodule", [[150, 150, 100, 100]])), gold) == 0.0  # reversed corners: not a box


def test_box_hungarian_is_optimal():
    rng = random.Random(0)

    def rand_box():
        x, y = rng.randint(0, 600), rng.randint(0, 600)
        return [x, y, x + rng.randint(50, 400), y + rng.randint(50, 400)]

    for _ in range(20):
        pred = [rand_box() for _ in range(rng.randint(1, 4))]
        gold = [rand_box() for _ in range(rng.randint(1, 4))]
        small, large = sorted((pred, gold), key=len)
        best = max(
            sum(box_iou(a, b) if small is pred else box_iou(b, a) for a, b in zip(small, perm, strict=False))
            for perm in itertools.permutations(large, len(small))
        )
        reward = iou_r(boxes_text(("mass", pred)), [{"label": "mass", "box": gold}])
        assert reward == pytest.approx(best / max(len(pred), len(gold)))


def test_box_matching_maximises_total_iou_not_pair_count():
    # The eval kit's match_boxes(threshold=0) would pair a->g2 and b->g1 (two overlapping
    # pairs, total IoU 0.065); the reward wants the largest total IoU: a->g1 (0.95).
    gold = [{"label": "mass", "box": [[0, 0, 100, 100], [95, 0, 195, 100]]}]
    pred = boxes_text(("mass", [[0, 0, 100, 95], [10, 0, 50, 10]]))
    assert iou_r(pred, gold) == pytest.approx(0.95 / 2)


def test_box_none_missing_and_region_tasks():
    nodule = boxes_text(("nodule", [[1, 2, 30, 40]]))
    gold = [{"label": "nodule", "box": [1, 2, 30, 40]}]
    assert iou_r(wrap("No nodule."), gold) == 0.0  # gold boxes, none predicted
    assert iou_r("garbage without tags", gold) == 0.0
    assert iou_r(nodule, []) is None  # not a region task: not applicable
    assert iou_r(nodule, None) is None
    assert iou_r(nodule, "[]", task="diagnosis") is None
    assert iou_r(wrap("No nodule is seen."), [], task="text_to_region") == 1.0  # right: nothing to box
    assert iou_r(nodule, [], task="grounded_report") == 0.0  # boxes where there are none
    assert box_iou_reward([nodule], gold_boxes=[[]], task_type=["grounded_report"]) == [0.0]
    assert iou_r(nodule, [], task="region_to_text") is None  # the box is in the prompt there


def test_box_read_from_last_answer_only():
    gold = [{"label": "nodule", "box": [1, 2, 30, 40]}]
    in_think = "<think><ref>nodule</ref><box>[[1, 2, 30, 40]]</box></think><answer>none</answer>"
    assert iou_r(in_think, gold) == 0.0  # boxes cited in the reasoning are not the answer
    assert iou_r("<ref>nodule</ref><box>[[1, 2, 30, 40]]</box>", gold) == 1.0  # no answer tag: the whole text
    two = wrap("<ref>nodule</ref><box>[[500, 500, 600, 600]]</box>")
    two += "<answer><ref>nodule</ref><box>[[1, 2, 30, 40]]</box></answer>"  # the last answer wins
    assert iou_r(two, gold) == 1.0


def test_box_gold_forms():
    text = boxes_text(("nodule", [[1, 2, 30, 40]]), ("mass", [[100, 100, 200, 200]]))
    as_dicts = [{"label": "nodule", "box": [1, 2, 30, 40]}, {"label": "Mass", "boxes": [[100, 100, 200, 200]]}]
    as_pairs = [("nodule", [[1, 2, 30, 40]]), ("mass", [[100, 100, 200, 200]])]
    out = box_iou_reward([text] * 3, gold_boxes=[as_dicts, json.dumps(as_dicts), as_pairs])
    assert out == [1.0, 1.0, 1.0]
    conv = [{"role": "assistant", "content": text}]
    assert box_iou_reward([conv], gold_boxes=[as_pairs]) == [1.0]
    with pytest.raises(ValueError, match="without 'box'"):
        box_iou_reward([text], gold_boxes=[[{"label": "nodule"}]])
    with pytest.raises(ValueError, match="task values"):
        box_iou_reward([text], gold_boxes=[as_pairs], task=[])


# ---------------------------------------------------------------- registry


def test_combined_reward_sums_applicable_rewards():
    completions = [
        boxes_text(("nodule", [[1, 2, 30, 40]])),  # region task: no diagnosis gold
        wrap("Pneumonia; Sepsis"),  # diagnosis task: no boxes
        "<answer>none</answer>",  # right answer, wrong format
        [{"role": "assistant", "content": "no tags"}],  # nothing applies but the format
    ]
    columns = {
        "answer_diseases": [None, ["pneumonia", "sepsis"], [], None],
        "gold_boxes": [[{"label": "nodule", "box": [1, 2, 30, 40]}], [], None, "[]"],
    }
    per_reward = {name: fn(completions, **columns) for name, (fn, _) in REWARDS.items()}
    assert per_reward == {
        "jaccard": [None, 1.0, 1.0, None],
        "format": [1.0, 1.0, 0.0, 0.0],
        "box_iou": [1.0, None, None, None],
        "citation": [None, None, None, None],  # no prompts column: nothing to check ids against
        "consistency": [None, 0.5, 1.0, None],  # "evidence" explains neither pneumonia nor sepsis
    }
    assert DEFAULT_WEIGHTS == {"jaccard": 1.0, "format": 0.5, "box_iou": 0.5, "citation": 0.5, "consistency": 0.5}
    assert combined_reward(completions, **columns) == [1.0, 1.75, 1.5, 0.0]  # None skipped, not zeroed
    assert combined_reward(completions, weights={"jaccard": 2.0}, **columns) == [None, 2.0, 2.0, None]
    no_boxes = combined_reward(completions, weights={"box_iou": 1.0}, answer_diseases=columns["answer_diseases"])
    assert no_boxes == [None] * 4  # no gold_boxes column: the box reward applies to nothing
    with pytest.raises(ValueError, match="unknown reward"):
        combined_reward(completions, weights={"bleu": 1.0})


def test_registry_functions_follow_trl_signature():
    assert set(REWARDS) == set(DEFAULT_WEIGHTS)
    for fn, column in REWARDS.values():
        kwargs = {"prompts": ["q"], "completion_ids": [[1]]} | ({} if column is None else {column: [None]})
        out = fn(completions=["<answer>none</answer>"], **kwargs)
        assert isinstance(out, list) and len(out) == 1
    assert completion_text([]) == ""


# ---------------------------------------------------------------- citations and consistency

_PROMPT = ("Measured evidence:\n[E1] crp 16.3 mg/L (high) [labs[2]]\n[E2] bnp 900 pg/mL (high) [labs[3]]\n"
           "[E3] temperature 38.9 Cel (fever) [vitals[0]]\n\nDisease head decision: reported: pneumonia 0.91.")


def test_citation_reward_scores_ids_that_exist_and_concern_the_disease():
    from medfuse.train.rewards import citation_reward

    outs = [
        wrap("pneumonia", "pneumonia: raised CRP and fever [E1, E3]."),  # both tied to pneumonia
        wrap("pneumonia", "pneumonia: raised CRP [E1], BNP [E2]."),  # BNP argues heart failure: half
        wrap("pneumonia", "pneumonia: raised CRP [E9]."),  # no such item
        wrap("pneumonia", "pneumonia: likely."),  # could cite E1/E3 and does not
        wrap("lung cancer", "lung cancer: no listed item shows it."),  # nothing to cite
    ]
    conversational = [[{"role": "user", "content": _PROMPT}]] * len(outs)
    assert citation_reward(outs, prompts=conversational) == [1.0, 0.5, 0.0, 0.0, 1.0]


def test_consistency_reward_needs_every_reported_rationale_and_no_other_disease():
    from medfuse.train.rewards import consistency_reward

    outs = [
        wrap("pneumonia; sepsis", "pneumonia: CRP high [E1].\nsepsis: fever [E3]."),
        wrap("pneumonia; sepsis", "pneumonia: CRP high [E1]."),  # sepsis unexplained
        wrap("pneumonia", "pneumonia: CRP high [E1], as in heart failure."),  # argues an unreported disease
        wrap("pneumonia", "pneumonia: CRP high [E1].\nConsidered, not reported (below threshold): heart failure."),
        wrap("pneumonia", "pneumonia: CRP high, no heart failure."),  # a denial is not an argument
    ]
    gold = [["pneumonia", "sepsis"], ["pneumonia", "sepsis"], ["pneumonia"], ["pneumonia"], ["pneumonia"]]
    assert consistency_reward(outs, answer_diseases=gold) == pytest.approx([1.0, 2 / 3, 0.5, 1.0, 1.0])
