"""The answer parsers read what a model states and abstain on everything else."""

from __future__ import annotations

import doctest

import pytest

from medfuse.eval import parsers
from medfuse.eval.parsers import is_refusal, normalise_answer, parse_choice, parse_yes_no

OPTS = {"A": "Amoxicillin", "B": "Doxycycline", "C": "Ceftriaxone", "D": "Azithromycin"}
ZH_OPTS = {"A": "肺炎", "B": "心力衰竭", "C": "肺癌", "D": "气胸"}
TEN = {k: f"choice {k.lower()}" for k in "ABCDEFGHIJ"}  # MedXpertQA Text: A-J

# (output, options, expected letter or None = abstain)
CHOICE_TABLE: list[tuple[str, dict[str, str], str | None]] = [
    # stated in the usual English forms
    ("The answer is (C).", OPTS, "C"),
    ("the answer is C", OPTS, "C"),
    ("Answer: D", OPTS, "D"),
    ("**Answer:** B", OPTS, "B"),
    ("Final answer: A. Amoxicillin", OPTS, "A"),
    ("The correct option is C", OPTS, "C"),
    ("The correct answer is: B) Doxycycline", OPTS, "B"),
    ("After weighing the findings, I would choose D.", OPTS, "D"),
    ("Therefore, C is the correct answer.", OPTS, "C"),
    ("Option B is correct because the organism is atypical.", OPTS, "B"),
    ("The answer is 'A'.", OPTS, "A"),
    ("The best answer is option D", OPTS, "D"),
    # machine formats
    ("\\boxed{C}", OPTS, "C"),
    ("Reasoning... so the final answer is $\\boxed{\\text{B}}$", OPTS, "B"),
    ("<think>A is tempting, but B covers atypicals.</think><answer>B</answer>", OPTS, "B"),
    ("<answer>(d)</answer>", OPTS, "D"),
    ("<think>Maybe A. Maybe C.</think>\nThe answer is C.", OPTS, "C"),
    # lone letters, lower case, full width
    ("C", OPTS, "C"),
    ("c", OPTS, "C"),
    ("(b)", OPTS, "B"),
    ("D.", OPTS, "D"),
    ("Ｃ", OPTS, "C"),
    ("**A**", OPTS, "A"),
    ("Option C", OPTS, "C"),
    ("B. Doxycycline is preferred for atypical organisms.", OPTS, "B"),
    ("Doxycycline covers atypical organisms.\n\nB", OPTS, "B"),
    ("the answer is (c)", OPTS, "C"),
    ("answer: c", OPTS, "C"),
    # exact option text, any case and spacing
    ("ceftriaxone", OPTS, "C"),
    ("  AZITHROMYCIN. ", OPTS, "D"),
    ("The answer is Amoxicillin.", OPTS, "A"),
    # Chinese
    ("答案是C", OPTS, "C"),
    ("答案：B", OPTS, "B"),
    ("答案:（D）", OPTS, "D"),
    ("正确答案为A。", OPTS, "A"),
    ("根据症状分析，故选C。", OPTS, "C"),
    ("因此，选项B正确。", ZH_OPTS, "B"),
    ("心力衰竭", ZH_OPTS, "B"),
    ("答案是c", OPTS, "C"),
    # letters inside words or English words that look like letters: abstain
    ("Answer: Based on the findings, doxycycline is less suitable.", OPTS, None),
    ("The answer is a bit unclear from the vignette.", OPTS, None),
    ("A 45-year-old man should receive empirical therapy.", OPTS, None),
    ("The answer is I think H", TEN, None),
    ("Vitamin D is correct for this patient.", {"A": "x", "D": "y"}, None),
    ("Consider atypical coverage.", OPTS, None),
    # two different letters asserted: abstain
    ("A and B", OPTS, None),
    ("The answer is A or C.", OPTS, None),
    ("答案是A和B", OPTS, None),
    ("\\boxed{A} or maybe \\boxed{B}", OPTS, None),
    ("The answer is A. On reflection, the answer is B.", OPTS, None),
    ("The answer is C. Doxycycline", OPTS, None),  # letter and option text disagree
    # options named with conflicting polarity: the option read is called wrong, or another right
    ("D) Azithromycin is wrong, C) Ceftriaxone is right", OPTS, None),
    ("D) X is wrong, C) Y is right", OPTS, None),
    ("B. Doxycycline is incorrect here.", OPTS, None),
    ("The answer is D. Option D is not correct.", OPTS, None),
    ("C\nB is the best choice for atypicals.", OPTS, None),
    ("A) no. B) no. C) yes", OPTS, None),  # a verdict per option: not the first letter
    ("A: no, B: no, C: yes, D: no", OPTS, None),
    ("A) no fever, so amoxicillin.", OPTS, "A"),  # "no" inside a sentence is not a verdict
    # ... while one option called wrong and another stated right reads the right one
    ("D is wrong, C is right", OPTS, "C"),
    ("Option D is incorrect; option C is correct.", OPTS, "C"),
    # refusals abstain
    ("I cannot provide medical advice. Please consult a doctor.", OPTS, None),
    ("I'm sorry, but as an AI I can't choose an option for a clinical decision.", OPTS, None),
    ("我无法提供医疗建议，请咨询医生。", ZH_OPTS, None),
    # nothing stated, or not an option
    ("", OPTS, None),
    ("The answer is E.", OPTS, None),  # E is not an option here
    ("<answer>I am not sure</answer> but probably A", OPTS, None),  # an unreadable answer tag abstains
    ("Amoxicillin or doxycycline could both work.", OPTS, None),  # no nearest-option guessing
    # an echo of the option list chooses nothing; first and last lines must agree
    ("A. Amoxicillin\nB. Doxycycline\nC. Ceftriaxone\nD. Azithromycin", OPTS, None),
    ("B\nA is wrong because it misses atypical organisms.", OPTS, "B"),
    ("B\n\nExplanation: doxycycline covers atypicals.\n\nC", OPTS, None),
    ("I think the most likely answer is B because of atypical coverage.", OPTS, "B"),
    # ten options: I and J are letters when stated as answers
    ("The answer is I.", TEN, "I"),
    ("Answer: J", TEN, "J"),
]


