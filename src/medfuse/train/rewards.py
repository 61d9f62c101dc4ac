"""GRPO reward functions: Jaccard over the answer set, format, and Hungarian box IoU.

Each reward is a plain function ``(completions, **columns) -> list[float | None]`` in
TRL's reward-function convention: `completions` holds one model output per sample, as a
string or in TRL's conversational form (``[{"role": "assistant", "content": str}]``); the
dataset columns come as keyword lists, one value per completion; extra keywords (TRL
passes ``prompts``, ``completion_ids``, ``trainer_state``, ...) are ignored; None means
"this reward does not apply to this sample" (TRL leaves it out of the weighted sum).

- `jaccard_reward`: |pred ∩ gold| / |pred ∪ gold| over panel disease keys (MedTVT-R1).
- `format_reward`: 1.0 when `medfuse.formats.has_valid_format` accepts the text.
- `box_iou_reward`: Hungarian-matched IoU of predicted and gold boxes, label by label,
  normalised by max(n_pred, n_gold) (MedRegA region tasks).
- `citation_reward`: per rationale line ("Heart failure: ... [E3]"), the share of its
  `[Ek]` citations that name an item of the prompt's numbered evidence which the panel
  ties to that disease (0 for a line that could cite and does not).
- `consistency_reward`: 1.0 when every disease of the decision (the gold set in the
  prompt) has a rationale line and no sentence argues for another disease
  (`medfuse.model.faithfulness.check_consistency`), minus a share per problem.
- `REWARDS` / `DEFAULT_WEIGHTS` / `combined_reward`: the registry the GRPO stage sums.

Text is read with `medfuse.formats` only, so rewards, the model's output parser and the
evaluation kit agree on what an answer is.

>>> out = "<think>irregular RR, no P waves</think><answer>AF; Pneumonia</answer>"
>>> jaccard_reward([out], answer_diseases=[["atrial_fibrillation"]]), format_reward([out])
([0.5], [1.0])
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

from scipy.optimize import linear_sum_assignment

from medfuse.eval.metrics.grounding import iou_matrix
from medfuse.formats import (
    _last_answer,
    has_valid_format,
    parse_answer_set,
    parse_boxes,
)
from medfuse.knowledge.panel import Panel, load_panel, normalise_term

__all__ = [
    "DEFAULT_WEIGHTS",
    "REGION_TASKS",
    "REWARDS",
    "box_iou_reward",
    "citation_reward",
    "combined_reward",
    "completion_text",
    "consistency_reward",
    "format_reward",
    "jaccard_reward",
]

RewardFn = Callable[..., list[float | None]]

# Tasks whose answer is expected to contain boxes (`task` column values). For these a gold
# without boxes means "nothing to box": predicting no box earns 1.0, any box 0.0. Not
# region_to_text: there the box is in the prompt and the answer is text.
REGION_TASKS = frozenset({"text_to_region", "grounded_report"})


def completion_text(completion: str | Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> str:
    """The text of one completion: a string as is, or the content of the last message of
    TRL's conversational form (a content given as a list of parts has its text parts joined).

    >>> completion_text([{"role": "assistant", "content": "<answer>none</answer>"}])
    '<answer>none</answer>'
    >>> completion_text({"role": "assistant", "content": [{"type": "text", "text": "hi"}]})
    'hi'
    """
    if isinstance(completion, str):
        return completion
    message = completion if isinstance(completion, Mapping) else (completion[-1] if completion else {})
    content = message.get("content") or ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, Mapping))


@cache
def _default_panel() -> Panel:
    return load_panel()


def _panel(panel: Panel | str | Path | None) -> Panel:
    if panel is None:
        return _default_panel()
    return panel if isinstance(panel, Panel) else load_panel(panel)


def _keys(names: Sequence[str], panel: Panel) -> set[str]:
    # Panel diseases become their key (synonyms, Chinese names and case all map to one);
    # a name the panel does not know stays, normalised, so that it still counts as wrong.
    out: set[str] = set()
    for name in names:
        disease = panel.lookup(name)
        out.add(disease.key if disease is not None else normalise_term(name))
    return out


def _gold_list(value: Any) -> list[Any] | None:
    # A dataset column holds a list, or a JSON string of one (Parquet/CSV-friendly).
    if value is None:
        return None
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else []
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list (or a JSON string of one), got {type(value).__name__}")
    return list(value)


def jaccard_reward(
    completions: Sequence[Any],
    answer_diseases: Sequence[Sequence[str] | str | None],
    *,
    panel: Panel | str | Path | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """Jaccard index of the predicted and gold disease sets, one per completion.

    The prediction is the last ``<answer>`` tag read by `medfuse.formats.parse_answer_set`
    (separators ``;`` ``,`` ``、``, case, duplicates, ``none``); every name is mapped to
    its panel key (synonyms and Chinese names included), and unknown names count as wrong
    predictions. 0.0 without an ``<answer>`` tag; 1.0 when both sets are empty. Gold
    entries are panel keys (names and synonyms work too); a None gold gives None.
    `panel` defaults to the bundled panel.

    >>> jaccard_reward(
    ...     ["<think>t</think><answer>房颤；HTN, hypertension</answer>",
    ...      "<think>t</think><answer>none</answer>", "pneumonia"],
    ...     answer_diseases=[["atrial_fibrillation", "hypertension"], [], ["pneumonia"]])
    [1.0, 1.0, 0.0]
    """
    def score(text: str, gold: set[str], p: Panel) -> float:
        names = parse_answer_set(text)
        if names is None:
            return 0.0
        pred = _keys(names, p)
        union = pred | gold
        return len(pred & gold) / len(union) if union else 1.0

    return _scored_against_gold(completions, answer_diseases, panel, score)


def _scored_against_gold(completions: Sequence[Any], answer_diseases: Sequence[Sequence[str] | str | None],
                         panel: Panel | str | Path | None, score: Callable[[str, set[str], Panel], float]
                         ) -> list[float | None]:
    """`score(text, gold panel keys, panel)` per completion; None where the gold is None."""
    if len(answer_diseases) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(answer_diseases)} answer_diseases")
    p = _panel(panel)
    out: list[float | None] = []
    for completion, gold_value in zip(completions, answer_diseases, strict=True):
        gold_names = _gold_list(gold_value)
        out.append(None if gold_names is None else score(completion_text(completion), _keys([str(g) for g in gold_names], p), p))
    return out


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
    """1.0 when a completion is exactly ``<think>...</think><answer>...</answer>``, else 0.0.

    Same rule as `medfuse.formats.has_valid_format`: tag case and whitespace around the
    tags are tolerated, both parts must be non-empty, nothing may stand outside them.
    Box annotations belong inside ``<answer>`` (they are text there); after ``</answer>``
    they make the format invalid.

    >>> format_reward(["<think>x</think> <answer><ref>nodule</ref><box>[[1, 2, 3, 4]]</box></answer>",
    ...                "<think>x</think><answer>none</answer><ref>nodule</ref><box>[[1, 2, 3, 4]]</box>",
    ...                "<answer>none</answer>"])
    [1.0, 0.0, 0.0]
    """
    return [1.0 if has_valid_format(completion_text(c)) else 0.0 for c in completions]


def _label(label: str) -> str:
    return normalise_term(label)  # case, width, whitespace, '_' and '-' insensitive


def _gold_box_list(value: Any) -> list[tuple[str, list[float]]]:
    """Gold boxes as ``(normalised label, box)``: from a list (or JSON string) of
    ``{"label": str, "box": [x1, y1, x2, y2] | [[...], ...]}`` (``"boxes"`` works too), or
    of ``(label, boxes)`` pairs as `parse_boxes` returns them."""
    out: list[tuple[str, list[float]]] = []
    for item in _gold_list(value) or []:
        if isinstance(item, Mapping):
            label, boxes = item.get("label", ""), item.get("box", item.get("boxes"))
        else:
            label, boxes = item
        if boxes is None:
            raise ValueError(f"gold box entry without 'box': {item!r}")
        boxes = [boxes] if boxes and not isinstance(boxes[0], (list, tuple)) else boxes
        out.extend((_label(str(label or "")), list(b)) for b in boxes)
    return out


def _matched_iou_sum(pred: list[tuple[str, list[float]]], gold: list[tuple[str, list[float]]]) -> float:
    # Hungarian matching within each label, maximising the total IoU: the assignment the
    # evaluation kit's mean_iou uses (`grounding_metrics`), on its `iou_matrix`, which
    # scores a malformed box (reversed corners) as overlapping nothing.
    total = 0.0
    for label in {lab for lab, _ in gold} & {lab for lab, _ in pred}:
        p = [b for lab, b in pred if lab == label]
        g = [b for lab, b in gold if lab == label]
        iou = iou_matrix(p, g)  # (n_pred_label, n_gold_label)
        rows, cols = linear_sum_assignment(iou, maximize=True)
        total += float(iou[rows, cols].sum())
    return total


def box_iou_reward(
    completions: Sequence[Any],
    gold_boxes: Sequence[Any],
    *,
    task: Sequence[str | None] | None = None,
    task_type: Sequence[str | None] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """Hungarian-matched box IoU, summed and divided by max(n_pred, n_gold), per completion.

    Predicted boxes are the ``<ref>label</ref><box>[[...], ...]</box>`` annotations of the
    last ``<answer>`` tag (of the whole text when there is none), read by `parse_boxes`; a
    predicted box can only match a gold box of the same label (case and spacing ignored);
    each box matches at most one. An extra or a missing box adds 0 to the sum and 1 to
    the divisor. `gold_boxes` per completion: a list (or JSON string) of
    ``{"label", "box"}``. Returns 0.0 when gold has boxes and none are predicted, and None
    (not applicable) when gold has no boxes, unless the sample's `task` (or `task_type`)
    column is in `REGION_TASKS`: then no predicted box is right (1.0) and any box is
    wrong (0.0).

    >>> gold = [{"label": "nodule", "box": [0, 0, 10, 10]}]
    >>> box_iou_reward(["<answer><ref>Nodule</ref><box>[[0, 0, 10, 5], [50, 50, 60, 60]]</box></answer>",
    ...                 "<answer><ref>mass</ref><box>[[0, 0, 10, 10]]</box></answer>",
    ...                 "<answer>none</answer>", "<answer>none</answer>"],
    ...                gold_boxes=[gold, gold, gold, "[]"])
    [0.25, 0.0, 0.0, None]
    """
    if len(gold_boxes) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(gold_boxes)} gold_boxes")
    task = task if task is not None else task_type
    if task is not None and len(task) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(task)} task values")
    rewards: list[float | None] = []
    for i, completion in enumerate(completions):
        gold = _gold_box_list(gold_boxes[i])
        is_region = task is not None and task[i] in REGION_TASKS
        text = completion_text(completion)
        answer = _last_answer(text)
        pred = [(_label(lab), b) for lab, boxes in parse_boxes(text if answer is None else answer) for b in boxes]
        if not gold:
            rewards.append((0.0 if pred else 1.0) if is_region else None)
        elif not pred:
            rewards.append(0.0)
        else:
            rewards.append(_matched_iou_sum(pred, gold) / max(len(pred), len(gold)))
    return rewards


# The registry the GRPO stage sums: name -> (function, dataset column it needs, or None).
_HEADER = re.compile(r"^\s*([^:：.;。；\[\]]{2,60})[:：]")
_CITED = re.compile(r"\[E\d+(?:\s*,\s*E\d+)*\]")


def citation_reward(completions: Sequence[Any], prompts: Sequence[Any] | None = None, *, panel: Panel | str | Path | None = None,
                    **kwargs: Any) -> list[float | None]:
    """Citation validity of each completion's rationale lines against its prompt's `[Ek]` list.

    A rationale line starts with a panel disease and a colon. Its score is the share of
    its cited ids that exist in the prompt and that the panel ties to that disease; a
    line that cites nothing scores 1.0 when no listed item supports the disease (nothing
    to cite) and 0.0 otherwise. A citation outside a rationale line only has to exist.
    The completion's score is the mean over its lines and citations; None when the
    prompt has no numbered evidence and the completion cites nothing.

    >>> prompt = "[E1] crp 16.3 mg/L (high) [labs[2]]\\n[E2] bnp 900 pg/mL (high) [labs[3]]"
    >>> citation_reward(["<think>pneumonia: raised CRP [E1].</think><answer>pneumonia</answer>",
    ...                  "<think>pneumonia: raised BNP [E2, E7].</think><answer>pneumonia</answer>"],
    ...                 prompts=[prompt] * 2)
    [1.0, 0.0]
    """
    from medfuse.formats import parse_think
    from medfuse.model.faithfulness import evidence_supports, split_sentences
    from medfuse.model.prompt import parse_numbered_evidence

    if prompts is None:
        return [None] * len(completions)  # no prompt text: nothing to check the ids against
    if len(prompts) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(prompts)} prompts")
    p = _panel(panel)
    out: list[float | None] = []
    for completion, prompt in zip(completions, prompts, strict=True):
        listed = parse_numbered_evidence(completion_text(prompt))
        text = completion_text(completion)
        think = parse_think(text)
        scores: list[float] = []
        for sentence in split_sentences(think if think is not None else text):
            m = _HEADER.match(sentence)
            disease = p.lookup(m.group(1)) if m else None
            ids = [int(x) for c in _CITED.findall(sentence) for x in re.findall(r"\d+", c)]
            if disease is None:
                scores += [1.0 if 1 <= k <= len(listed) else 0.0 for k in ids]
                continue
            if not ids:
                could = any(disease.key in evidence_supports(ev) for ev in listed)
                scores.append(0.0 if could else 1.0)
                continue
            good = sum(1 for k in ids if 1 <= k <= len(listed) and disease.key in evidence_supports(listed[k - 1]))
            scores.append(good / len(ids))
        out.append(sum(scores) / len(scores) if scores else (None if not listed else 1.0))
    return out


def consistency_reward(completions: Sequence[Any], answer_diseases: Sequence[Sequence[str] | str | None], *,
                       panel: Panel | str | Path | None = None, **kwargs: Any) -> list[float | None]:
    """1 - (consistency problems) / (reported diseases + problems): every disease of the
    decision (`answer_diseases`, the set the prompt states) explained, no other argued for.

    >>> consistency_reward(["<think>sepsis: lactate raised.</think><answer>sepsis</answer>",
    ...                     "<think>sepsis: raised, likely pneumonia too.</think><answer>sepsis</answer>"],
    ...                    answer_diseases=[["sepsis"], ["sepsis"]])
    [1.0, 0.5]
    """
    from medfuse.model.faithfulness import check_consistency

    def score(text: str, reported: set[str], p: Panel) -> float:
        n = len(check_consistency(text, reported, p).problems)
        return 1.0 - n / (len(reported) + n) if n else 1.0

    return _scored_against_gold(completions, answer_diseases, panel, score)


REWARDS: dict[str, tuple[RewardFn, str | None]] = {
    "jaccard": (jaccard_reward, "answer_diseases"),
    "format": (format_reward, None),
    "box_iou": (box_iou_reward, "gold_boxes"),
    "citation": (citation_reward, "prompts"),
    "consistency": (consistency_reward, "answer_diseases"),
}
# Default weights (all rewards lie in [0, 1]): the answer counts most; format and boxes
# half as much, so a well-formed wrong answer (0.5) never beats a right one in a bad
# format (1.0). The same defaults as `medfuse.train.config.GRPOConfig.reward_weights`.
# Citation validity and consistency weigh as much as the format: they shape how the
# reasoning is written, not what the answer is.
DEFAULT_WEIGHTS: dict[str, float] = {"jaccard": 1.0, "format": 0.5, "box_iou": 0.5, "citation": 0.5,
                                     "consistency": 0.5}


def combined_reward(
    completions: Sequence[Any], *, weights: Mapping[str, float] | None = None, **columns: Any
) -> list[float | None]:
    """Weighted sum of the `REWARDS` (`weights` defaults to `DEFAULT_WEIGHTS`).

    A reward whose column is not given, or that returns None for a sample, is left out
    of that sample's sum; a sample no reward applies to gets None. This is TRL's
    ``sum_then_normalize`` aggregation (a nansum of weighted rewards), so a compact loop
    that uses it computes the same rewards as GRPOTrainer with ``reward_funcs=[...]`` and
    ``reward_weights=[...]``.

    >>> combined_reward(["<think>x</think><answer>Sepsis</answer>"], answer_diseases=[["sepsis", "pneumonia"]],
    ...                 weights={"jaccard": 1.0, "format": 0.5})
    [1.0]
    >>> combined_reward(["<answer>Sepsis</answer>"], weights={"format": 2.0})
    [0.0]
    """
    weights = DEFAULT_WEIGHTS if weights is None else weights
    unknown = set(weights) - set(REWARDS)
    if unknown:
        raise ValueError(f"unknown reward(s) {sorted(unknown)}; known: {sorted(REWARDS)}")
    totals: list[float | None] = [None] * len(completions)
    for name, weight in weights.items():
        fn, column = REWARDS[name]
        if column is not None and columns.get(column) is None:
            continue  # the dataset has no column for this reward: not applicable anywhere
        for i, r in enumerate(fn(completions, **columns)):
            if r is not None:
                totals[i] = (totals[i] or 0.0) + weight * r
    return totals
