"""Read a model's free-text output as a multiple-choice letter, a yes/no, or a VQA answer.

The multiple-choice parser is transparent and conservative: it reads an answer only
where the output *states* one, and otherwise abstains (returns None), which the metrics
score as wrong. It never picks the option most similar to the output.

`parse_choice` looks, in this order, at:

1. ``<answer>...</answer>`` tags (the last word of a medfuse model);
2. ``\\boxed{...}`` (math-style models);
3. stated answers in the text after ``</think>`` (or the whole text): "the answer is (C)",
   "Answer: C", "the correct option is C", "final answer: C", "I would choose C",
   "C is the correct answer", "答案是C", "答案：C", "正确答案为C", "故选C",
   "选项C正确", or one of these followed by the exact text of an option;
4. only when no answer was stated and the output is not a refusal: the whole output, its
   first line or its last line being a lone letter (``C``, ``(C)``, ``C.``, ``**C**``,
   ``Option C``, ``C. <option text>``), or the whole output being exactly one option's
   text (ignoring case, spaces and surrounding punctuation).

An output that only repeats the option list ("A. ...\nB. ...") chooses nothing.
Outside tags and ``\boxed{}``, an answer read from the text is dropped when the text
names options with conflicting polarity: when the option read is itself called wrong
("D) X is wrong, C) Y is right" read as D; "A) no. B) no. C) yes" read as A), or another
option is called right ("B. ..., C is correct" read as B). "D is wrong, C is right" still
reads C.
Within a tier, two different letters (``A and B``, ``答案是A或B``, two boxed letters, "the
answer is A ... the answer is B") make the output ambiguous, and ambiguity abstains. A
letter inside a word never counts ("Answer: Based on ..." is not B, "I think" is not I),
and a lower-case letter counts only where it cannot be an English word (``(c)``, ``c.``,
``c)``, or a line/answer of its own), so "the answer is a bit unclear" abstains.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping

__all__ = ["is_refusal", "normalise_answer", "normalise_option_text", "parse_choice", "parse_yes_no"]

_DEFAULT_LETTERS = "ABCDEFGHIJ"  # MedXpertQA Text has up to ten options (A-J)

# An internal marker for "two different answers were stated" (distinct from None, which
# means "nothing was stated"), so that ambiguity in a strong tier is not overridden by a
# weaker one.
_AMBIGUOUS = "<ambiguous>"

_ANSWER_TAG = re.compile(r"<\s*answer\s*>(.*?)<\s*/\s*answer\s*>", re.S | re.I)
_THINK_END = re.compile(r"<\s*/\s*think\s*>", re.I)
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_LATEX_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_MARKDOWN = re.compile(r"\*\*|__|`|^#+\s*", re.M)

# Phrases after which a model states its answer. Written out one by one on purpose: a
# loose pattern such as "option X" would read "Option A is wrong, ..." as A.
_EN_PRE = (
    r"(?:(?:the|my|our)\s+)?(?:final\s+|correct\s+|right\s+|best\s+|most\s+(?:likely|appropriate|accurate)\s+)?"
    r"answer(?:\s+(?:choice|option))?(?:\s+(?:is|would\s+be|should\s+be|will\s+be|must\s+be))?\s*(?:[:=\-]|\bis\b)?",
    r"(?:the\s+)?(?:correct|right|best|final|most\s+(?:likely|appropriate|accurate))\s+(?:option|choice|response)"
    r"(?:\s+(?:is|would\s+be|should\s+be|will\s+be|must\s+be))?\s*:?",
    r"\b(?:I|we)\s+(?:would\s+|will\s+|'d\s+)?(?:choose|select|pick|go\s+with)(?:\s+(?:option|answer|choice))?\s*:?",
)
_ZH_PRE = (
    r"(?:正确|最终|最佳|标准)?答案(?:应该|应当|应)?(?:是|为|选)?\s*[:]?\s*(?:选项)?",
    r"(?:我|应|应该|应当|故|所以|因此|最终|则)?选(?:择)?(?!项)\s*[:]?",
)
_PRE_MARKER = re.compile("|".join(f"(?:{p})" for p in (*_EN_PRE, *_ZH_PRE)), re.I)
# "C is the correct answer", "option C is correct", "选项C正确", "C项正确". The letter must
# open a clause (checked in `_post_marker_letters`), so "Vitamin D is correct" is not D.
_POST_MARKER = re.compile(
    r"(?P<prefix>\b(?i:option|choice|answer)\s+)?[\(\[]?\b(?P<letter>[A-Z])\b[\)\]]?\s+(?i:is\s+(?:the\s+)?(?:correct|right))\b"
    r"|选项\s*(?P<zh>[A-Za-z])\s*(?:是|为)?\s*(?:正确|对的|最佳)"
    r"|(?<![A-Za-z])(?P<zh2>[A-Z])\s*(?:选项|项)?\s*(?:是|为)?\s*(?:正确|最佳)",
)
_CLAUSE_OPENERS = re.compile(r"(?:^|[.!?:;,\n(。、]|\b(?:so|therefore|thus|hence|then)|因此|所以|故|认为|觉得)\s*$", re.I)
# A letter, possibly in brackets, where a stated answer begins.
_LETTER_AT = re.compile(
    r"\s*(?:(?:option|choice|选项)\s*)?(?P<quote>[\"'“‘])?(?P<open>[\(\[])?\s*(?P<letter>[A-Za-z])\s*(?P<close>[\)\]])?[\"'”’]?",
    re.I,
)
# More letters joined to the first ("A and B", "A/C", "A、B"): several answers.
_MORE_LETTERS = re.compile(r"\s*(?:,|/|&|\band\b|\bor\b|和|或|及|与|、|以及)\s*[\(\[]?\s*([A-Za-z])\s*[\)\]]?(?![A-Za-z])", re.I)
# Words after an upper-case I that make it the pronoun ("the answer is I think B").
_PRONOUN_I = re.compile(r"\s+(?:think|believe|would|will|am|guess|feel|can|cannot|can't|don't|do|need|should|must|suspect|chose|choose)\b", re.I)

# A span that *is* a letter: "C", "(C)", "C.", "Option C", "C. Amoxicillin", "C: text"
# (see `_lone_letter`).
_LONE_LETTER_HEAD = re.compile(
    r"^(?:(?:option|choice|answer|选项|答案)\s*:?\s*)?(?P<open>[\(\[])?\s*(?P<letter>[A-Za-z])\s*(?P<close>[\)\]])?", re.I
)
_LONE_LETTERS = re.compile(
    r"^[\(\[]?[A-Za-z][\)\]]?(?:\s*(?:,|/|&|\band\b|\bor\b|和|或|及|与|、)\s*[\(\[]?[A-Za-z][\)\]]?)+\.?$", re.I
)
# "C. text ..." at the very start of an output: a letter label, then an explanation.
_LEADING_LETTER = re.compile(r"^[\(\[]?(?P<letter>[A-Za-z])(?:[\)\]]\s*[.:]?|[.:、])(?:\s|$)")

_REFUSAL = re.compile(
    r"\b(?:I|we)\s*(?:cannot|can\s*not|can't|am\s+unable\s+to|'m\s+unable\s+to|am\s+not\s+able\s+to|'m\s+not\s+able\s+to|"
    r"won't|will\s+not|must\s+decline\s+to|do\s+not\s+feel\s+comfortable)\s+"
    r"(?:provide|give|offer|answer|help|assist|determine|make|diagnose|choose|select|recommend|respond)"
    r"|\bas\s+an\s+ai\b|\bnot\s+(?:able\s+to\s+)?(?:provide|give)\s+medical\s+advice"
    r"|(?:我|本人)(?:无法|不能|不可以|没办法)(?:提供|回答|给出|作答|诊断|选择)|作为(?:一个)?(?:AI|人工智能)",
    re.I,
)

# An option named at the start of a clause: "D)", "(C)", "B.", "A:", "option C", "C is".
_OPTION_MENTION = re.compile(
    r"(?:^|(?<=[\n,;:.!?。；，]))\s*(?:(?i:option|choice)\s+)?[\(\[]?(?P<letter>[A-Z])"
    r"(?:[\)\]]|[.:](?=\s)|(?=\s+(?:is|was|seems?|looks?)\b))",
    re.MULTILINE,
)
# What a clause says of the option it names; a negative phrase wins ("not correct"). A bare
# "no"/"yes" counts only as the whole verdict of its clause ("A) no. B) no. C) yes"), not
# inside a sentence ("A) no fever").
_POLARITY = re.compile(
    r"(?P<negative>\b(?:wrong|incorrect|false|unlikely|less\s+likely|inappropriate|ruled\s+out|excluded"
    r"|not\s+(?:the\s+)?(?:correct|right|answer|best|likely|appropriate))\b|错误|不正确|不对|排除"
    r"|(?<![\w-])no(?=\s*(?:[,;.!。；，]|$)))"
    r"|(?P<positive>\b(?:right|correct|true|best|the\s+answer|most\s+likely)\b|正确|最佳"
    r"|(?<![\w-])yes(?=\s*(?:[,;.!。；，]|$)))",
    re.IGNORECASE | re.MULTILINE,
)

_OPTION_STRIP = " \t\r\n.。,，;；:：!！?？\"'“”‘’()[]（）【】*_`"


def _prepare(text: str) -> str:
    # NFKC folds full-width letters and punctuation (Ｃ, （, ：) into ASCII; markdown
    # emphasis is dropped so "**C**" and "Answer: **C**" read like "C" and "Answer: C".
    t = unicodedata.normalize("NFKC", text)
    t = _LATEX_WRAP.sub(r"\1", t)
    return _MARKDOWN.sub("", t).strip()


def normalise_option_text(text: str) -> str:
    """The form in which an output is compared with an option's text: NFKC, case-folded,
    single spaces, surrounding punctuation and quotes removed.

    >>> normalise_option_text("  Pulmonary   EMBOLISM. ")
    'pulmonary embolism'
    """
    t = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", t).strip(_OPTION_STRIP)


def is_refusal(text: str) -> bool:
    """True when the output declines to answer ("I cannot provide medical advice", "As an
    AI ...", "我无法提供医疗建议").

    >>> is_refusal("I'm sorry, but I can't provide medical advice.")
    True
    >>> is_refusal("The answer is B.")
    False
    """
    return _REFUSAL.search(unicodedata.normalize("NFKC", text)) is not None


def _valid(letter: str, letters: str) -> str | None:
    up = letter.upper()
    return up if up in letters else None


def _combine(found: Iterable[str | None]) -> str | None:
    """One letter if every reading agrees, _AMBIGUOUS if they disagree, None if none read."""
    letters = {f for f in found if f is not None}
    if _AMBIGUOUS in letters or len(letters) > 1:
        return _AMBIGUOUS
    return letters.pop() if letters else None


def _option_index(options: Mapping[str, str], letters: str) -> dict[str, str]:
    """Normalised option text -> letter (or _AMBIGUOUS when two options read the same)."""
    index: dict[str, str] = {}
    for letter, text in options.items():
        up = letter.strip().upper()
        if up not in letters or not isinstance(text, str):
            continue
        key = normalise_option_text(text)
        if key:
            index[key] = _AMBIGUOUS if key in index and index[key] != up else up
    return index


def _lone_letter(span: str) -> tuple[str, str] | None:
    """(letter, rest) when `span` is a letter label, optionally followed by text after a
    separator: "C", "(c)", "C.", "Option C", "C) text", "C: text". "A patient" is not."""
    m = _LONE_LETTER_HEAD.match(span)
    if m is None or (m.group("open") and not m.group("close")):
        return None
    remainder = span[m.end() :].strip()
    if not remainder.strip(_OPTION_STRIP):
        return m.group("letter"), ""
    if m.group("close") or remainder[0] in ".:、)-":
        return m.group("letter"), remainder.lstrip(".:、)- ")
    return None


def _read_span(span: str, letters: str, by_text: dict[str, str]) -> str | None:
    """Read a span that should *be* an answer: a lone letter (any case), a letter with its
    option text, or exactly one option's text."""
    s = span.strip().strip(" \t\r\n\"'“”‘’")
    if not s:
        return None
    if _LONE_LETTERS.match(s):
        picked = {_valid(x, letters) for x in re.findall(r"(?<![A-Za-z])[A-Za-z](?![A-Za-z])", s)}
        return _combine(picked) if None not in picked else None
    lone = _lone_letter(s)
    if lone:
        letter = _valid(lone[0], letters)
        rest = normalise_option_text(lone[1])
        if letter is not None:
            # "C. Doxycycline" when Doxycycline is option B states two answers.
            other = by_text.get(rest)
            if rest and other is not None and other != letter:
                return _AMBIGUOUS
            return letter
    # "C Amoxicillin": a letter and then exactly its own option text.
    m2 = re.match(r"^([A-Za-z])\s+(.+)$", s, re.S)
    if m2 and _valid(m2.group(1), letters) and by_text.get(normalise_option_text(m2.group(2))) == m2.group(1).upper():
        return m2.group(1).upper()
    return by_text.get(normalise_option_text(s))


def _letter_after(text: str, pos: int, letters: str, by_text: dict[str, str]) -> str | None:
    """The answer stated right after position `pos` (the end of an answer phrase)."""
    m = _LETTER_AT.match(text, pos)
    if m:
        raw = m.group("letter")
        bracketed = bool(m.group("open") and m.group("close"))
        end = m.end() if m.group("close") or m.group("quote") else m.end("letter")
        nxt = text[end : end + 1]
        # The letter must be a token of its own: "Answer: Based on" is not B.
        standalone = bracketed or not (nxt.isascii() and (nxt.isalnum() or nxt == "'"))
        if raw == "I" and _PRONOUN_I.match(text, m.end("letter")):
            standalone = False
        if raw.islower() and not bracketed and nxt not in ("", ".", ")", "]", ":", ",", ";", "\n") and nxt.isascii():
            # a lower-case letter followed by a space is an English word ("answer is a bit")
            standalone = False
        if standalone:
            letter = _valid(raw, letters)
            if letter is None:
                return None
            more = _MORE_LETTERS.match(text, end)
            if more and _valid(more.group(1), letters) not in (None, letter):
                return _AMBIGUOUS
            # "The answer is C. Doxycycline" where Doxycycline is option B: two answers.
            rest = text[end:].lstrip(" .:)-")
            for candidate in (rest.split("\n", 1)[0], re.split(r"(?<=[.。;；])\s", rest, maxsplit=1)[0]):
                other = by_text.get(normalise_option_text(candidate))
                if other is not None and other != letter:
                    return _AMBIGUOUS
            return letter
    # "The answer is Amoxicillin." -> the option whose text follows, exactly.
    rest = text[pos:].lstrip(" :")
    line = rest.split("\n", 1)[0]
    for candidate in (line, re.split(r"(?<=[.。;；])\s", line, maxsplit=1)[0]):
        hit = by_text.get(normalise_option_text(candidate))
        if hit is not None:
            return hit
    return None


def _stated_answers(body: str, letters: str, by_text: dict[str, str]) -> str | None:
    found: list[str | None] = []
    for m in _PRE_MARKER.finditer(body):
        if m.end() > m.start():
            found.append(_letter_after(body, m.end(), letters, by_text))
    found.extend(_post_marker_letters(body, letters))
    return _combine(found)


def _post_marker_letters(body: str, letters: str) -> list[str | None]:
    found: list[str | None] = []
    for m in _POST_MARKER.finditer(body):
        if m.group("letter") and not m.group("prefix") and not _CLAUSE_OPENERS.search(body[: m.start()]):
            continue
        if m.group("zh2") and not _CLAUSE_OPENERS.search(body[: m.start()]):
            continue
        found.append(_valid(m.group("letter") or m.group("zh") or m.group("zh2"), letters))
    return found


def parse_choice(text: str | None, options: Mapping[str, str] | None) -> str | None:
    """The option letter a model's output states, or None (abstain).

    `options` maps letters to option texts (``{"A": "Amoxicillin", ...}``); only its
    letters can be returned. Without options, letters A-J are accepted and option texts
    are not matched. See the module docstring for the rules.

    >>> opts = {"A": "Amoxicillin", "B": "Doxycycline", "C": "Ceftriaxone", "D": "Azithromycin"}
    >>> parse_choice("The answer is (C).", opts)
    'C'
    >>> parse_choice("答案：Ｃ", opts)
    'C'
    >>> parse_choice("  ceftriaxone ", opts)
    'C'
    >>> parse_choice("Answer: Based on the findings, doxycycline is less suitable.", opts) is None
    True
    >>> parse_choice("A and B", opts) is None
    True
    """
    if not text or not text.strip():
        return None
    letters = "".join(sorted({k.strip().upper() for k in options if len(k.strip()) == 1})) if options else _DEFAULT_LETTERS
    by_text = _option_index(options or {}, letters)
    t = _prepare(text)

    # 1. <answer> tags: the declared answer; an unreadable tag abstains.
    tags = _ANSWER_TAG.findall(t)
    if tags:
        return _finish(_combine(_read_span(tag, letters, by_text) or _stated_answers(tag, letters, by_text) for tag in tags))
    # 2. \boxed{...}
    boxed = _BOXED.findall(t)
    if boxed:
        result = _combine(_read_span(b, letters, by_text) for b in boxed)
        if result is not None:
            return _finish(result)
    # Reasoning before </think> may weigh several options; the answer follows it.
    parts = _THINK_END.split(t)
    body = parts[-1].strip() if len(parts) > 1 and parts[-1].strip() else t
    # 3. answers stated in words.
    stated = _stated_answers(body, letters, by_text)
    if stated is not None:
        return _from_text(stated, body, letters)
    if is_refusal(body):
        return None
    # 4. the whole output, its first line or its last line is a lone letter or option text.
    labels = {lone[0].upper() for ln in body.splitlines() if (lone := _lone_letter(ln.strip())) and lone[1]}
    if len(labels) > 1:
        return None  # the output lists options ("A. ...\nB. ...") without choosing one
    whole = _read_span(body, letters, by_text)
    if whole is not None:
        return _from_text(whole, body, letters)
    lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
    readings: list[str | None] = []
    if lines:
        lead = _LEADING_LETTER.match(lines[0])
        if _lone_letter(lines[0]):
            readings.append(_read_span(lines[0], letters, by_text))
        elif lead:
            readings.append(_valid(lead.group("letter"), letters))
        if len(lines) > 1:
            last = _lone_letter(lines[-1])
            if last and not last[1]:
                readings.append(_valid(last[0], letters))
    return _from_text(_combine(readings), body, letters)


def _finish(result: str | None) -> str | None:
    return None if result == _AMBIGUOUS else result


def _option_polarity(body: str, letters: str) -> dict[str, set[str]]:
    """{letter: {"+", "-"}}: what the text says of each option it names, clause by clause
    (a clause runs from one option's mention to the next)."""
    mentions = [(m.group("letter"), m.end()) for m in _OPTION_MENTION.finditer(body) if m.group("letter") in letters]
    said: dict[str, set[str]] = {}
    for k, (letter, start) in enumerate(mentions):
        end = mentions[k + 1][1] if k + 1 < len(mentions) else len(body)
        kinds = {m.lastgroup for m in _POLARITY.finditer(body, start, end)}
        if kinds:
            said.setdefault(letter, set()).add("-" if "negative" in kinds else "+")
    return said


def _contradicted(letter: str | None, body: str, letters: str) -> bool:
    """True when the text calls the option read wrong, or calls another option right."""
    if letter is None or letter == _AMBIGUOUS:
        return False
    said = _option_polarity(body, letters)
    return "-" in said.get(letter, set()) or any("+" in v for k, v in said.items() if k != letter)


def _from_text(result: str | None, body: str, letters: str) -> str | None:
    """`_finish` for an answer read from free text: conflicting polarity abstains."""
    return None if _contradicted(result, body, letters) else _finish(result)


# ---------------------------------------------------------------- yes / no / maybe

_YES_WORDS = {"yes", "y", "true", "correct", "是", "是的", "对", "对的", "有", "正确"}
_NO_WORDS = {"no", "n", "false", "incorrect", "否", "不是", "不", "没有", "无", "不对", "错误"}
_MAYBE_WORDS = {"maybe", "possibly", "uncertain", "可能", "也许", "不确定"}
_YN_MARKER = re.compile(
    r"(?:(?:the\s+)?(?:final\s+|correct\s+)?answer(?:\s+(?:is|would\s+be|should\s+be))?\s*[:=]?|(?:正确|最终)?答案(?:是|为)?\s*[:]?)\s*"
    r"(?P<word>yes|no|maybe|是的|是|否|不是|可能|有|没有)(?![A-Za-z])",
    re.I,
)
_YN_LEADING = re.compile(
    r"^(?:(?P<yes>yes)\b|(?P<no>no)(?=\s*(?:[,.!;:]|$))|(?P<maybe>maybe)(?=\s*(?:[,.!;:]|$))"
    r"|(?P<zh_yes>是的|是|对|有)(?=\s*(?:[,.!;:。]|$))|(?P<zh_no>不是|否|没有|无|不)(?=\s*(?:[,.!;:。]|$))"
    r"|(?P<zh_maybe>可能)(?=\s*(?:[,.!;:。]|$)))",
    re.I,
)


def _yes_no_word(word: str) -> str | None:
    w = word.strip().strip(_OPTION_STRIP).lower()
    if w in _YES_WORDS:
        return "yes"
    if w in _NO_WORDS:
        return "no"
    if w in _MAYBE_WORDS:
        return "maybe"
    return None


# "Yes and no", "yes/no", "是或否": both answers given.
_YN_BOTH = re.compile(r"^(?:yes|no|maybe|是|否)\s*(?:,|/|\band\b|\bor\b|或|和)\s*(?:yes|no|maybe|是|否)\b", re.I)


def _yes_no_span(span: str) -> str | None:
    s = span.strip()
    if _YN_BOTH.match(s):
        return _AMBIGUOUS
    word = _yes_no_word(s)
    if word is not None:
        return word
    m = _YN_LEADING.match(s)
    if m:
        kind = m.lastgroup or ""
        return "yes" if kind.endswith("yes") else "no" if kind.endswith("no") else "maybe"
    return None


def _yes_no_stated(text: str) -> str | None:
    """The answer word after "the answer is" / "答案是" (all occurrences must agree)."""
    return _combine(_yes_no_word(m.group("word")) for m in _YN_MARKER.finditer(text))


def parse_yes_no(text: str | None, allow_maybe: bool = False) -> str | None:
    """``"yes"``, ``"no"`` (or ``"maybe"`` with `allow_maybe`) as the output states it, else None.

    Reads, in order: ``<answer>`` tags, ``\\boxed{}``, "the answer is yes" / "答案是否",
    then the output's first word when it is followed by punctuation or ends the output
    ("No, there is..." is no; "No abnormality is seen" is not read, because its meaning is
    the opposite of "no" for many questions). Both yes and no stated abstains.

    >>> parse_yes_no("Yes, there is a left pleural effusion.")
    'yes'
    >>> parse_yes_no("No abnormality is seen.") is None
    True
    >>> parse_yes_no("<answer>maybe</answer>", allow_maybe=True)
    'maybe'
    >>> parse_yes_no("答案：否")
    'no'
    """
    if not text or not text.strip():
        return None
    t = _prepare(text)
    tags = _ANSWER_TAG.findall(t)
    if tags:
        result = _combine(_yes_no_span(tag) or _yes_no_stated(tag) for tag in tags)
    else:
        result = None
        boxed = _BOXED.findall(t)
        if boxed:
            result = _combine(_yes_no_span(b) for b in boxed)
        if result is None:
            parts = _THINK_END.split(t)
            body = parts[-1].strip() if len(parts) > 1 and parts[-1].strip() else t
            result = _yes_no_stated(body)
            if result is None and not is_refusal(body):
                lines = [ln.strip() for ln in body.splitlines() if ln.strip()]
                readings = [_yes_no_span(lines[0])] if lines else []
                if len(lines) > 1 and _yes_no_word(lines[-1]) is not None:
                    readings.append(_yes_no_word(lines[-1]))
                result = _combine(readings)
    result = _finish(result)
    if result == "maybe" and not allow_maybe:
        return None
    return result


# ---------------------------------------------------------------- VQA answers

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_NUMBER_WORDS = {
    "zero": "0", "none": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20",
}  # fmt: skip


def _strip_punctuation(text: str) -> str:
    # Decimal points and thousands separators inside numbers are kept as numbers
    # ("2.5 cm" stays 2.5, "1,000" becomes 1000); every other punctuation character
    # (Unicode category P*, Chinese included) becomes a space.
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    out = []
    for i, ch in enumerate(text):
        if ch == "." and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit():
            out.append(ch)
        elif unicodedata.category(ch).startswith("P"):
            out.append(" ")
        else:
            out.append(ch)
    return "".join(out)


def normalise_answer(text: str | None, lang: str = "en") -> str:
    """The form of a short answer compared by VQA exact match.

    English: NFKC, lower case, punctuation removed (decimals kept), articles a/an/the
    removed, number words zero-twenty as digits, single spaces. Chinese: NFKC, lower case
    (for Latin letters inside), punctuation and all spaces removed, so that answers are
    compared character by character.

    >>> normalise_answer("The Left Lung.")
    'left lung'
    >>> normalise_answer("two nodules, 2.5 cm")
    '2 nodules 2.5 cm'
    >>> normalise_answer("左肺， 下叶。", lang="zh")
    '左肺下叶'
    """
    if not text:
        return ""
    t = _strip_punctuation(unicodedata.normalize("NFKC", text).lower())
    if lang.startswith("zh"):
        return re.sub(r"\s+", "", t)
    t = _ARTICLES.sub(" ", t)
    words = [_NUMBER_WORDS.get(w, w) for w in t.split()]
    return " ".join(words)
