"""Every evaluation metric against an independent reference on fixed inputs:
scikit-learn / scipy / pycocotools, published example values, or a from-the-paper
re-implementation written here."""

from __future__ import annotations

import doctest
import itertools
import math
import shutil
from collections import Counter

import numpy as np
import pytest
from scipy.stats import bootstrap as scipy_bootstrap
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    jaccard_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from medfuse.eval import bootstrap as bootstrap_module
from medfuse.eval.bootstrap import bootstrap_ci
from medfuse.eval.metrics import classification, clinical_efficacy, grounding, multiple_choice, text_generation, vqa
from medfuse.eval.metrics.classification import expected_calibration_error, jaccard_sets, multilabel_metrics
from medfuse.eval.metrics.clinical_efficacy import CHEXPERT_OBSERVATIONS, ce_metrics, extract_findings
from medfuse.eval.metrics.grounding import box_iou, grounding_metrics, iou_matrix, match_boxes
from medfuse.eval.metrics.multiple_choice import mc_metrics
from medfuse.eval.metrics.text_generation import clean_report, report_bootstrap_ci, report_metrics, report_tokens
from medfuse.eval.metrics.vqa import vqa_metrics, vqa_scores

pytestmark = pytest.mark.filterwarnings("ignore:pkg_resources is deprecated:UserWarning")  # raised by jieba's import

HAVE_JAVA = shutil.which("java") is not None
if HAVE_JAVA:
    # METEOR's JVM loads its paraphrase table for ~10 s; start it now so that it loads
    # while the other tests run (the METEOR tests are at the end of this file).
    text_generation._meteor_process()


# ---------------------------------------------------------------- classification


@pytest.fixture
def diagnosis_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    y_true = (rng.random((60, 5)) < 0.35).astype(int)  # (samples, classes)
    y_true[:, 4] = 0  # a class that never occurs: AUROC undefined
    y_prob = np.clip(y_true * 0.45 + rng.random((60, 5)) * 0.55, 0, 1)
    y_pred = (y_prob > 0.5).astype(int)
    return y_true, y_pred, y_prob


def test_multilabel_metrics_match_sklearn(diagnosis_arrays) -> None:
    y_true, y_pred, y_prob = diagnosis_arrays
    names = ["af", "cad", "htn", "pna", "rare"]
    m = multilabel_metrics(y_true, y_pred, y_prob, names=names)
    for avg in ("micro", "macro"):
        assert m[f"{avg}_f1"] == pytest.approx(f1_score(y_true, y_pred, average=avg, zero_division=0))
        assert m[f"{avg}_precision"] == pytest.approx(precision_score(y_true, y_pred, average=avg, zero_division=0))
        assert m[f"{avg}_recall"] == pytest.approx(recall_score(y_true, y_pred, average=avg, zero_division=0))
    assert m["jaccard"] == pytest.approx(jaccard_score(y_true, y_pred, average="samples", zero_division=1.0))
    for j, name in enumerate(names[:4]):
        assert m["per_class"][name]["auroc"] == pytest.approx(roc_auc_score(y_true[:, j], y_prob[:, j]))
        assert m["per_class"][name]["auprc"] == pytest.approx(average_precision_score(y_true[:, j], y_prob[:, j]))
        assert m["per_class"][name]["support"] == int(y_true[:, j].sum())
    # A class with one gold value has no AUROC, is left out of the macro mean, and it is said.
    assert math.isnan(m["per_class"]["rare"]["auroc"])
    assert m["auroc_excluded"] == ["rare"]
    assert m["macro_auroc"] == pytest.approx(np.mean([roc_auc_score(y_true[:, j], y_prob[:, j]) for j in range(4)]))
    assert any("rare" in note for note in m["notes"])


def test_auroc_comes_from_probabilities_not_labels(diagnosis_arrays) -> None:
    y_true, y_pred, y_prob = diagnosis_arrays
    reversed_ranking = multilabel_metrics(y_true, y_pred, 1 - y_prob)
    assert reversed_ranking["per_class"]["class_0"]["auroc"] < 0.5 < multilabel_metrics(y_true, y_pred, y_prob)["per_class"]["class_0"]["auroc"]
    without = multilabel_metrics(y_true, y_pred)
    assert without["macro_auroc"] is None and without["per_class"]["class_0"]["auroc"] is None and without["ece"] is None
    hard = multilabel_metrics(y_true, y_pred, y_pred.astype(float))
    assert any("only 0 and 1" in note for note in hard["notes"])


