"""Report-generation metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr, as report papers compute them.

R2Gen and most chest X-ray report papers score with ``pycocoevalcap`` on text cleaned by
R2Gen's tokenizer; medfuse does the same so that its numbers can be set beside theirs:

- Cleaning (`clean_report`, English): lower case; list numbering ("1. ") and repeated dots
  removed; the report split into sentences at ". "; in each sentence quotes, slashes,
  apostrophes and the characters ``. , ? ; * ! % ^ & _ + ( ) : < = > @ [ ] { }`` removed
  (R2Gen's character class); sentences joined by " . " and a final " ." kept as tokens.
  Hyphens and digits stay ("x-ray", "t12"). Empty sentences are dropped (R2Gen would keep
  a stray " . " for them).
- Chinese (``lang="zh"``): NFKC, lower case, every punctuation character removed, then
  words from ``jieba`` (its default dictionary, precise mode).
- BLEU-n: ``pycocoevalcap.bleu`` (corpus BLEU with "closest" reference length; per-item
  BLEU for the records).
- METEOR: METEOR 1.5 (``meteor-1.5.jar`` shipped inside the ``pycocoevalcap`` wheel, run
  with ``-l en -norm`` through Java; exact, stem, synonym and paraphrase matching). One
  Java process is started on first use and kept for the session. For Chinese only exact
  matches apply (the stemmer, WordNet and paraphrase table are English). Without Java,
  ``meteor`` is None and ``notes`` says why; the other metrics are unaffected.
- ROUGE-L: ``pycocoevalcap.rouge``: the LCS-based F-measure with beta = 1.2 (recall
  weighted a little more than precision), not ROUGE-L recall.
- CIDEr: ``pycocoevalcap.cider`` (CIDEr-D: n = 1..4, Gaussian length penalty sigma = 6,
  clipped tf-idf, x10), with document frequencies from the references of the scored
  corpus, so CIDEr depends on the whole test set and is 0 for a single report.

Intervals: `report_bootstrap_ci` resamples reports and recomputes corpus BLEU and METEOR
exactly from per-report sufficient statistics (METEOR with fewer resamples, each is a
Java round trip); ROUGE-L is a mean of per-report scores; CIDEr is the mean of per-report
scores with document frequencies fixed to the full test set.
"""

from __future__ import annotations

import atexit
import logging
import math
import re
import shutil
import subprocess
import threading
import unicodedata
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np

from medfuse.eval.bootstrap import bootstrap_ci

__all__ = ["METRIC_NAMES", "clean_report", "report_bootstrap_ci", "report_metrics", "report_tokens"]

METRIC_NAMES = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")

# ---------------------------------------------------------------- cleaning and tokens

# R2Gen's sentence cleaner removes the class [.,?;*!%^&_+():-\[\]{}], in which ":-\[" is
# the range ':' .. '[' (: ; < = > ? @ A-Z [); upper case is gone by then, so the effect is:
_R2GEN_DROP = re.compile(r"[.,?;*!%^&_+():;<=>?@\[\]{}]")
_LIST_NUMBERS = (("1. ", ""), (". 2. ", ". "), (". 3. ", ". "), (". 4. ", ". "), (". 5. ", ". "),
                 (" 2. ", ". "), (" 3. ", ". "), (" 4. ", ". "), (" 5. ", ". "))  # fmt: skip


def clean_report(text: str) -> str:
    """R2Gen's report cleaning (see the module docstring), as one space-separated string.

    >>> clean_report("1. The heart is normal in size. 2. No pleural effusion, pneumothorax.")
    'the heart is normal in size . no pleural effusion pneumothorax .'
    >>> clean_report("")
    ''
    """
    t = unicodedata.normalize("NFKC", text).replace("\n", " ")
    t = re.sub(r"_{2,}", "_", t)
    t = re.sub(r" {2,}", " ", t)
    t = re.sub(r"\.{2,}", ".", t)
    for old, new in _LIST_NUMBERS:
        t = t.replace(old, new)
    sentences = []
    for sentence in t.strip().lower().split(". "):
        s = sentence.replace('"', "").replace("/", "").replace("\\", "").replace("'", "").strip().lower()
        s = " ".join(_R2GEN_DROP.sub("", s).split())
        if s:
            sentences.append(s)
    return " . ".join(sentences) + " ." if sentences else ""


