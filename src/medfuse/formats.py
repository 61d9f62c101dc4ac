"""The text formats of DESIGN.md: reasoning + answer tags, and MedRegA region boxes.

Every part of medfuse that writes or reads model text goes through these functions:
the task builders write with `format_answer` / `format_box`, and the GRPO rewards, the
model output parser and the evaluation kit read with `parse_answer_set`, `parse_think`,
`has_valid_format` and `parse_boxes`. They are pure functions (no I/O, no state).

Reading is lenient where a model's slip does not change the meaning (tag case, spaces
around tags, full-width punctuation such as ``；`` ``，`` ``［`` ``］``, Chinese list
separators ``、``) and strict where it does: an answer without an ``<answer>`` tag is not
read as an answer (`parse_answer_set` returns None), and `has_valid_format` accepts only
``<think>...</think><answer>...</answer>`` with nothing else around them.

>>> format_answer(["Pneumonia", "Sepsis"])
'<answer>Pneumonia; Sepsis</answer>'
>>> parse_answer_set("<think>fever, consolidation</think><answer>Pneumonia；sepsis</answer>")
['Pneumonia', 'sepsis']
>>> parse_boxes(format_box("nodule", [[10, 20, 30, 40]]))
[('nodule', [[10, 20, 30, 40]])]
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the panel is only needed for its lookup(); no import cost at runtime
    from medfuse.knowledge.panel import Panel

__all__ = [
    "NONE_ANSWER",
    "cjk_share",
    "has_cjk",
    "format_answer",
    "format_box",
    "has_valid_format",
    "parse_answer_set",
    "parse_boxes",
    "parse_think",
    "text_language",
]

NONE_ANSWER = "none"  # the empty diagnosis set, `<answer>none</answer>` (DESIGN.md)

# Words that mean "no disease" inside an answer tag, in English and Chinese.
_EMPTY_SET_WORDS = frozenset({"none", "no disease", "no diseases", "nothing", "无", "没有", "无疾病", "正常"})

_THINK = re.compile(r"<\s*think\s*>(.*?)<\s*/\s*think\s*>", re.S | re.I)
_ANSWER = re.compile(r"<\s*answer\s*>(.*?)<\s*/\s*answer\s*>", re.S | re.I)
_ANY_TAG = re.compile(r"<\s*/?\s*(?:think|answer)\s*>", re.I)
_VALID = re.compile(
    r"\s*<\s*think\s*>(?P<think>.*?)<\s*/\s*think\s*>\s*<\s*answer\s*>(?P<answer>.*?)<\s*/\s*answer\s*>\s*",
    re.S | re.I,
)
# Separators between names in an answer set: ';' (the canonical one), ',', and the Chinese
# enumeration comma; full-width '；' and '，' become ';' and ',' under NFKC. Newlines too,
# because models sometimes list one disease per line.
_SET_SEPARATORS = re.compile(r"[;,、\n]")
# Characters stripped from both ends of one name ("Pneumonia." -> "Pneumonia").
_NAME_STRIP = " \t\r\n.。:：;；,，、\"'“”‘’*-•"

_REF_BOX = re.compile(
    r"(?:<\s*ref\s*>(?P<label>.*?)<\s*/\s*ref\s*>\s*)?<\s*box\s*>(?P<box>.*?)<\s*/\s*box\s*>",
    re.S | re.I,
)
_NUMBER = r"[-+]?\d+(?:\.\d*)?"
# One box: four numbers in square (or round) brackets, separated by commas or spaces.
_ONE_BOX = re.compile(
    rf"[\[(]\s*({_NUMBER})\s*[, ]\s*({_NUMBER})\s*[, ]\s*({_NUMBER})\s*[, ]\s*({_NUMBER})\s*[\])]"
)


def _nfkc(text: str) -> str:
    # NFKC folds full-width letters, digits and punctuation (Ａ, ；, ［) to ASCII so one set
    # of patterns serves English and Chinese outputs.
    return unicodedata.normalize("NFKC", text)


def _last_answer(text: str) -> str | None:
    tags = _ANSWER.findall(_nfkc(text))
    return tags[-1] if tags else None


def parse_answer_set(text: str, panel: Panel | None = None) -> list[str] | None:
    """The names inside the last ``<answer>`` tag, or None when there is no answer tag.

    Names are split on ``;`` (also ``；``, ``,``, ``，``, ``、`` and newlines), trimmed and
    de-duplicated in order. ``none`` (or an empty tag, ``无``, ``没有``) is the empty set.
    With a `panel`, each name is mapped to the panel's canonical name through
    ``panel.lookup`` (synonyms, case, Chinese names); names the panel does not know are
    kept as written, so that a wrong answer still counts against the prediction.

    >>> parse_answer_set("<answer>Atrial Fibrillation;Hypertension</answer>")
    ['Atrial Fibrillation', 'Hypertension']
    >>> parse_answer_set("<ANSWER> none </ANSWER>")
    []
    >>> parse_answer_set("Pneumonia") is None
    True
    >>> parse_answer_set("<answer>肺炎、脓毒症、肺炎</answer>")
    ['肺炎', '脓毒症']
    """
    content = _last_answer(text)
    if content is None:
        return None
    content = content.strip()
    if content.strip(_NAME_STRIP).lower() in _EMPTY_SET_WORDS or not content.strip(_NAME_STRIP):
        return []
    names: list[str] = []
    seen: set[str] = set()
    for part in _SET_SEPARATORS.split(content):
        name = re.sub(r"\s+", " ", part.strip(_NAME_STRIP))
        if not name:
            continue
        if panel is not None:
            disease = panel.lookup(name)
            if disease is not None:
                name = disease.name
        # De-duplicate case-insensitively: "Sepsis; sepsis" is one answer, not two.
        key = name.casefold()
        if key not in seen:
            seen.add(key)
            names.append(name)
    return names


def format_answer(names: Iterable[str]) -> str:
    """The answer tag for a set of names: ``<answer>A; B</answer>``, or ``<answer>none</answer>``.

    >>> format_answer([])
    '<answer>none</answer>'
    >>> format_answer(["Sepsis", "Pneumonia", "Sepsis"])
    '<answer>Sepsis; Pneumonia</answer>'
    """
    unique: list[str] = []
    for n in names:
        n = n.strip()
        if n and n not in unique:
            unique.append(n)
    return f"<answer>{'; '.join(unique) if unique else NONE_ANSWER}</answer>"


def parse_think(text: str) -> str | None:
    """The stripped content of the first ``<think>`` block, or None when there is none.

    >>> parse_think("<think> QT is long. </think><answer>none</answer>")
    'QT is long.'
    >>> parse_think("<answer>none</answer>") is None
    True
    """
    m = _THINK.search(_nfkc(text))
    return None if m is None else m.group(1).strip()


def has_valid_format(text: str) -> bool:
    """True when `text` is exactly ``<think>...</think><answer>...</answer>``.

    Whitespace around and between the tags and the case of the tag names are tolerated;
    both parts must be non-empty, and neither may contain another think/answer tag, and
    nothing may stand before ``<think>`` or after ``</answer>``.

    >>> has_valid_format("<think>AF on ECG</think>\\n<answer>Atrial Fibrillation</answer>")
    True
    >>> has_valid_format("<answer>Atrial Fibrillation</answer>")
    False
    >>> has_valid_format("Sure! <think>x</think><answer>none</answer>")
    False
    >>> has_valid_format("<think>x</think><answer>none</answer><answer>Sepsis</answer>")
    False
    """
    m = _VALID.fullmatch(_nfkc(text))
    if m is None:
        return False
    think, answer = m.group("think"), m.group("answer")
    if not think.strip() or not answer.strip():
        return False
    return not (_ANY_TAG.search(think) or _ANY_TAG.search(answer))


def _to_int(number: str) -> int:
    # Grid coordinates are integers; a model that writes 12.0 or 12.6 means 12 or 13.
    return int(float(number) + 0.5) if float(number) >= 0 else -int(-float(number) + 0.5)


def parse_boxes(text: str) -> list[tuple[str, list[list[int]]]]:
    """Every ``<ref>label</ref><box>[[x1, y1, x2, y2], ...]</box>`` in order of appearance.

    A ``<box>`` without a preceding ``<ref>`` gets the label ``""``. Inside a box tag, each
    group of four numbers in brackets is one box (``[[a,b,c,d],[e,f,g,h]]`` or a single
    flat ``[a,b,c,d]``); numbers are rounded to integers and kept as written otherwise
    (no clipping, no re-ordering: scoring decides what a reversed box is worth). A box
    tag without a readable box yields no entry.

    >>> parse_boxes("<ref>effusion</ref><box>[[10, 600, 300, 900], [700,610,980,905]]</box>")
    [('effusion', [[10, 600, 300, 900], [700, 610, 980, 905]])]
    >>> parse_boxes("The nodule is at <box>［120，340，180，400］</box>.")
    [('', [[120, 340, 180, 400]])]
    >>> parse_boxes("<ref>mass</ref><box>somewhere</box>")
    []
    """
    found: list[tuple[str, list[list[int]]]] = []
    for m in _REF_BOX.finditer(_nfkc(text)):
        boxes = [[_to_int(v) for v in g] for g in _ONE_BOX.findall(m.group("box"))]
        if boxes:
            label = re.sub(r"\s+", " ", (m.group("label") or "").strip())
            found.append((label, boxes))
    return found


def format_box(label: str, boxes: Sequence[Sequence[int]]) -> str:
    """The MedRegA text for a label and its boxes (0-999 grid integers).

    >>> format_box("pleural effusion", [[10, 600, 300, 900], [700, 610, 980, 905]])
    '<ref>pleural effusion</ref><box>[[10, 600, 300, 900], [700, 610, 980, 905]]</box>'
    """
    inner = ", ".join("[" + ", ".join(str(int(v)) for v in b) + "]" for b in boxes)
    return f"<ref>{label}</ref><box>[{inner}]</box>"


_BASIC_CJK = re.compile(r"[\u4e00-\u9fff]")  # CJK unified ideographs, the basic block


def has_cjk(text: str) -> bool:
    """Whether `text` holds any CJK ideograph (basic block): the quick test of whether a
    note, target or question is Chinese, where one Chinese word is enough to tell.

    >>> has_cjk("BNP 高"), has_cjk("BNP high")
    (True, False)
    """
    return _BASIC_CJK.search(text) is not None


# CJK unified ideographs (the basic block and extension A): the script of a Chinese text.
_CJK_IDEOGRAPH = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_LATIN_LETTER = re.compile(r"[A-Za-z]")
# A text is Chinese from this share of ideographs among its letters on. Chinese medical
# text keeps Latin codes and drug names ('心率（心动过速）、BNP') but stays far above it
# (>= 0.75 in the Chinese diagnosis targets of `medfuse tasks`); English text with a
# quoted Chinese term stays far below it.
ZH_SHARE = 0.3


def cjk_share(text: str) -> float:
    """The share of CJK ideographs among the letters (ideographs and Latin letters) of
    `text`; 0.0 for a text with neither.

    >>> cjk_share("心率 120 (high)"), cjk_share("heart rate 120"), cjk_share("120")
    (0.3333333333333333, 0.0, 0.0)
    """
    ideographs = len(_CJK_IDEOGRAPH.findall(text))
    letters = ideographs + len(_LATIN_LETTER.findall(text))
    return ideographs / letters if letters else 0.0


def text_language(text: str) -> str | None:
    """'zh' or 'en', the language `text` is written in by its script (see `ZH_SHARE`), or
    None for a text without letters.

    >>> text_language("患者男性，56岁，长期服用 levothyroxine。"), text_language("No abnormality."), text_language("12.5")
    ('zh', 'en', None)
    """
    if not _CJK_IDEOGRAPH.search(text) and not _LATIN_LETTER.search(text):
        return None
    return "zh" if cjk_share(text) >= ZH_SHARE else "en"