def test_multilabel_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="only 0 and 1"):
        multilabel_metrics([[0, 2]], [[0, 1]])
    with pytest.raises(ValueError, match="shape"):
        multilabel_metrics([[0, 1]], [[0, 1, 1]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        multilabel_metrics([[0, 1]], [[0, 1]], [[0.2, 1.3]])


def test_jaccard_sets() -> None:
    assert jaccard_sets([{"a", "b"}, set(), {"c"}, {"a"}], [{"a"}, set(), {"d"}, {"a", "b", "c"}]) == [0.5, 1.0, 0.0, 1 / 3]


def test_ece_matches_calibration_curve() -> None:
    rng = np.random.default_rng(3)
    prob = rng.random(500)
    truth = (rng.random(500) < prob**2).astype(int)  # over-confident probabilities
    frac_pos, mean_prob = calibration_curve(truth, prob, n_bins=10, strategy="uniform")
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], prob), minlength=10)
    counts = counts[counts > 0]
    expected = float(np.sum(counts / counts.sum() * np.abs(frac_pos - mean_prob)))
    assert expected_calibration_error(truth, prob) == pytest.approx(expected)
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_percentile_agrees_with_scipy() -> None:
    rng = np.random.default_rng(0)
    scores = (rng.random(2000) < 0.62).astype(float)
    ours = bootstrap_ci(scores, n_resamples=4000, seed=1)
    ref = scipy_bootstrap((scores,), np.mean, n_resamples=4000, method="percentile", random_state=1).confidence_interval
    assert ours[0] == pytest.approx(ref.low, abs=0.004) and ours[1] == pytest.approx(ref.high, abs=0.004)
    assert ours == bootstrap_ci(scores, n_resamples=4000, seed=1)  # same seed, same interval
    # The half-width of a 95 % interval of a proportion is about 1.96 * sqrt(p(1-p)/n).
    assert (ours[1] - ours[0]) / 2 == pytest.approx(1.96 * math.sqrt(0.62 * 0.38 / 2000), rel=0.1)


def test_bootstrap_multi_column_and_edge_cases() -> None:
    rows = np.array([[1, 1]] * 30 + [[1, 0]] * 10)  # (items, [gold, pred])
    lo, hi = bootstrap_ci(rows, statistic=lambda r: float(np.mean(r[:, 0] == r[:, 1])), n_resamples=500)
    assert lo < 0.75 < hi
    loop = bootstrap_ci(rows[:, 0] == rows[:, 1], statistic=lambda v: float(np.mean(v)), n_resamples=500)
    fast = bootstrap_ci((rows[:, 0] == rows[:, 1]).astype(float), n_resamples=500)
    assert loop == pytest.approx(fast)  # the vectorised path draws the same resamples
    assert bootstrap_ci([0.3]) == (0.3, 0.3)
    with pytest.raises(ValueError):
        bootstrap_ci([])
    # Resamples whose statistic is undefined are skipped, not propagated as NaN.
    lo, hi = bootstrap_ci(np.array([0, 1, 1]), statistic=lambda v: float("nan") if v.min() == v.max() else v.mean())
    assert not math.isnan(lo) and lo <= hi


# ---------------------------------------------------------------- multiple choice


def test_mc_metrics_counts_abstentions_as_wrong() -> None:
    m = mc_metrics(["A", None, "b", "C", None], ["A", "B", "B", "D", "E"])
    assert m["accuracy"] == pytest.approx(2 / 5)
    assert m["abstention_rate"] == pytest.approx(2 / 5)
    assert m["answered_accuracy"] == pytest.approx(2 / 3)
    assert m["confusion"]["B"] == {"B": 1, "abstain": 1}
    with pytest.raises(ValueError):
        mc_metrics(["A"], [])


# ---------------------------------------------------------------- VQA