_jieba_ready = False


def _jieba_words(text: str) -> list[str]:
    global _jieba_ready
    import jieba  # imported on first Chinese report: it loads a 5 MB dictionary

    if not _jieba_ready:
        # jieba logs "Building prefix dict ..." at DEBUG to stderr; quiet it for our use only.
        jieba.setLogLevel(logging.WARNING)
        _jieba_ready = True
    return [w for w in jieba.lcut(text) if w.strip()]


def report_tokens(text: str | None, lang: str = "en", clean: bool = True) -> list[str]:
    """The tokens the n-gram metrics see: cleaned English words, or jieba words for Chinese.

    With ``clean=False`` English text is only split on whitespace (for text that is
    already tokenised), and Chinese text is segmented without removing punctuation.

    >>> report_tokens("Heart size is normal. Lungs are clear.")
    ['heart', 'size', 'is', 'normal', '.', 'lungs', 'are', 'clear', '.']
    """
    if not text:
        return []
    if lang.startswith("zh"):
        t = unicodedata.normalize("NFKC", text).lower()
        if clean:
            t = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in t)
        return _jieba_words(t)
    return (clean_report(text) if clean else text).split()


# ---------------------------------------------------------------- METEOR 1.5 (Java)


class _MeteorProcess:
    """One METEOR 1.5 process speaking its ``-stdio`` protocol (SCORE and EVAL lines).

    Started once (loading the paraphrase table takes ~10 s) and reused; per-pair
    statistics are cached so that bootstrap resamples only send EVAL lines.
    """

    def __init__(self) -> None:
        jar = resources.files("pycocoevalcap").joinpath("meteor").joinpath("meteor-1.5.jar")
        # -Dfile.encoding: Java 17 reads stdin in the locale's charset, which is ASCII
        # under LANG=C; reports (and Chinese ones especially) are UTF-8.
        cmd = ["java", "-Xmx2G", "-Dfile.encoding=UTF-8", "-jar", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"]
        self._proc = subprocess.Popen(
            cmd,
            cwd=str(jar.parent),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # a PIPE nobody reads could fill up and hang the jar
        )
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, tuple[str, ...]], str] = {}

    def _readline(self) -> str:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the METEOR process ended unexpectedly")
        return line.decode("utf-8").strip()

    def _send(self, line: str) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write((line + "\n").encode("utf-8"))
        self._proc.stdin.flush()

    def stats(self, hypothesis: str, references: Sequence[str]) -> str:
        key = (hypothesis, tuple(references))
        with self._lock:
            if key not in self._stats:
                self._send(" ||| ".join(("SCORE", *references, hypothesis)))
                self._stats[key] = self._readline()
            return self._stats[key]

    def evaluate(self, stats: Sequence[str]) -> tuple[float, list[float]]:
        """Corpus METEOR and per-item scores for a list of SCORE statistics lines."""
        with self._lock:
            self._send(" ||| ".join(("EVAL", *stats)))
            per_item = [float(self._readline()) for _ in stats]
            return float(self._readline()), per_item

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                if self._proc.stdin is not None:
                    self._proc.stdin.close()
            finally:
                self._proc.kill()
                self._proc.wait()


_meteor: _MeteorProcess | None = None
_meteor_lock = threading.Lock()


def _meteor_process() -> _MeteorProcess:
    global _meteor
    with _meteor_lock:
        if _meteor is None or _meteor._proc.poll() is not None:
            if shutil.which("java") is None:
                raise RuntimeError("METEOR needs Java (a 'java' executable on PATH)")
            _meteor = _MeteorProcess()
            atexit.register(_meteor.close)
        return _meteor


def _meteor_safe(text: str) -> str:
    # '|||' separates fields and a newline ends a command in METEOR's protocol.
    return " ".join(text.replace("|||", " ").split())


