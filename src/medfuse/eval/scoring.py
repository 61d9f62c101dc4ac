"""Parse raw model outputs and score them, per task type, with the kit's metrics.

`score_run(items, outputs)` returns one record per item (parsed answer and per-item
scores) and the run's metrics: headline numbers with percentile-bootstrap 95 % CIs over
items, full metric details, and accuracy breakdowns by the benchmark's metadata fields.
It never calls a model: a rescore after a parser or metric change re-runs only this.

Rules that keep scores honest:
- an output that cannot be parsed is an abstention and scored wrong (multiple choice,
  yes/no/maybe), Jaccard 0 (diagnosis: an answer without an `<answer>` tag is not the
  empty set, which would be a perfect score on a healthy case) or no boxes (grounding),
  never a guess; diagnosis counts these in `details["n_unparsed"]`;
- a request that failed (no output) is scored like an abstention (Jaccard 0 for
  diagnosis) and counted (`n_failed`), so failures cannot inflate a score; when some but
  not all requests failed, `answered` holds the metrics over the answered items alone,
  so that neither number is mistaken for the other;
- grounding reads only the boxes given for the queried label (or without a label);
  boxes given for another label are surplus predictions;
- judged scores (LLM judge) are added beside the rule-based ones by the harness, never here.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from medfuse.eval.benchmarks.base import EvalItem

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
ABSTAIN = "abstain"  # the label of an abstention in confusion matrices and breakdowns


def extract_answer(text: str | None) -> str:
    """The content of the last `<answer>` tag, else the whole output, stripped."""
    if not text:
        return ""
    tags = _ANSWER.findall(text)
    return (tags[-1] if tags else text).strip()


def _ci(values: np.ndarray | None, statistic: Callable | None, n: int, n_resamples: int) -> list[float] | None:
    """A 95 % percentile-bootstrap interval over items (None for fewer than 2 items)."""
    from medfuse.eval.bootstrap import bootstrap_ci

    if n < 2 or n_resamples < 1:  # n_resamples 0: point estimates only
        return None
    if statistic is None:
        lo, hi = bootstrap_ci(np.asarray(values, dtype=float), n_resamples=n_resamples)
    else:
        lo, hi = bootstrap_ci(np.arange(n), statistic=statistic, n_resamples=n_resamples)
    return [float(lo), float(hi)]


def _breakdowns(items: Sequence[EvalItem], correct: np.ndarray, keys: Sequence[str]) -> dict:
    """Mean of `correct` per value of each metadata key (e.g. accuracy per question_type)."""
    out: dict[str, dict] = {}
    for key in keys:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, it in enumerate(items):
            value = it.lang if key == "lang" else it.metadata.get(key)
            if value is not None:
                groups[str(value)].append(i)
        if len(groups) > 1 or (groups and len(next(iter(groups.values()))) < len(items)):
            out[key] = {v: {"n": len(ix), "score": float(np.mean(correct[ix]))} for v, ix in sorted(groups.items())}
    return out


# ---------------------------------------------------------------- multiple choice


def _score_choice(items, outputs, n_resamples):
    from medfuse.eval.metrics.multiple_choice import mc_metrics
    from medfuse.eval.parsers import parse_choice, parse_yes_no

    parsed: list[str | None] = []
    for it, out in zip(items, outputs, strict=True):
        if out is None:
            parsed.append(None)
        elif it.answer_type == "yes_no_maybe":
            parsed.append(parse_yes_no(out, allow_maybe=True))
        else:
            parsed.append(parse_choice(out, it.options))
    gold = [str(it.gold) for it in items]
    correct = np.array([p is not None and p == g for p, g in zip(parsed, gold, strict=True)], dtype=float)
    details = mc_metrics(parsed, gold)
    metrics = {"accuracy": details["accuracy"], "abstention_rate": details["abstention_rate"]}
    ci = {"accuracy": _ci(correct, None, len(items), n_resamples)}
    headline = ["accuracy"]
    if items and all(it.answer_type == "yes_no_maybe" for it in items):
        # PubMedQA reports macro-F1 over yes/no/maybe beside accuracy; an abstention is a
        # miss for its gold class and never a hit for any class. As one-hot rows the
        # classes are scored like diagnosis labels, so a class that is neither gold nor
        # predicted is left out of the mean instead of counting as F1 0.
        from medfuse.eval.metrics.classification import macro_f1

        labels = ["yes", "no", "maybe"]
        gold_1hot = np.array([[int(g == lab) for lab in labels] for g in gold])  # (items, 3)
        pred_1hot = np.array([[int(p == lab) for lab in labels] for p in parsed])  # (items, 3); abstain: zeros

        def macro_f1_of(ix: np.ndarray) -> float:
            return macro_f1(gold_1hot[ix], pred_1hot[ix])

        metrics["macro_f1"] = macro_f1_of(np.arange(len(items)))
        ci["macro_f1"] = _ci(None, macro_f1_of, len(items), n_resamples)
        headline.append("macro_f1")
    records = [{"parsed": p, "score": {"correct": bool(c)}} for p, c in zip(parsed, correct, strict=True)]
    return records, metrics, ci, headline, details, correct


# ---------------------------------------------------------------- VQA


def _score_vqa(items, outputs, n_resamples):
    from medfuse.eval.metrics.vqa import vqa_scores
    from medfuse.eval.parsers import parse_yes_no

    records, per_item = [], []
    for it, out in zip(items, outputs, strict=True):
        closed = it.answer_type == "closed"
        answer = extract_answer(out)
        if closed and str(it.gold).strip().lower() in ("yes", "no") and out is not None:
            # A closed yes/no answer is read with the yes/no parser ("Yes, there is..." -> yes).
            answer = parse_yes_no(out) or answer
        s = vqa_scores(answer, str(it.gold), closed=closed, lang=it.lang)
        per_item.append((closed, s))
        records.append({"parsed": answer, "score": dict(s)})
    closed_ix = np.array([c for c, _ in per_item], dtype=bool)
    exact = np.array([s["exact"] for _, s in per_item], dtype=float)
    recall = np.array([s["recall"] for _, s in per_item], dtype=float)
    f1 = np.array([s["f1"] for _, s in per_item], dtype=float)
    metrics: dict[str, float] = {}
    ci: dict[str, list[float] | None] = {}
    headline: list[str] = []
    if closed_ix.any():
        metrics["closed_accuracy"] = float(exact[closed_ix].mean())
        ci["closed_accuracy"] = _ci(exact[closed_ix], None, int(closed_ix.sum()), n_resamples)
        headline.append("closed_accuracy")
    if (~closed_ix).any():
        for name, arr in (("open_exact", exact), ("open_recall", recall), ("open_f1", f1)):
            metrics[name] = float(arr[~closed_ix].mean())
            ci[name] = _ci(arr[~closed_ix], None, int((~closed_ix).sum()), n_resamples)
        headline += ["open_recall", "open_f1"]
    metrics["overall_exact"] = float(exact.mean()) if len(exact) else 0.0
    ci["overall_exact"] = _ci(exact, None, len(exact), n_resamples)
    headline.append("overall_exact")
    details = {"n_closed": int(closed_ix.sum()), "n_open": int((~closed_ix).sum())}
    return records, metrics, ci, headline, details, exact


# ---------------------------------------------------------------- diagnosis


def _score_diagnosis(items, outputs, probabilities, n_resamples):
    from sklearn.metrics import f1_score

    from medfuse.eval.metrics.classification import jaccard_sets, macro_f1, multilabel_metrics
    from medfuse.formats import parse_answer_set
    from medfuse.knowledge.panel import load_panel

    panel = load_panel()
    parsed: list[list[str] | None] = [None if out is None else parse_answer_set(out, panel) for out in outputs]
    pred_sets = [set(p or []) for p in parsed]
    gold_sets = [set(it.gold) for it in items]
    # Label columns: the candidates offered plus any gold label. Predictions outside them
    # still lower the per-sample Jaccard and are counted, but get no column of their own.
    names: list[str] = []
    for it in items:
        for n in [*it.candidates, *it.gold]:
            if n not in names:
                names.append(n)
    col = {n: j for j, n in enumerate(names)}
    y_true = np.zeros((len(items), len(names)), dtype=int)  # (items, labels)
    y_pred = np.zeros_like(y_true)
    for i, (g, p) in enumerate(zip(gold_sets, pred_sets, strict=True)):
        for n in g:
            y_true[i, col[n]] = 1
        for n in p & set(col):
            y_pred[i, col[n]] = 1
    y_prob = None
    if items and all(p for p in probabilities):
        y_prob = np.array([[float(p.get(n, 0.0)) for n in names] for p in probabilities])  # (items, labels)
    # No answer (failed request or no <answer> tag) is no prediction at all, not the empty
    # set: it scores Jaccard 0 even where the gold set is empty.
    jac = np.array(jaccard_sets(pred_sets, gold_sets), dtype=float)
    jac[[p is None for p in parsed]] = 0.0
    details = multilabel_metrics(y_true, y_pred, y_prob=y_prob, names=names)
    # Jaccard over the full predicted sets (labels outside the columns included), the
    # quantity MedTVT-R1 reports and rewards.
    metrics = {"jaccard": float(jac.mean())}
    metrics.update({k: float(details[k]) for k in ("micro_f1", "macro_f1", "micro_precision", "micro_recall")})
    ci = {"jaccard": _ci(jac, None, len(items), n_resamples)}
    ci["micro_f1"] = _ci(None, lambda ix: float(f1_score(y_true[ix], y_pred[ix], average="micro", zero_division=0)),
                         len(items), n_resamples)
    ci["macro_f1"] = _ci(None, lambda ix: macro_f1(y_true[ix], y_pred[ix]), len(items), n_resamples)
    headline = ["jaccard", "micro_f1", "macro_f1"]
    if y_prob is not None and details.get("ece") is not None:
        metrics["ece"] = float(details["ece"])
        headline.append("ece")
    details = dict(details)
    details["labels"] = names
    details["n_failed"] = sum(out is None for out in outputs)
    details["n_unparsed"] = sum(p is None and out is not None for p, out in zip(parsed, outputs, strict=True))
    details["out_of_list_predictions"] = sum(len(p - set(col)) for p in pred_sets)
    records = [
        {"parsed": None if p is None else sorted(set(p)), "score": {"jaccard": float(j)}}
        for p, j in zip(parsed, jac, strict=True)
    ]
    return records, metrics, ci, headline, details, jac


# ---------------------------------------------------------------- report generation


def _score_report(items, outputs, n_resamples):
    from medfuse.eval.metrics.clinical_efficacy import ce_metrics
    from medfuse.eval.metrics.text_generation import report_metrics

    preds = [extract_answer(o) if o else "" for o in outputs]
    refs = [str(it.gold) for it in items]
    langs = {it.lang for it in items}
    lang = langs.pop() if len(langs) == 1 else "en"
    details = dict(report_metrics(preds, refs, lang=lang))
    names = ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider"]
    metrics = {k: float(details[k]) for k in names if isinstance(details.get(k), (int, float))}
    # Intervals reuse per-report statistics (text_generation.report_bootstrap_ci), so BLEU,
    # ROUGE-L and CIDEr get the full number of resamples; METEOR (a Java round trip per
    # resample) is reported without an interval.
    from medfuse.eval.metrics.text_generation import report_bootstrap_ci

    report_resamples = n_resamples
    ci = (dict(report_bootstrap_ci(preds, refs, lang=lang, names=["bleu_4", "rouge_l", "cider"],
                                   n_resamples=n_resamples)) if n_resamples > 0 else {})
    headline = [k for k in ("bleu_1", "bleu_4", "meteor", "rouge_l", "cider") if k in metrics]
    if lang == "en":
        # The clinical-efficacy labeler is an English chest-X-ray vocabulary.
        ce = ce_metrics(preds, refs)
        details["clinical_efficacy"] = ce
        for k in ("precision", "recall", "f1"):
            if isinstance(ce.get(k), (int, float)):
                metrics[f"ce_{k}"] = float(ce[k])
        if "ce_f1" in metrics:
            headline.append("ce_f1")

            def ce_f1(ix: np.ndarray) -> float:
                return float(ce_metrics([preds[i] for i in ix], [refs[i] for i in ix])["f1"])

            ci["ce_f1"] = _ci(None, ce_f1, len(items), max(50, n_resamples // 5) if n_resamples > 0 else 0)
    details["bootstrap_resamples"] = report_resamples
    per_item_all = details.pop("per_item", {}) or {}
    per_item = {k: v for k, v in per_item_all.items() if isinstance(v, list) and len(v) == len(items)}
    records = [{"parsed": p, "score": {k: v[i] for k, v in per_item.items()}} for i, p in enumerate(preds)]
    main = np.array(per_item.get("rouge_l", [0.0] * len(items)), dtype=float)
    return records, metrics, ci, headline, details, main


# ---------------------------------------------------------------- grounding


def _label_key(label: str) -> str:
    """A box label as compared with the queried one: case, spaces and underscores folded."""
    return " ".join(label.replace("_", " ").split()).casefold()


def queried_boxes(output: str | None, label: str) -> tuple[list[list[int]], int]:
    """(boxes given for `label` or without a label, number of boxes given for other labels)."""
    from medfuse.formats import parse_boxes

    own: list[list[int]] = []
    other = 0
    for box_label, boxes in parse_boxes(output or ""):
        if not box_label or _label_key(box_label) == _label_key(label):
            own.extend(list(b) for b in boxes)
        else:
            other += len(boxes)
    return own, other


def _score_grounding(items, outputs, n_resamples):
    from medfuse.eval.metrics.grounding import ACC_THRESHOLDS, grounding_counts, pool_grounding_counts

    thresholds = tuple(f"acc_iou_{t}" for t in ACC_THRESHOLDS)
    counts, preds = [], []
    for it, out in zip(items, outputs, strict=True):
        boxes, other = queried_boxes(out, str(it.metadata.get("label", "")))
        preds.append(boxes)
        counts.append(grounding_counts(boxes, [list(b) for b in it.gold], unmatched_extra=other))
    details = pool_grounding_counts(counts)
    names = ("f1", "precision", "recall", *thresholds, "mean_iou")
    metrics = {k: float(details[k]) for k in names}
    # Intervals pool the per-item counts exactly as the metric does, without re-running the
    # Hungarian matching on every resample.
    ci = {k: _ci(None, lambda ix, k=k: float(pool_grounding_counts([counts[i] for i in ix])[k]), len(items), n_resamples)
          for k in ("f1", *thresholds, "mean_iou")}
    headline = ["f1", "acc_iou_0.5", "mean_iou"]
    per = [pool_grounding_counts([c]) for c in counts]
    records = [{"parsed": p, "score": {k: float(s[k]) for k in names}} for p, s in zip(preds, per, strict=True)]
    return records, metrics, ci, headline, details, np.array([s["f1"] for s in per])


# ---------------------------------------------------------------- entry point


def _score_task(task: str, items, outputs, probabilities, n_resamples):
    """(records, metrics, ci, headline, details, per-item main score) of one task type."""
    if task == "multiple_choice":
        return _score_choice(items, outputs, n_resamples)
    if task == "vqa":
        return _score_vqa(items, outputs, n_resamples)
    if task == "diagnosis":
        return _score_diagnosis(items, outputs, probabilities, n_resamples)
    if task == "report":
        return _score_report(items, outputs, n_resamples)
    if task == "grounding":
        return _score_grounding(items, outputs, n_resamples)
    raise ValueError(f"unknown task type {task!r}")  # pragma: no cover - TaskType is a closed Literal


def score_run(
    items: Sequence[EvalItem],
    outputs: Sequence[str | None],
    probabilities: Sequence[dict | None] | None = None,
    breakdown_keys: Sequence[str] = (),
    n_resamples: int = 1000,
) -> tuple[list[dict], dict]:
    """Parse and score every output; returns (per-item records, metrics block).

    `outputs[i]` is None when the request for item i failed; it is scored as a wrong
    answer and counted in `n_failed`. The metrics block holds `metrics`, `ci95`,
    `headline` (ordered names), `details`, `breakdowns`, `n_failed`, and, when some but
    not all requests failed, `answered`: {"n", "metrics"} over the answered items alone
    (point estimates).
    """
    if not items:
        return [], {"metrics": {}, "ci95": {}, "headline": [], "details": {}, "breakdowns": {}, "n_failed": 0}
    task = items[0].task_type
    if any(it.task_type != task for it in items):
        raise ValueError("a run scores one task type")
    probabilities = list(probabilities) if probabilities is not None else [None] * len(items)
    records, metrics, ci, headline, details, main = _score_task(task, items, outputs, probabilities, n_resamples)
    answered = [i for i, out in enumerate(outputs) if out is not None]
    block = {
        "metrics": metrics,
        "ci95": {k: v for k, v in ci.items() if k in metrics},
        "headline": headline,
        "details": details,
        "breakdowns": _breakdowns(items, np.asarray(main, dtype=float), breakdown_keys),
        "n_failed": len(items) - len(answered),
    }
    if 0 < len(answered) < len(items):
        sub = _score_task(task, [items[i] for i in answered], [outputs[i] for i in answered],
                          [probabilities[i] for i in answered], 0)
        block["answered"] = {"n": len(answered), "metrics": sub[1]}
    return records, block