def test_vqa_scores_and_aggregate() -> None:
    assert vqa_scores("The left lung.", "left lung", closed=False) == {"exact": 1.0, "recall": 1.0, "f1": 1.0}
    s = vqa_scores("right lower lobe", "lower lobe of the right lung", closed=False)
    assert s["exact"] == 0.0 and s["recall"] == pytest.approx(3 / 5) and s["f1"] == pytest.approx(2 * 1 * 0.6 / 1.6)
    assert vqa_scores("two", "2", closed=True)["exact"] == 1.0
    zh = vqa_scores("左肺下叶", "左肺", closed=False, lang="zh")
    assert zh["recall"] == 1.0 and zh["f1"] == pytest.approx(2 * 0.5 / 1.5)
    assert vqa_scores("", "yes", closed=True) == {"exact": 0.0, "recall": 0.0, "f1": 0.0}
    agg = vqa_metrics(
        [
            {"pred": "Yes", "gold": "yes", "closed": True},
            {"pred": "no", "gold": "yes", "closed": True},
            {"pred": "heart", "gold": "heart", "closed": False},
            {"pred": "liver and heart", "gold": "heart", "closed": False},
        ]
    )
    assert agg["closed_accuracy"] == 0.5 and agg["open_exact"] == 0.5 and agg["open_recall"] == 1.0
    assert agg["overall"] == 0.5 and (agg["n_closed"], agg["n_open"]) == (2, 2)
    assert vqa_metrics([("a", "a", False)])["closed_accuracy"] is None


# ---------------------------------------------------------------- grounding


