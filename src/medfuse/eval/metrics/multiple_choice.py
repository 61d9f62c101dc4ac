"""Multiple-choice accuracy with abstentions counted and scored wrong.

An abstention (the parser returned None: nothing stated, ambiguous, a refusal) is never
mapped to an option; it lowers ``accuracy`` like a wrong answer and is reported on its
own as ``abstention_rate``. ``answered_accuracy`` (accuracy over the answered items only)
is given for diagnosis of a model's behaviour, not as the headline number.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

__all__ = ["ABSTAIN", "mc_metrics"]

ABSTAIN = "abstain"  # the column of abstentions in the confusion table


def mc_metrics(parsed: Sequence[str | None], gold: Sequence[str]) -> dict[str, Any]:
    """Accuracy (abstentions wrong), abstention rate and a confusion table.

    Letters are compared case-insensitively after stripping spaces. Returns n, n_correct,
    n_abstained, accuracy, abstention_rate, answered_accuracy (None when nothing was
    answered) and confusion {gold letter: {predicted letter or "abstain": count}}.

    >>> m = mc_metrics(["A", None, "c", "B"], ["A", "B", "C", "D"])
    >>> m["accuracy"], m["abstention_rate"], m["answered_accuracy"]
    (0.5, 0.25, 0.6666666666666666)
    """
    if len(parsed) != len(gold):
        raise ValueError(f"parsed and gold differ in length ({len(parsed)} vs {len(gold)})")
    n = len(gold)
    n_correct = n_abstained = 0
    confusion: dict[str, Counter] = {}
    for p, g in zip(parsed, gold, strict=True):
        g_key = str(g).strip().upper()
        if p is None:
            n_abstained += 1
            p_key = ABSTAIN
        else:
            p_key = str(p).strip().upper()
            n_correct += p_key == g_key
        confusion.setdefault(g_key, Counter())[p_key] += 1
    answered = n - n_abstained
    return {
        "n": n,
        "n_correct": n_correct,
        "n_abstained": n_abstained,
        "accuracy": n_correct / n if n else float("nan"),
        "abstention_rate": n_abstained / n if n else float("nan"),
        "answered_accuracy": n_correct / answered if answered else None,
        "confusion": {g: dict(sorted(c.items())) for g, c in sorted(confusion.items())},
    }
