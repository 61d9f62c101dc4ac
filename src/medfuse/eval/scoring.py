"""Parse raw model outputs and score them, per task type, with the kit's metrics.

`score_run(items, outputs)` returns one record per item (parsed answer and per-item
scores) and the run's metrics: headline numbers with percentile-bootstrap 95 % CIs over
items, full metric details, and accuracy breakdowns by the benchmark's metadata fields.
It never calls a model: a rescore after a parser or metric change re-runs only this.

Rules that keep scores honest:
- an output that cannot be parsed is an abstention and scored wrong (multiple choice,
  yes/no/maybe), an empty set (diagnosis) or no boxes (grounding), never a guess;
- a request that failed (no output) is scored like an abstention and counted in
  `n_errors`, so failures cannot inflate a score;
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

    if n < 2:
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
        # miss for its gold class and never a hit for any class.
        from sklearn.metrics import f1_score

        labels = ["yes", "no", "maybe"]
        pred = np.array([p or ABSTAIN for p in parsed])
        gold_arr = np.array(gold)

        def macro_f1(ix: np.ndarray) -> float:
            return float(f1_score(gold_arr[ix], pred[ix], labels=labels, average="macro", zero_division=0))

        metrics["macro_f1"] = macro_f1(np.arange(len(items)))
        ci["macro_f1"] = _ci(None, macro_f1, len(items), n_resamples)
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

    from medfuse.eval.metrics.classification import jaccard_sets, multilabel_metrics
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
    jac = np.array(jaccard_sets(pred_sets, gold_sets), dtype=float)
    details = multilabel_metrics(y_true, y_pred, y_prob=y_prob, names=names)
    # Jaccard over the full predicted sets (labels outside the columns included), the
    # quantity MedTVT-R1 reports and rewards.
    metrics = {"jaccard": float(jac.mean())}
    metrics.update({k: float(details[k]) for k in ("micro_f1", "macro_f1", "micro_precision", "micro_recall")})
    ci = {"jaccard": _ci(jac, None, len(items), n_resamples)}
    for avg in ("micro", "macro"):
        def stat(ix: np.ndarray, avg: str = avg) -> float:
            return float(f1_score(y_true[ix], y_pred[ix], average=avg, zero_division=0))

        ci[f"{avg}_f1"] = _ci(None, stat, len(items), n_resamples)
    headline = ["jaccard", "micro_f1", "macro_f1"]
    if y_prob is not None and details.get("ece") is not None:
        metrics["ece"] = float(details["ece"])
        headline.append("ece")
    details = dict(details)
    details["labels"] = names
    details["format_failures"] = sum(p is None for p in parsed)
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
    ci = dict(report_bootstrap_ci(preds, refs, lang=lang, names=["bleu_4", "rouge_l", "cider"],
                                  n_resamples=n_resamples))
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

            ci["ce_f1"] = _ci(None, ce_f1, len(items), max(50, n_resamples // 5))
    details["bootstrap_resamples"] = report_resamples
    per_item_all = details.pop("per_item", {}) or {}
    per_item = {k: v for k, v in per_item_all.items() if isinstance(v, list) and len(v) == len(items)}
    records = [{"parsed": p, "score": {k: v[i] for k, v in per_item.items()}} for i, p in enumerate(preds)]
    main = np.array(per_item.get("rouge_l", [0.0] * len(items)), dtype=float)
    return records, metrics, ci, headline, details, main


# ---------------------------------------------------------------- grounding


def _score_grounding(items, outputs, n_resamples):
    from medfuse.eval.metrics.grounding import grounding_metrics
    from medfuse.formats import parse_boxes

    thresholds = ("acc_iou_0.25", "acc_iou_0.5", "acc_iou_0.75")
    preds: list[list[list[int]]] = []
    for out in outputs:
        boxes: list[list[int]] = []
        for _label, bs in parse_boxes(out or ""):
            boxes.extend(list(b) for b in bs)
        preds.append(boxes)
    golds = [[list(b) for b in it.gold] for it in items]
    details = dict(grounding_metrics(preds, golds))
    metrics = {k: float(details[k]) for k in (*thresholds, "mean_iou", "precision", "recall", "f1") if k in details}
    # Per-item counts let the bootstrap pool boxes exactly as the metric does, without
    # re-running the Hungarian matching on every resample.
    per = [grounding_metrics([p], [g]) for p, g in zip(preds, golds, strict=True)]
    n_gold = np.array([len(g) for g in golds], dtype=float)
    n_pred = np.array([len(p) for p in preds], dtype=float)
    tp = np.array([s["recall"] for s in per]) * n_gold  # matched boxes at IoU 0.5
    acc = {t: np.array([s[t] for s in per]) * n_gold for t in thresholds}

    def pooled(num: np.ndarray, den: np.ndarray):
        return lambda ix: float(num[ix].sum() / den[ix].sum()) if den[ix].sum() else 0.0

    def f1(ix: np.ndarray) -> float:
        p = tp[ix].sum() / n_pred[ix].sum() if n_pred[ix].sum() else 0.0
        r = tp[ix].sum() / n_gold[ix].sum() if n_gold[ix].sum() else 0.0
        return float(2 * p * r / (p + r)) if p + r else 0.0

    ci = {t: _ci(None, pooled(acc[t], n_gold), len(items), n_resamples) for t in thresholds}
    ci["f1"] = _ci(None, f1, len(items), n_resamples)
    headline = ["acc_iou_0.5", "mean_iou", "f1"]
    records = [{"parsed": p, "score": {k: float(s[k]) for k in (*thresholds, "mean_iou") if k in s}}
               for p, s in zip(preds, per, strict=True)]
    return records, metrics, ci, headline, details, np.array([s.get("acc_iou_0.5", 0.0) for s in per])


# ---------------------------------------------------------------- entry point


def score_run(
    items: Sequence[EvalItem],
    outputs: Sequence[str | None],
    probabilities: Sequence[dict | None] | None = None,
    breakdown_keys: Sequence[str] = (),
    n_resamples: int = 1000,
) -> tuple[list[dict], dict]:
    """Parse and score every output; returns (per-item records, metrics block).

    `outputs[i]` is None when the request for item i failed. The metrics block holds
    `metrics`, `ci95`, `headline` (ordered names), `details` and `breakdowns`.
    """
    if not items:
        return [], {"metrics": {}, "ci95": {}, "headline": [], "details": {}, "breakdowns": {}}
    task = items[0].task_type
    if any(it.task_type != task for it in items):
        raise ValueError("a run scores one task type")
    probabilities = list(probabilities) if probabilities is not None else [None] * len(items)
    if task == "multiple_choice":
        records, metrics, ci, headline, details, main = _score_choice(items, outputs, n_resamples)
    elif task == "vqa":
        records, metrics, ci, headline, details, main = _score_vqa(items, outputs, n_resamples)
    elif task == "diagnosis":
        records, metrics, ci, headline, details, main = _score_diagnosis(items, outputs, probabilities, n_resamples)
    elif task == "report":
        records, metrics, ci, headline, details, main = _score_report(items, outputs, n_resamples)
    elif task == "grounding":
        records, metrics, ci, headline, details, main = _score_grounding(items, outputs, n_resamples)
    else:  # pragma: no cover - TaskType is a closed Literal
        raise ValueError(f"unknown task type {task!r}")
    block = {
        "metrics": metrics,
        "ci95": {k: v for k, v in ci.items() if k in metrics},
        "headline": headline,
        "details": details,
        "breakdowns": _breakdowns(items, np.asarray(main, dtype=float), breakdown_keys),
    }
    return records, block