def test_box_iou_matches_pycocotools() -> None:
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(5)
    xy = rng.integers(0, 900, size=(12, 2))
    wh = rng.integers(1, 300, size=(12, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).tolist()  # (12, 4) x1 y1 x2 y2
    coco = [[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in boxes]  # x y w h
    reference = mask_utils.iou(coco[:6], coco[6:], [0] * 6)  # (6, 6)
    ours = iou_matrix(boxes[:6], boxes[6:])
    np.testing.assert_allclose(ours, reference, atol=1e-9)
    for i, j in itertools.product(range(6), range(6)):
        assert box_iou(boxes[i], boxes[6 + j]) == pytest.approx(reference[i, j])
    assert box_iou([10, 10, 0, 0], [0, 0, 10, 10]) == 0.0
    assert iou_matrix([[1, 2, 3]], [[0, 0, 5, 5]]).tolist() == [[0.0]]


def test_match_boxes_is_optimal_one_to_one() -> None:
    rng = np.random.default_rng(11)
    for _ in range(20):
        n_p, n_g = (int(v) for v in rng.integers(1, 5, size=2))
        pred = [[x, y, x + w, y + h] for x, y, w, h in rng.integers(0, 60, size=(n_p, 4)) + [0, 0, 10, 10]]
        gold = [[x, y, x + w, y + h] for x, y, w, h in rng.integers(0, 60, size=(n_g, 4)) + [0, 0, 10, 10]]
        iou = iou_matrix(pred, gold)
        best = (0, 0.0)  # brute force: most pairs >= 0.25, then largest total IoU
        for perm in itertools.permutations(range(max(n_p, n_g)), min(n_p, n_g)):
            pairs = list(zip(range(n_p), perm)) if n_p <= n_g else list(zip(perm, range(n_g)))
            good = [iou[p, g] for p, g in pairs if iou[p, g] >= 0.25]
            best = max(best, (len(good), round(sum(good), 9)))
        matches = match_boxes(pred, gold, 0.25)
        assert (len(matches), round(sum(m[2] for m in matches), 9)) == best
        assert len({p for p, _, _ in matches}) == len(matches) == len({g for _, g, _ in matches})


def test_grounding_metrics_definitions() -> None:
    gold = [[[0, 0, 100, 100], [200, 200, 300, 300]], [[500, 500, 600, 600]], []]
    preds = [
        [[0, 0, 100, 80], [0, 0, 100, 100]],  # one good box (IoU 1) and a duplicate (IoU 0.8 with the same gold)
        [[500, 500, 600, 650]],  # IoU 100*100 / (100*150) = 0.667
        [[10, 10, 20, 20]],  # a prediction where there is nothing to find
    ]
    m = grounding_metrics(preds, gold)
    assert (m["n_gold"], m["n_pred"], m["n_matched"], m["n_slots"]) == (3, 4, 2, 2 + 1 + 1)
    assert m["precision"] == pytest.approx(2 / 4) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    # Slots: one per gold box plus one per surplus prediction (the box on the empty image).
    assert m["acc_iou_0.25"] == pytest.approx(2 / 4) and m["acc_iou_0.75"] == pytest.approx(1 / 4)
    assert m["mean_iou"] == pytest.approx((1.0 + 0.0 + 2 / 3 + 0.0) / 4)
    empty = grounding_metrics([[]], [[]])
    assert empty["precision"] == 0.0 and empty["n_gold"] == 0


def test_surplus_boxes_cannot_score_acc_iou() -> None:
    gold = [[[0, 0, 20, 20]]]
    grid = [[x, y, x + 20, y + 20] for x in range(0, 940, 20) for y in range(0, 960, 20)]  # 2,256 boxes
    m = grounding_metrics([grid], gold)
    assert len(grid) == 2256 and m["recall"] == 1.0  # the gold box is among them ...
    assert m["acc_iou_0.5"] == pytest.approx(1 / 2256) and m["mean_iou"] == pytest.approx(1 / 2256)  # ... but
    assert m["precision"] == pytest.approx(1 / 2256) and m["f1"] == pytest.approx(2 / 2257)
    # Predictions dominated by surplus boxes (more than twice the gold count) stay below 0.5.
    assert grounding_metrics([[[0, 0, 20, 20], [50, 50, 60, 60], [70, 70, 80, 80]]], gold)["acc_iou_0.5"] == pytest.approx(1 / 3)
    # A box given for another label (counted by the caller) is a prediction that matches nothing.
    counts = grounding.grounding_counts([[0, 0, 20, 20]], gold[0], unmatched_extra=1)
    assert grounding.pool_grounding_counts([counts])["precision"] == 0.5


def test_macro_f1_leaves_out_classes_with_nothing_to_score() -> None:
    y = np.array([[1, 0, 0], [0, 0, 0], [1, 0, 0]])  # classes 1 and 2: no gold, no prediction
    m = multilabel_metrics(y, y, names=["af", "htn", "dm"])
    assert m["macro_f1"] == 1.0 and m["macro_precision"] == 1.0 and m["macro_recall"] == 1.0
    assert m["f1_excluded"] == ["htn", "dm"] and any("htn, dm" in note for note in m["notes"])
    assert math.isnan(m["per_class"]["htn"]["f1"]) and m["per_class"]["af"]["f1"] == 1.0
    assert classification.macro_f1(y, y) == 1.0
    # A class predicted but never gold (or gold but never predicted) is scored: F1 0.
    wrong = y.copy()
    wrong[1, 1] = 1
    assert multilabel_metrics(y, wrong)["macro_f1"] == pytest.approx((1.0 + 0.0) / 2)
    assert math.isnan(classification.macro_f1(np.zeros((2, 3)), np.zeros((2, 3))))


def test_per_class_ece_beside_pooled_ece() -> None:
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 1]])
    prob = np.array([[0.9, 0.05], [0.1, 0.95], [0.9, 0.05], [0.1, 0.95]])  # class 1 is badly calibrated
    m = multilabel_metrics(y, (prob >= 0.5).astype(int), prob, names=["good", "bad"])
    assert m["per_class"]["good"]["ece"] == pytest.approx(0.1)  # |1 - 0.9| and |0 - 0.1|, two bins of 2
    # class 1: bin of 0.05 (2 cases, rate 0, gap 0.05) and bin of 0.95 (2 cases, rate 0.5, gap 0.45)
    assert m["per_class"]["bad"]["ece"] == pytest.approx(0.5 * 0.05 + 0.5 * 0.45)
    # pooled over the 8 entries: bins [0, 0.1] (4, mean 0.075, rate 0), (0.8, 0.9] (2, 0.9, 1), (0.9, 1] (2, 0.95, 0.5)
    assert m["ece"] == pytest.approx(0.5 * 0.075 + 0.25 * 0.1 + 0.25 * 0.45)


# ---------------------------------------------------------------- report text: BLEU, ROUGE-L, CIDEr

PAPINENI_CANDIDATE = "It is a guide to action which ensures that the military always obeys the commands of the party"
PAPINENI_REFERENCES = [
    "It is a guide to action that ensures that the military will forever heed Party commands",
    "It is the guiding principle which guarantees the military forces always being under the command of the Party",
    "It is the practical guide for the army always to heed the directions of the party",
]


