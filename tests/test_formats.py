"""The shared text formats: what task builders write, rewards and the evaluation kit read."""

from __future__ import annotations

import doctest

import pytest

from medfuse import formats
from medfuse.formats import format_answer, format_box, has_valid_format, parse_answer_set, parse_boxes, parse_think
from medfuse.knowledge.panel import load_panel


def test_answer_set_round_trip() -> None:
    names = ["atrial fibrillation", "heart failure"]
    assert parse_answer_set(format_answer(names)) == names
    assert parse_answer_set(format_answer([])) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>Atrial Fibrillation;Hypertension</answer>", ["Atrial Fibrillation", "Hypertension"]),
        ("<answer> Pneumonia ；  Sepsis 。</answer>", ["Pneumonia", "Sepsis"]),  # full-width separator, spaces
        ("<answer>Pneumonia, Sepsis</answer>", ["Pneumonia", "Sepsis"]),
        ("<answer>肺炎、脓毒症</answer>", ["肺炎", "脓毒症"]),
        ("<answer>Sepsis; sepsis; SEPSIS</answer>", ["Sepsis"]),
        ("<answer>none</answer>", []),
        ("<Answer>None.</Answer>", []),
        ("<answer>无</answer>", []),
        ("<answer>  </answer>", []),
        ("<think>...</think><answer>a</answer> then <answer>b; c</answer>", ["b", "c"]),  # the last tag counts
        ("Pneumonia; Sepsis", None),  # no answer tag: not an answer
        ("<answer>Pneumonia", None),  # unclosed tag
    ],
)
def test_parse_answer_set(text: str, expected: list[str] | None) -> None:
    assert parse_answer_set(text) == expected


def test_parse_answer_set_maps_to_panel_names() -> None:
    panel = load_panel()
    parsed = parse_answer_set("<answer>AF; 肺炎; Heart Failure; Gout</answer>", panel)
    af, pneumonia, hf = (panel.lookup(t).name for t in ("atrial fibrillation", "pneumonia", "heart failure"))
    assert parsed == [af, pneumonia, hf, "Gout"]  # unknown names kept as written
    # Two synonyms of one disease are one answer.
    assert parse_answer_set("<answer>atrial fibrillation; AF</answer>", panel) == [af]


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        ("<think>AF on ECG; BNP high</think><answer>Heart Failure</answer>", True),
        ("  <THINK>x</THINK>\n\n<answer>none</answer>\n", True),
        ("<think>x</think><answer>none</answer> Thanks!", False),
        ("Sure. <think>x</think><answer>none</answer>", False),
        ("<answer>none</answer><think>x</think>", False),
        ("<think></think><answer>none</answer>", False),
        ("<think>x</think><answer> </answer>", False),
        ("<think>x <answer>y</answer></think><answer>none</answer>", False),
        ("<think>x</think>", False),
        ("", False),
    ],
)
def test_has_valid_format(text: str, valid: bool) -> None:
    assert has_valid_format(text) is valid


def test_parse_think() -> None:
    assert parse_think("<think>\n QT 520 ms \n</think><answer>none</answer>") == "QT 520 ms"
    assert parse_think("<answer>none</answer>") is None


def test_boxes_round_trip_and_variants() -> None:
    text = format_box("pleural effusion", [[10, 600, 300, 900], [700, 610, 980, 905]]) + " and " + format_box("nodule", [[1, 2, 3, 4]])
    assert parse_boxes(text) == [("pleural effusion", [[10, 600, 300, 900], [700, 610, 980, 905]]), ("nodule", [[1, 2, 3, 4]])]
    assert parse_boxes("<box>[[1,2,3,4]]</box>") == [("", [[1, 2, 3, 4]])]
    assert parse_boxes("<ref> left  lung </ref> <box>[12.6, 20, 30.2, 40]</box>") == [("left lung", [[13, 20, 30, 40]])]
    assert parse_boxes("<REF>mass</REF><BOX>［［100，200，300，400］］</BOX>") == [("mass", [[100, 200, 300, 400]])]
    assert parse_boxes("<ref>mass</ref><box>[[1, 2, 3]]</box>") == []  # three numbers are not a box
    assert parse_boxes("no boxes here [1, 2, 3, 4]") == []  # outside a box tag nothing is read


def test_docstring_examples() -> None:
    assert doctest.testmod(formats).failed == 0
