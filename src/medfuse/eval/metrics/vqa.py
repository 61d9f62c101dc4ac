"""VQA scores: closed-question accuracy and open-question exact match, token recall and F1.

Both answers are normalised by `medfuse.eval.parsers.normalise_answer` (lower case,
punctuation, articles, number words; Chinese without spaces). Tokens are words for
English and characters for Chinese: Chinese answers have no spaces, and two segmenters
can cut the same answer differently, while characters compare the same way every time.

- ``exact``: the normalised answers are equal.
- ``recall``: the share of gold tokens found in the prediction (counted with
  multiplicity), the "open recall" of LLaVA-Med and MedEvalKit: long answers that contain
  the gold answer score 1.
- ``f1``: the SQuAD token F1, which also penalises extra tokens.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from medfuse.eval.parsers import normalise_answer

__all__ = ["answer_tokens", "vqa_metrics", "vqa_scores"]


def answer_tokens(text: str | None, lang: str = "en") -> list[str]:
    """The tokens of a normalised answer: words (English) or characters (Chinese).

    >>> answer_tokens("The two nodules.")
    ['2', 'nodules']
    >>> answer_tokens("左肺下叶", lang="zh")
    ['左', '肺', '下', '叶']
    """
    norm = normalise_answer(text, lang)
    return list(norm) if lang.startswith("zh") else norm.split()


def vqa_scores(pred: str | None, gold: str, closed: bool, lang: str = "en") -> dict[str, float]:
    """Per-item scores: exact (0/1), recall and f1 (0-1).

    `closed` is accepted so that callers pass the question type; closed questions are
    scored by ``exact`` in `vqa_metrics`, open ones by all three.

    >>> vqa_scores("Yes", "yes", closed=True)["exact"]
    1.0
    >>> s = vqa_scores("a nodule in the left lung", "left lung", closed=False)
    >>> s["exact"], s["recall"], round(s["f1"], 3)
    (0.0, 1.0, 0.667)
    """
    p_tokens, g_tokens = answer_tokens(pred, lang), answer_tokens(gold, lang)
    exact = float(normalise_answer(pred, lang) == normalise_answer(gold, lang))
    if not g_tokens or not p_tokens:
        both_empty = float(not g_tokens and not p_tokens)
        return {"exact": exact, "recall": both_empty, "f1": both_empty}
    overlap = sum((Counter(p_tokens) & Counter(g_tokens)).values())
    recall = overlap / len(g_tokens)
    precision = overlap / len(p_tokens)
    f1 = 2 * precision * recall / (precision + recall) if overlap else 0.0
    return {"exact": exact, "recall": recall, "f1": f1}


def _fields(item: Mapping[str, Any] | Sequence[Any]) -> tuple[str | None, str, bool, str]:
    if isinstance(item, Mapping):
        return item.get("pred"), str(item["gold"]), bool(item["closed"]), str(item.get("lang", "en"))
    pred, gold, closed, *rest = item
    return pred, str(gold), bool(closed), str(rest[0]) if rest else "en"


def vqa_metrics(items: Iterable[Mapping[str, Any] | Sequence[Any]]) -> dict[str, Any]:
    """Aggregate VQA metrics over items ``{"pred", "gold", "closed", "lang"?}`` (or tuples
    ``(pred, gold, closed[, lang])``).

    Returns closed_accuracy (mean exact over closed items), open_exact, open_recall,
    open_f1 (means over open items), overall (mean exact over all items), n_closed and
    n_open; a group without items gives None.

    >>> vqa_metrics([("yes", "yes", True), ("no", "yes", True), ("left lung base", "left lung", False)])["open_recall"]
    1.0
    """
    closed_exact: list[float] = []
    open_scores: list[dict[str, float]] = []
    for item in items:
        pred, gold, closed, lang = _fields(item)
        s = vqa_scores(pred, gold, closed, lang)
        if closed:
            closed_exact.append(s["exact"])
        else:
            open_scores.append(s)

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    every_exact = closed_exact + [s["exact"] for s in open_scores]
    return {
        "closed_accuracy": mean(closed_exact),
        "open_exact": mean([s["exact"] for s in open_scores]),
        "open_recall": mean([s["recall"] for s in open_scores]),
        "open_f1": mean([s["f1"] for s in open_scores]),
        "overall": mean(every_exact),
        "n_closed": len(closed_exact),
        "n_open": len(open_scores),
    }