def test_bleu_published_examples() -> None:
    # Papineni et al. 2002, example 1: modified unigram precision 17/18, bigram 10/17;
    # the candidate's length equals the closest reference's, so no brevity penalty.
    m = report_metrics([PAPINENI_CANDIDATE], [PAPINENI_REFERENCES], clean=False, metrics=["bleu_1", "bleu_2", "bleu_4"])
    assert m["bleu_1"] == pytest.approx(17 / 18)
    assert m["bleu_2"] == pytest.approx(math.sqrt(17 / 18 * 10 / 17))
    # NLTK's documented sentence_bleu and corpus_bleu values for the same sentences.
    assert m["bleu_4"] == pytest.approx(0.5045666840058485, abs=1e-9)
    second = ("he read the book because he was interested in world history", "he was interested in world history because he read the book")
    corpus = report_metrics([PAPINENI_CANDIDATE, second[0]], [PAPINENI_REFERENCES, [second[1]]], clean=False, metrics=["bleu_4"])
    assert corpus["bleu_4"] == pytest.approx(0.5920778868801042, abs=1e-9)
    # Papineni et al.: "the the the the the the the" has modified unigram precision 2/7.
    m = report_metrics(["the the the the the the the"], [["the cat is on the mat", "there is a cat on the mat"]], clean=False, metrics=["bleu_1"])
    assert m["bleu_1"] == pytest.approx(2 / 7)


def test_rouge_l_published_example_and_f_measure() -> None:
    # Lin 2004, section 3.1: against "police killed the gunman", S2 scores 3/4 and S3 2/4.
    m = report_metrics(["police kill the gunman", "the gunman kill police"], ["police killed the gunman"] * 2, clean=False, metrics=["rouge_l"])
    assert m["per_item"]["rouge_l"] == pytest.approx([0.75, 0.5])
    # ROUGE-L is the F-measure (beta 1.2), not recall: repeating the reference has recall
    # 1 and precision 1/2.
    ref = "the heart is normal in size"
    doubled = report_metrics([f"{ref} {ref}"], [ref], clean=False, metrics=["rouge_l"])["rouge_l"]
    beta2 = 1.2**2
    assert doubled == pytest.approx((1 + beta2) * 0.5 * 1.0 / (1.0 + beta2 * 0.5))


def _cider_d_reference(candidates: list[str], references: list[list[str]], sigma: float = 6.0) -> list[float]:
    """CIDEr-D written from Vedantam et al. 2015 (eq. 2-5, with clipping and the Gaussian
    length penalty), independently of pycocoevalcap."""

    def grams(words: list[str], n: int) -> Counter:
        return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))

    n_images = len(candidates)
    doc_freq = [Counter() for _ in range(4)]
    for refs in references:
        for n in range(4):
            doc_freq[n].update({g for r in refs for g in grams(r.split(), n + 1)})

    def tfidf(words: list[str], n: int) -> dict:
        return {g: c * (math.log(n_images) - math.log(max(1.0, doc_freq[n][g]))) for g, c in grams(words, n + 1).items()}

    scores = []
    for cand, refs in zip(candidates, references, strict=True):
        c_words = cand.split()
        per_n = []
        for n in range(4):
            gc = tfidf(c_words, n)
            total = 0.0
            for ref in refs:
                r_words = ref.split()
                gr = tfidf(r_words, n)
                dot = sum(min(v, gr.get(g, 0.0)) * gr.get(g, 0.0) for g, v in gc.items())
                norm = math.sqrt(sum(v * v for v in gc.values())) * math.sqrt(sum(v * v for v in gr.values()))
                penalty = math.exp(-((len(c_words) - len(r_words)) ** 2) / (2 * sigma**2))
                total += (dot / norm if norm else 0.0) * penalty
            per_n.append(total / len(refs))
        scores.append(10.0 * sum(per_n) / 4)
    return scores


def test_cider_matches_an_independent_implementation() -> None:
    candidates = [
        "the heart is normal in size . the lungs are clear .",
        "mild cardiomegaly . small left pleural effusion .",
        "no acute cardiopulmonary process .",
        "there is a right upper lobe nodule .",
    ]
    references = [
        ["heart size is normal . lungs are clear ."],
        ["the heart is enlarged . there is a small left pleural effusion ."],
        ["no acute cardiopulmonary abnormality .", "no acute process ."],
        ["a 1 cm nodule is seen in the right upper lobe ."],
    ]
    m = report_metrics(candidates, references, clean=False, metrics=["cider"])
    expected = _cider_d_reference(candidates, references)
    assert m["per_item"]["cider"] == pytest.approx(expected)
    assert m["cider"] == pytest.approx(np.mean(expected))