def _meteor_stats(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> list[str]:
    proc = _meteor_process()
    return [proc.stats(_meteor_safe(h), [_meteor_safe(r) for r in rs]) for h, rs in zip(hyps, refs, strict=True)]


# ---------------------------------------------------------------- the metrics


def _prepare(
    predictions: Sequence[str | None], references: Sequence[str | Sequence[str]], lang: str, clean: bool
) -> tuple[list[str], list[list[str]]]:
    if len(predictions) != len(references):
        raise ValueError(f"predictions and references differ in length ({len(predictions)} vs {len(references)})")
    hyps = [" ".join(report_tokens(p, lang, clean)) for p in predictions]
    refs = [
        [" ".join(report_tokens(r, lang, clean)) for r in ([ref] if isinstance(ref, str) or ref is None else ref)]
        for ref in references
    ]
    if any(not rs for rs in refs):
        raise ValueError("every prediction needs at least one reference")
    return hyps, refs


def _bleu(hyps: list[str], refs: list[list[str]]) -> tuple[list[float], list[list[float]]]:
    from pycocoevalcap.bleu.bleu import Bleu

    gts = {i: rs for i, rs in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    corpus, per_item = Bleu(4).compute_score(gts, res, verbose=0)
    return [float(x) for x in corpus], [[float(x) for x in col] for col in per_item]


def _rouge_l(hyps: list[str], refs: list[list[str]]) -> list[float]:
    from pycocoevalcap.rouge.rouge import Rouge

    scorer = Rouge()
    # An empty string would become one empty "token" under Rouge's split(" "); an empty
    # prediction or reference has no common subsequence, so its score is 0.
    return [scorer.calc_score([h], rs) if h and any(rs) else 0.0 for h, rs in zip(hyps, refs, strict=True)]


def _cider(hyps: list[str], refs: list[list[str]]) -> tuple[float, list[float]]:
    from pycocoevalcap.cider.cider import Cider

    if not any(r for rs in refs for r in rs):
        return 0.0, [0.0] * len(hyps)  # no reference n-grams: pycocoevalcap would fail on max([])
    score, scores = Cider().compute_score({i: rs for i, rs in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)})
    return float(score), [float(s) for s in scores]


def report_metrics(
    predictions: Sequence[str | None],
    references: Sequence[str | Sequence[str]],
    lang: str = "en",
    clean: bool = True,
    metrics: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Corpus BLEU-1..4, METEOR, ROUGE-L and CIDEr of `predictions` against `references`.

    Each reference is a string or a list of strings (several references for one
    prediction). `metrics` limits the work to some of ``METRIC_NAMES`` (e.g. ``["bleu_4",
    "rouge_l"]``). Returns one float per metric (``meteor`` may be None, see ``notes``),
    ``per_item`` {metric: [score per prediction]}, ``n`` and ``notes``.

    >>> m = report_metrics(["the heart is normal in size ."], ["The heart is normal in size."], metrics=["bleu_4", "rouge_l"])
    >>> round(m["bleu_4"], 6), round(m["rouge_l"], 6)
    (1.0, 1.0)
    """
    wanted = list(METRIC_NAMES) if metrics is None else list(metrics)
    unknown = [m for m in wanted if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"unknown report metric(s) {unknown}; choose from {list(METRIC_NAMES)}")
    hyps, refs = _prepare(predictions, references, lang, clean)
    out: dict[str, Any] = {"n": len(hyps), "notes": [], "per_item": {}}
    if not hyps:
        for name in wanted:
            out[name] = float("nan")
        return out
    if any(name.startswith("bleu") for name in wanted):
        corpus, per_item = _bleu(hyps, refs)
        for k in range(4):
            name = f"bleu_{k + 1}"
            if name in wanted:
                out[name] = corpus[k]
                out["per_item"][name] = per_item[k]
    if "meteor" in wanted:
        try:
            score, per_item_meteor = _meteor_process().evaluate(_meteor_stats(hyps, refs))
            out["meteor"] = score
            out["per_item"]["meteor"] = per_item_meteor
        except (RuntimeError, OSError, ValueError) as e:
            out["meteor"] = None
            out["notes"].append(f"METEOR not computed: {e}")
    if "rouge_l" in wanted:
        scores = _rouge_l(hyps, refs)
        out["rouge_l"] = float(np.mean(scores))
        out["per_item"]["rouge_l"] = scores
    if "cider" in wanted:
        out["cider"], out["per_item"]["cider"] = _cider(hyps, refs)
    if lang.startswith("zh") and out.get("meteor") is not None:
        out["notes"].append("METEOR on Chinese uses exact matches only (its stemmer, synonyms and paraphrases are English)")
    return out


def _bleu_stats(hyps: list[str], refs: list[list[str]]) -> np.ndarray:
    """Per-item BLEU sufficient statistics, shape (items, 10): testlen, closest reflen,
    guess_1..4, correct_1..4 (pycocoevalcap's cooking)."""
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    rows = []
    for h, rs in zip(hyps, refs, strict=True):
        comps = cook_test(h, cook_refs(rs), eff="closest")
        rows.append([comps["testlen"], comps["reflen"], *comps["guess"], *comps["correct"]])
    return np.asarray(rows, dtype=float)


def _bleu_from_stats(stats: np.ndarray, n: int) -> float:
    """Corpus BLEU-n from summed statistics, with pycocoevalcap's tiny/small constants."""
    tiny, small = 1e-15, 1e-9
    total = stats.sum(axis=0)
    testlen, reflen, guess, correct = total[0], total[1], total[2:6], total[6:10]
    log_precision = sum(math.log((correct[k] + tiny) / (guess[k] + small)) for k in range(n)) / n
    bleu = math.exp(log_precision)
    ratio = (testlen + tiny) / (reflen + small)
    return bleu * math.exp(1 - 1 / ratio) if ratio < 1 else bleu


def report_bootstrap_ci(
    predictions: Sequence[str | None],
    references: Sequence[str | Sequence[str]],
    lang: str = "en",
    clean: bool = True,
    names: Sequence[str] = METRIC_NAMES,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    meteor_resamples: int = 200,
) -> dict[str, tuple[float, float] | None]:
    """Percentile-bootstrap intervals of report metrics, resampling reports.

    Every resample reuses per-report statistics (see the module docstring): BLEU, ROUGE-L
    and CIDEr intervals with 1000 resamples of 590 reports take about a second. A METEOR
    resample is one round trip to the Java process (~0.25 s for 590 reports), so METEOR
    uses `meteor_resamples` (default 200, about a minute for 590 reports); its interval
    is None when METEOR cannot run.
    """
    hyps, refs = _prepare(predictions, references, lang, clean)
    n = len(hyps)
    out: dict[str, tuple[float, float] | None] = {}
    if n == 0:
        return dict.fromkeys(names)
    index = np.arange(n)
    if any(name.startswith("bleu") for name in names):
        stats = _bleu_stats(hyps, refs)  # (items, 10)
        for k in range(1, 5):
            if f"bleu_{k}" in names:
                out[f"bleu_{k}"] = bootstrap_ci(
                    index, lambda ix, k=k: _bleu_from_stats(stats[ix], k), n_resamples, seed, confidence
                )
    if "rouge_l" in names:
        out["rouge_l"] = bootstrap_ci(np.asarray(_rouge_l(hyps, refs)), np.mean, n_resamples, seed, confidence)
    if "cider" in names:
        out["cider"] = bootstrap_ci(np.asarray(_cider(hyps, refs)[1]), np.mean, n_resamples, seed, confidence)
    if "meteor" in names:
        try:
            meteor_stats = np.asarray(_meteor_stats(hyps, refs), dtype=object)
            proc = _meteor_process()
            out["meteor"] = bootstrap_ci(
                index, lambda ix: proc.evaluate(list(meteor_stats[ix]))[0], min(n_resamples, meteor_resamples), seed, confidence
            )
        except (RuntimeError, OSError, ValueError):
            out["meteor"] = None
    return {name: out.get(name) for name in names}
