"""`medfuse eval report RUN_DIR... --out REPORT_DIR`: a leaderboard comparing runs.

Writes `report.md`, `report.html` (self-contained apart from the PNGs) and `plots/`:
- one leaderboard table per benchmark (runs sorted by the first headline metric), each
  number with its bootstrap 95 % CI, LLM-judged scores in their own column;
- per-disease F1 bars (diagnosis runs, one bar per run);
- a calibration curve (diagnosis runs whose model returned probabilities);
- confusion matrices, gold vs parsed answer with abstentions as their own column
  (multiple-choice and closed-VQA runs).
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medfuse.errors import InputError
from medfuse.eval.benchmarks.base import iter_jsonl, read_json
from medfuse.eval.harness import ITEMS_FILE, SUMMARY_FILE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_CONFUSION_LABELS = 12  # closed VQA can have many answers; keep the most frequent


def _load_run(folder: Path) -> dict:
    path = Path(folder) / SUMMARY_FILE
    if not path.is_file():
        raise InputError(folder, "not an eval run folder (no summary.json)")
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise InputError(path, "not a medfuse summary (expected a JSON object)")
    for key in ("benchmark", "metrics", "headline", "ci95"):
        if key not in summary:
            raise InputError(path, f"missing '{key}' (not a medfuse summary)")
    return {"dir": Path(folder), "name": Path(folder).resolve().name, "summary": summary}


def _items(run: dict) -> list[dict]:
    path = run["dir"] / ITEMS_FILE
    if not path.is_file():
        return []
    return [row for _, row in iter_jsonl(path)]


def _fmt(summary: dict, name: str) -> str:
    if summary.get("score_valid") is False:
        return "invalid"  # too many failed requests: no score (see harness)
    value = summary["metrics"].get(name)
    if value is None:
        return "-"
    ci = summary["ci95"].get(name)
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def _sort_key(summary: dict, name: str | None, higher_is_better: bool) -> tuple[bool, float]:
    """Leaderboard order (sorted descending): best first, runs without a valid score last."""
    value = summary["metrics"].get(name) if summary.get("score_valid") is not False else None
    if value is None or math.isnan(value):  # missing, invalid run, or NaN
        return False, 0.0
    return True, float(value) if higher_is_better else -float(value)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:80]


# ---------------------------------------------------------------- plots


def _save_figure(fig: Figure, path: Path) -> Path:
    """Write a finished plot to `path` (PNG) and free it; returns `path`."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_disease_f1(runs: list[dict], path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    per_run = {r["name"]: (r["summary"].get("details") or {}).get("per_class") or {} for r in runs}
    names = sorted({n for pc in per_run.values() for n in pc})
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4))
    width = 0.8 / max(1, len(per_run))
    x = np.arange(len(names))
    for k, (run_name, pc) in enumerate(per_run.items()):
        ax.bar(x + k * width, [float((pc.get(n) or {}).get("f1") or 0.0) for n in names], width, label=run_name)
    ax.set_xticks(x + width * (len(per_run) - 1) / 2, names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title("Per-disease F1")
    ax.legend(fontsize=8)
    return _save_figure(fig, path)


def _plot_calibration(runs: list[dict], path: Path) -> Path | None:
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    curves = []
    for r in runs:
        y_true, y_prob = [], []
        for row in _items(r):
            probs = row.get("probabilities")
            if not probs:
                continue
            gold = set(row.get("gold") or [])
            for name, p in probs.items():
                y_true.append(int(name in gold))
                y_prob.append(float(p))
        if len(set(y_true)) == 2:
            frac_pos, mean_pred = calibration_curve(y_true, y_prob, n_bins=10, strategy="uniform")
            curves.append((r["name"], mean_pred, frac_pos))
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k:", label="perfectly calibrated")
    for name, mean_pred, frac_pos in curves:
        ax.plot(mean_pred, frac_pos, "o-", label=name)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title("Calibration (all diseases pooled)")
    ax.legend(fontsize=8)
    return _save_figure(fig, path)


def _plot_confusion(run: dict, path: Path) -> Path | None:
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    task = run["summary"].get("task_type")
    pairs = []
    for row in _items(run):
        item = row.get("item") or {}
        if task == "multiple_choice" or (task == "vqa" and item.get("answer_type") == "closed"):
            gold = str(row["gold"]).strip().lower() if task == "vqa" else str(row["gold"])
            parsed = row.get("parsed")
            pred = "abstain" if parsed in (None, "") else (str(parsed).strip().lower() if task == "vqa" else str(parsed))
            pairs.append((gold, pred))
    if not pairs:
        return None
    counts: dict[str, int] = defaultdict(int)
    for g, _ in pairs:
        counts[g] += 1
    labels = sorted(counts, key=lambda k: (-counts[k], k))[:MAX_CONFUSION_LABELS]
    labels = sorted(labels)
    cols = labels + ["other", "abstain"]
    gold = [g if g in labels else "other" for g, _ in pairs]
    pred = [p if p in labels or p == "abstain" else "other" for _, p in pairs]
    rows_used = [lab for lab in labels + ["other"] if lab in gold]
    cm = confusion_matrix(gold, pred, labels=cols)  # (gold, predicted)
    cm = cm[[cols.index(r) for r in rows_used]]
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(cols), 1.0 + 0.6 * len(rows_used)))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows_used)), rows_used)
    ax.set_xlabel("parsed answer")
    ax.set_ylabel("gold")
    ax.set_title(f"{run['name']}", fontsize=9)
    return _save_figure(fig, path)