def test_r2gen_cleaning_and_chinese_tokens() -> None:
    assert clean_report("1. Heart size is NORMAL.  2. No focal consolidation, effusion (or) pneumothorax..") == (
        "heart size is normal . no focal consolidation effusion or pneumothorax ."
    )
    assert clean_report("Post-op changes at T12; 'stable'.") == "post-op changes at t12 stable ."
    words = report_tokens("心脏大小正常，双肺纹理清晰。", lang="zh")
    assert "，" not in words and "".join(words) == "心脏大小正常双肺纹理清晰" and len(words) < 12
    same = report_metrics(["心脏大小正常，双肺纹理清晰。"], ["心脏大小正常，双肺纹理清晰"], lang="zh", metrics=["bleu_1", "rouge_l"])
    assert same["bleu_1"] == pytest.approx(1.0) and same["rouge_l"] == pytest.approx(1.0)


def test_report_metrics_edge_cases() -> None:
    m = report_metrics(["", "no acute process ."], ["lungs are clear .", "no acute process ."], metrics=["bleu_1", "rouge_l", "cider"])
    assert m["per_item"]["rouge_l"][0] == 0.0 and m["per_item"]["bleu_1"][0] == pytest.approx(0.0, abs=1e-9)
    assert report_metrics([""], [""], metrics=["cider"])["cider"] == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        report_metrics(["a"], [])
    with pytest.raises(ValueError, match="unknown report metric"):
        report_metrics(["a"], ["a"], metrics=["bleu_5"])


def test_report_bootstrap_ci_reuses_exact_statistics() -> None:
    preds = ["the heart is normal .", "small left effusion .", "no pneumothorax .", "right lower lobe pneumonia ."] * 5
    refs = ["heart size is normal .", "there is a small left pleural effusion .", "no pneumothorax is seen .", "pneumonia in the right lower lobe ."] * 5
    point = report_metrics(preds, refs, metrics=["bleu_1", "bleu_4", "rouge_l"])
    hyps, refs_tok = text_generation._prepare(preds, refs, "en", True)
    stats = text_generation._bleu_stats(hyps, refs_tok)
    assert text_generation._bleu_from_stats(stats, 4) == pytest.approx(point["bleu_4"], rel=1e-9)
    ci = report_bootstrap_ci(preds, refs, names=("bleu_1", "bleu_4", "rouge_l"), n_resamples=200)
    for name in ("bleu_1", "bleu_4", "rouge_l"):
        lo, hi = ci[name]
        assert lo <= point[name] <= hi and lo < hi


# ---------------------------------------------------------------- clinical efficacy

CE_TABLE = [
    ("Mild cardiomegaly.", "Cardiomegaly", 1),
    ("The heart is not enlarged.", "Cardiomegaly", 0),
    ("Heart size is mildly enlarged.", "Cardiomegaly", 1),
    ("No pleural effusion or pneumothorax.", "Pneumothorax", 0),
    ("No evidence of consolidation, effusion, or pneumothorax.", "Pleural Effusion", 0),
    ("No change in the small left pleural effusion.", "Pleural Effusion", 1),
    ("Small pericardial effusion.", "Pleural Effusion", 0),
    ("Pneumothorax is not seen.", "Pneumothorax", 0),
    ("The effusion has resolved.", "Pleural Effusion", 0),
    ("Lungs are free of consolidation.", "Consolidation", 0),
    ("Negative for pneumonia.", "Pneumonia", 0),
    ("Possible early pneumonia.", "Pneumonia", -1),
    ("Cannot exclude pneumonia.", "Pneumonia", -1),
    ("Pneumonia cannot be excluded.", "Pneumonia", -1),
    ("Opacity may represent atelectasis.", "Atelectasis", -1),
    ("No pneumothorax is seen and there is a large right effusion.", "Pleural Effusion", 1),
    ("No pneumothorax, but a small effusion persists.", "Pleural Effusion", 1),
    ("There is a 2 cm nodule in the right upper lobe.", "Nodule/Mass", 1),
    ("There is a 2 cm nodule in the right upper lobe.", "Lung Lesion", 1),
    ("Right PICC line tip in the SVC.", "Support Devices", 1),
    ("Right PICC line tip in the SVC. No acute cardiopulmonary process.", "No Finding", 1),
    ("Mild pulmonary edema.", "No Finding", 0),
    ("心影增大。", "Cardiomegaly", 1),
    ("双肺未见实变及胸腔积液。", "Pleural Effusion", 0),
    ("未见气胸，右侧胸腔积液。", "Pleural Effusion", 1),
    ("右下肺斑片影，不除外肺炎。", "Pneumonia", -1),
    ("左肺结节，考虑肿瘤可能。", "Nodule/Mass", 1),
]