def test_choice_table_is_large_enough() -> None:
    assert len(CHOICE_TABLE) >= 40
    assert any(exp is None for *_, exp in CHOICE_TABLE) and any("答案" in t for t, *_ in CHOICE_TABLE)


@pytest.mark.parametrize(("output", "options", "expected"), CHOICE_TABLE, ids=[t[:40] for t, *_ in CHOICE_TABLE])
def test_parse_choice_table(output: str, options: dict[str, str], expected: str | None) -> None:
    assert parse_choice(output, options) == expected


def test_parse_choice_without_options_accepts_letters_only() -> None:
    assert parse_choice("The answer is B", {}) == "B"
    assert parse_choice("Amoxicillin", {}) is None


def test_duplicate_option_texts_never_resolve_by_text() -> None:
    opts = {"A": "None of the above", "B": "none of the above ", "C": "Aspirin"}
    assert parse_choice("None of the above", opts) is None
    assert parse_choice("aspirin", opts) == "C"


YES_NO_TABLE: list[tuple[str, bool, str | None]] = [
    ("Yes", False, "yes"),
    ("yes.", False, "yes"),
    ("Yes, there is a left pleural effusion.", False, "yes"),
    ("No.", False, "no"),
    ("No, the heart is normal in size.", False, "no"),
    ("No abnormality is seen.", False, None),  # "no" here is not an answer word
    ("The answer is yes.", False, "yes"),
    ("<answer>no</answer>", False, "no"),
    ("<think>maybe, maybe not</think><answer>yes</answer>", False, "yes"),
    ("\\boxed{No}", False, "no"),
    ("Maybe.", True, "maybe"),
    ("Maybe.", False, None),  # maybe is not an answer for yes/no questions
    ("The answer is maybe", True, "maybe"),
    ("Yes and no.", False, None),
    ("答案：否", False, "no"),
    ("是的，可见胸腔积液。", False, "yes"),
    ("不是", False, "no"),
    ("I cannot answer that.", False, None),
    ("", False, None),
    ("The study suggests that it reduces mortality.", True, None),
]


@pytest.mark.parametrize(("output", "allow_maybe", "expected"), YES_NO_TABLE, ids=[t[0][:30] or "empty" for t in YES_NO_TABLE])
def test_parse_yes_no_table(output: str, allow_maybe: bool, expected: str | None) -> None:
    assert parse_yes_no(output, allow_maybe=allow_maybe) == expected


def test_normalise_answer_en() -> None:
    assert normalise_answer("The Left Lung.") == "left lung"
    assert normalise_answer("X-ray") == normalise_answer("x_ray.")
    assert normalise_answer("Two") == "2"
    assert normalise_answer("an  effusion!") == "effusion"
    assert normalise_answer("1,000 mg") == "1000 mg"
    assert normalise_answer("2.5 cm") == "2.5 cm"
    assert normalise_answer(None) == ""


def test_normalise_answer_zh() -> None:
    assert normalise_answer("左肺， 下叶。", lang="zh") == "左肺下叶"
    assert normalise_answer("ＣＴ", lang="zh") == "ct"


def test_refusal_detection() -> None:
    assert is_refusal("As an AI language model, I cannot diagnose patients.")
    assert is_refusal("作为AI，我不能提供诊断。")
    assert not is_refusal("Pneumonia is the most likely diagnosis.")


def test_docstring_examples() -> None:
    assert doctest.testmod(parsers).failed == 0