# ---------------------------------------------------------------- report


def write_report(run_dirs: list[str | Path], out: str | Path) -> list[Path]:
    """Write report.md, report.html and plots/ for the given run folders; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    if not run_dirs:
        raise InputError(None, "give at least one run folder")
    runs = [_load_run(Path(d)) for d in run_dirs]
    out = Path(out)
    plots = out / "plots"
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder (--out takes a folder for report.md, report.html, plots/)")
    try:
        plots.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(out, f"cannot create the report folder ({e.strerror or e.__class__.__name__})") from None

    by_bench: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        by_bench[r["summary"]["benchmark"]].append(r)

    md = ["# medfuse evaluation report", "",
          "Numbers are point estimates with percentile-bootstrap 95 % CIs over items. LLM-judged scores, when present, "
          "are in their own column and never mixed into rule-based scores.", ""]
    body = ["<h1>medfuse evaluation report</h1>",
            "<p>Numbers are point estimates with percentile-bootstrap 95 % CIs over items. LLM-judged scores, when "
            "present, are in their own column and never mixed into rule-based scores.</p>"]
    for bench, group in sorted(by_bench.items()):
        headline: list[str] = []
        for r in group:
            headline += [h for h in r["summary"]["headline"] if h not in headline]
        first = headline[0] if headline else None
        higher_is_better = first != "ece"
        group.sort(key=lambda r: _sort_key(r["summary"], first, higher_is_better), reverse=True)
        judged = any(r["summary"].get("judged") for r in group)
        header = ["run", "model", "n", "errors", *headline] + (["judged open accuracy"] if judged else []) + ["prompts"]
        rows = []
        for r in group:
            s = r["summary"]
            j = (s.get("judged") or {}).get("open_accuracy")
            rows.append([r["name"], s.get("model", ""), str(s.get("n_items", "")), str(s.get("n_errors", "")),
                         *[_fmt(s, h) for h in headline]]
                        + ([f"{j:.3f}" if j is not None else "-"] if judged else []) + [s.get("prompt_version", "")])
        task = group[0]["summary"].get("task_type", "")
        md += [f"## {bench} ({task})", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        md.append("")
        body.append(f"<h2>{html.escape(bench)} ({html.escape(task)})</h2><table><tr>"
                    + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        body += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
        body.append("</table>")

        images: list[tuple[str, Path]] = []
        if task == "diagnosis":
            if p := _plot_disease_f1(group, plots / f"{_slug(bench)}_disease_f1.png"):
                images.append(("Per-disease F1", p))
            if p := _plot_calibration(group, plots / f"{_slug(bench)}_calibration.png"):
                images.append(("Calibration curve", p))
            else:
                md.append("No calibration curve: no run of this benchmark returned probabilities.\n")
                body.append("<p>No calibration curve: no run of this benchmark returned probabilities.</p>")
        if task in ("multiple_choice", "vqa"):
            for r in group:
                if p := _plot_confusion(r, plots / f"{_slug(bench)}_{_slug(r['name'])}_confusion.png"):
                    images.append((f"Confusion matrix: {r['name']}", p))
        for title, p in images:
            rel = p.relative_to(out).as_posix()
            md += [f"![{title}]({rel})", ""]
            body.append(f"<figure><img src='{html.escape(rel)}' alt='{html.escape(title)}'>"
                        f"<figcaption>{html.escape(title)}</figcaption></figure>")
        bd = [(r["name"], r["summary"].get("breakdowns") or {}) for r in group]
        for run_name, breakdowns in bd:
            for key, values in breakdowns.items():
                md += [f"**{run_name}** by `{key}`: " + ", ".join(f"{v} {d['score']:.3f} (n={d['n']})" for v, d in values.items()), ""]
                body.append(f"<p><b>{html.escape(run_name)}</b> by <code>{html.escape(key)}</code>: "
                            + html.escape(", ".join(f"{v} {d['score']:.3f} (n={d['n']})" for v, d in values.items())) + "</p>")

    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;font-size:14px}"
             "th{background:#f3f3f3}figure{display:inline-block;margin:1em}img{max-width:100%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>medfuse evaluation report</title>"
            f"<style>{style}</style></head><body>" + "\n".join(body) + "</body></html>\n")
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    html_path.write_text(page, encoding="utf-8")
    return [md_path, html_path, *sorted(plots.glob("*.png"))]