@pytest.mark.parametrize(("text", "finding", "label"), CE_TABLE, ids=[f"{t[:30]}-{f}" for t, f, _ in CE_TABLE])
def test_extract_findings_table(text: str, finding: str, label: int) -> None:
    lang = "zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"
    assert extract_findings(text, lang)[finding] == label


def test_ce_metrics_match_sklearn_on_extracted_labels() -> None:
    preds = ["Mild cardiomegaly. No effusion.", "Possible pneumonia.", "Large right pleural effusion.", "No acute process."]
    refs = ["Cardiomegaly with small bilateral effusions.", "Right lower lobe pneumonia.", "No effusion.", "Normal chest."]
    m = ce_metrics(preds, refs)
    names = list(CHEXPERT_OBSERVATIONS)
    to_row = lambda text: [1 if extract_findings(text)[n] == 1 else 0 for n in names]  # noqa: E731
    y_pred = np.array([to_row(p) for p in preds])
    y_true = np.array([to_row(r) for r in refs])
    assert m["precision"] == pytest.approx(precision_score(y_true, y_pred, average="micro", zero_division=0))
    assert m["recall"] == pytest.approx(recall_score(y_true, y_pred, average="micro", zero_division=0))
    assert m["f1"] == pytest.approx(f1_score(y_true, y_pred, average="micro", zero_division=0))
    # Cardiomegaly hit, pneumonia missed (uncertain counts as negative), effusion wrong,
    # No Finding right on the last report.
    assert m["per_finding"]["Cardiomegaly"]["recall"] == 1.0 and m["per_finding"]["Pneumonia"]["recall"] == 0.0
    lenient = ce_metrics(preds, refs, uncertain_as=1)
    assert lenient["per_finding"]["Pneumonia"]["recall"] == 1.0


# ---------------------------------------------------------------- METEOR (Java), last: its JVM warmed up meanwhile


@pytest.mark.skipif(not HAVE_JAVA, reason="METEOR 1.5 needs Java")
def test_meteor_behaviour() -> None:
    m = report_metrics(
        ["the heart is normal in size .", "small left pleural effusions .", "", "心脏 增大"],
        ["the heart is normal in size .", "small left pleural effusion .", "lungs are clear .", "肺部 清晰"],
        clean=False,
        metrics=["meteor"],
    )
    identical, stemmed, empty, chinese = m["per_item"]["meteor"]
    assert identical == pytest.approx(1.0)
    assert 0.5 < stemmed < 1.0  # "effusions" matches "effusion" through the stemmer
    assert empty == 0.0
    assert chinese == 0.0  # different characters must not collapse into one '?' token
    assert 0.0 < m["meteor"] < 1.0
    ci = report_bootstrap_ci(["small left effusion ."] * 3 + ["no acute process ."] * 3, ["small left effusion ."] * 6, names=("meteor",), n_resamples=50)
    lo, hi = ci["meteor"]
    assert 0.0 <= lo < hi <= 1.0


def test_meteor_without_java_is_reported_not_fatal(monkeypatch) -> None:
    monkeypatch.setattr(text_generation, "_meteor", None)
    monkeypatch.setattr(text_generation.shutil, "which", lambda name: None)
    m = report_metrics(["no acute process ."], ["no acute process ."])
    assert m["meteor"] is None and any("Java" in n for n in m["notes"]) and m["bleu_1"] == pytest.approx(1.0)


def test_docstring_examples() -> None:
    for module in (bootstrap_module, classification, clinical_efficacy, grounding, multiple_choice, text_generation, vqa):
        assert doctest.testmod(module).failed == 0, module.__name__
