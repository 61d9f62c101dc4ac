"""Clinical efficacy (CE) of generated chest X-ray reports: a rule-based finding labeler with
negation and uncertainty handling, and precision / recall / F1 of the findings it extracts.

The labeler follows the CheXpert labeler's design (mention -> negation / uncertainty ->
aggregation) with a small, documented vocabulary instead of the CheXpert rule files and
dependency parser, so it runs offline in milliseconds. Its scores are therefore close to,
not identical with, CheXpert/CheXbert-based CE numbers in papers.

Labels (`extract_findings`): the 14 CheXpert observations plus medfuse's ``Nodule/Mass``:
1 = positive, 0 = negative or not mentioned, -1 = uncertain.

Vocabulary (English; matched case-insensitively on whole words, plurals included):

- Enlarged Cardiomediastinum: enlarged cardiomediastinum, widened / enlarged / prominent
  mediastinum, mediastinal widening / enlargement
- Cardiomegaly: cardiomegaly, cardiac enlargement, enlarged heart / cardiac silhouette /
  heart size, heart (size) / cardiac silhouette ... enlarged
- Lung Opacity: opacity, opacities, opacification, infiltrate(s), infiltration, haziness,
  airspace / air-space disease, airspace opacity
- Edema: edema, oedema, vascular congestion, pulmonary congestion
- Consolidation: consolidation(s), consolidative
- Pneumonia: pneumonia, pneumonic
- Atelectasis: atelectasis, atelectatic, collapse
- Pneumothorax: pneumothorax, pneumothoraces, hydropneumothorax
- Pleural Effusion: effusion(s) (not "pericardial effusion"), pleural fluid, hydrothorax
- Pleural Other: pleural thickening / scarring / plaque(s) / calcification, fibrothorax
- Fracture: fracture(s), fractured
- Support Devices: PICC, central (venous) line, endotracheal / ET / NG / OG / nasogastric /
  enteric / feeding / chest / tracheostomy tube, pacemaker, pacer, defibrillator, ICD,
  catheter, port-a-cath, sternotomy / sternal wires, surgical clips, stent, prosthetic valve,
  valve replacement, drain
- Lung Lesion: nodule(s), nodular, mass(es), lesion(s), tumor / tumour, neoplasm,
  carcinoma, malignancy
- Nodule/Mass (medfuse): nodule(s), nodular, mass(es), tumor / tumour
- No Finding: 1 when no other observation except Support Devices is positive or uncertain

Chinese (``lang="zh"``, substring match): 纵隔增宽 / 纵隔影增宽 (Enlarged Cardiomediastinum);
心脏增大 / 心影增大 / 心脏扩大 / 心影扩大 / 心脏肥大 (Cardiomegaly); 阴影 / 模糊影 / 斑片影 / 渗出 /
浸润 / 密度增高影 (Lung Opacity); 肺水肿 / 水肿 / 肺淤血 (Edema); 实变 (Consolidation); 肺炎
(Pneumonia); 肺不张 (Atelectasis); 气胸 (Pneumothorax); 胸腔积液 / 积液 (Pleural Effusion); 胸膜增厚
/ 胸膜粘连 / 胸膜钙化 (Pleural Other); 骨折 (Fracture); 起搏器 / 导管 / 置管 / 插管 / 引流管 / 胸管
(Support Devices); 结节 / 肿块 / 占位 / 肿瘤 / 病灶 (Lung Lesion); 结节 / 肿块 / 肿瘤 (Nodule/Mass).

Negation and uncertainty (NegEx-style), decided per mention within its clause. Clauses end
at . ; ? ! and newlines, and (English) at "but", "however", "although", "though", "except",
"aside from", "apart from", "which", "there is/are"; (Chinese) at 。；，,！？ and 但.

- uncertainty phrases that contain a negation word are read first, as uncertain:
  "cannot exclude", "cannot be excluded", "cannot rule out", "cannot be ruled out",
  "not excluded", "not ruled out", 不除外, 不能排除, 不排除;
- negation before the mention (or inside it, "heart is not enlarged"): no, not, without,
  negative for, free of, no evidence of, no signs of, absence of, resolved, resolution of,
  clear of, ruled out; 无, 未见, 未发现, 没有, 未, 否认;
- negation after the mention: is/are not seen, not identified, not present, not evident,
  not appreciated, absent, has/have resolved, resolved, has cleared, ruled out, no longer
  seen; 已吸收, 消失;
- pseudo-negations that do not negate: "no change", "no (significant/interval) change",
  "no increase/decrease", "not only", "without change";
- uncertainty before the mention: possible, possibly, probable, probably, likely, may,
  might, could, questionable, question of, suspicious for, suspected, suspect, concerning
  for, concern for, suggestive of, suggesting, suggests, differential, versus, vs, rule
  out, r/o, evaluate for, assess for, borderline, equivocal, indeterminate, cannot exclude;
  可能, 疑似, 疑, 可疑, 考虑, 待排, 不除外, 不能排除;
- uncertainty after the mention: is possible, is suspected, is likely, is questioned,
  cannot be excluded, not excluded, not ruled out.

A report's label for an observation is positive if any mention is positive, else
uncertain if any is uncertain, else 0.

CE metrics (`ce_metrics`): uncertain counts as negative (``uncertain_as=0``, the usual
choice; ``uncertain_as=1`` is the alternative). ``precision``, ``recall`` and ``f1`` are
micro averages over the 14 CheXpert observations of all reports (the CE of R2Gen-style
papers); macro and per-report ("example-based") averages and per-finding scores are given
beside them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_fscore_support

__all__ = ["CHEXPERT_OBSERVATIONS", "FINDINGS", "ce_metrics", "extract_findings"]

CHEXPERT_OBSERVATIONS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)  # fmt: skip
FINDINGS: tuple[str, ...] = (*CHEXPERT_OBSERVATIONS, "Nodule/Mass")

_S = r"(?:s|es)?"  # plural endings
_EN_MENTIONS: dict[str, str] = {
    "Enlarged Cardiomediastinum": (
        r"enlarged cardiomediastinum|(?:widened|widening of the|enlarged|prominent) (?:superior )?mediastinum"
        r"|mediastinal (?:widening|enlargement)"
    ),
    "Cardiomegaly": (
        r"cardiomegaly|cardiac enlargement|enlargement of the (?:heart|cardiac silhouette)"
        r"|enlarged (?:heart|cardiac silhouette|cardiac size|heart size)"
        r"|(?:heart|cardiac silhouette|heart size|cardiac size)(?: size)? (?:is|are|appears|remains|seems)(?: \w+){0,2} enlarged"
    ),
    "Lung Opacity": rf"opacit(?:y|ies)|opacification{_S}|infiltrat(?:e|es|ion|ions)|haziness|air[- ]?space (?:disease|opacit(?:y|ies))",
    "Edema": r"edema|oedema|(?:pulmonary )?vascular congestion|pulmonary congestion",
    "Consolidation": rf"consolidation{_S}|consolidative",
    "Pneumonia": r"pneumonia|pneumonic",
    "Atelectasis": r"atelectasis|atelectatic|collapse",
    "Pneumothorax": r"(?:hydro)?pneumothorax|pneumothoraces",
    "Pleural Effusion": rf"(?<!pericardial )effusion{_S}|pleural fluid|hydrothorax",
    "Pleural Other": rf"pleural (?:thickening|scarring|plaque{_S}|calcification{_S})|fibrothorax",
    "Fracture": rf"fracture{_S}|fractured",
    "Support Devices": (
        r"picc(?: line)?|central (?:venous )?(?:line|catheter)|(?:endotracheal|et|ng|og|nasogastric|orogastric|enteric|feeding"
        r"|chest|tracheostomy) tubes?|pacemaker|pacer|defibrillator|icd|catheters?|port-?a-?cath|(?:sternotomy|sternal) wires?"
        r"|surgical clips?|stents?|prosthetic valve|valve replacement|drains?"
    ),
    "Lung Lesion": rf"nodules?|nodular|mass{_S}|lesions?|tumou?rs?|neoplasms?|carcinoma|malignancy",
    "Nodule/Mass": rf"nodules?|nodular|mass{_S}|tumou?rs?",
}
_ZH_MENTIONS: dict[str, str] = {
    "Enlarged Cardiomediastinum": r"纵隔(?:影)?增宽",
    "Cardiomegaly": r"心(?:脏|影)(?:增大|扩大|肥大)",
    "Lung Opacity": r"阴影|模糊影|斑片影|渗出|浸润|密度增高影",
    "Edema": r"肺水肿|水肿|肺淤血",
    "Consolidation": r"实变",
    "Pneumonia": r"肺炎",
    "Atelectasis": r"肺不张",
    "Pneumothorax": r"气胸",
    "Pleural Effusion": r"胸腔积液|积液",
    "Pleural Other": r"胸膜(?:增厚|粘连|钙化)",
    "Fracture": r"骨折",
    "Support Devices": r"起搏器|导管|置管|插管|引流管|胸管",
    "Lung Lesion": r"结节|肿块|占位|肿瘤|病灶",
    "Nodule/Mass": r"结节|肿块|肿瘤",
}
_MENTION_RE = {
    "en": {k: re.compile(rf"\b(?:{v})\b", re.I) for k, v in _EN_MENTIONS.items()},
    "zh": {k: re.compile(v) for k, v in _ZH_MENTIONS.items()},
}

_EN_CLAUSE_END = re.compile(
    r"[.;?!\n]|\b(?:but|however|although|though|except|aside from|apart from|which|there (?:is|are))\b", re.I
)
_ZH_CLAUSE_END = re.compile(r"[。；;，,！？!?\n]|但")

_EN_PSEUDO_NEG = re.compile(
    r"\bno (?:significant |interval |definite )?(?:change|increase|decrease|worsening|improvement)\b|\bnot only\b"
    r"|\bwithout (?:significant |interval )?change\b",
    re.I,
)
_EN_NEG_UNCERTAIN = re.compile(
    r"\b(?:cannot|can ?not|could not) (?:be )?(?:exclude|excluded|rule out|ruled out)\b|\bnot (?:be )?(?:excluded|ruled out)\b",
    re.I,
)
_EN_PRE_NEG = re.compile(
    r"\b(?:no|not|without|negative for|free of|no evidence of|no signs? of|absence of|resolved|resolution of|clear of"
    r"|ruled out)\b",
    re.I,
)
_EN_POST_NEG = re.compile(
    r"^\W*(?:\w+\W+){0,3}?(?:(?:is|are|was|were) )?(?:not (?:seen|identified|present|evident|appreciated|visualized|demonstrated)"
    r"|absent|(?:has|have) (?:resolved|cleared)|resolved|ruled out|no longer (?:seen|present|visible|evident))\b",
    re.I,
)
_EN_PRE_UNCERTAIN = re.compile(
    r"\b(?:possible|possibly|probable|probably|likely|may|might|could|questionable|question of|suspicious for|suspected"
    r"|suspect|concerning for|concern for|suggestive of|suggesting|suggests|differential|versus|vs|rule out|r/o"
    r"|evaluate for|assess for|borderline|equivocal|indeterminate)\b",
    re.I,
)
_EN_POST_UNCERTAIN = re.compile(
    r"^\W*(?:\w+\W+){0,3}?(?:(?:is|are) )?(?:possible|suspected|likely|questioned|versus|vs)\b", re.I
)

_ZH_NEG_UNCERTAIN = re.compile(r"不除外|不能排除|不排除|未能排除")
_ZH_PRE_NEG = re.compile(r"无|未见|未发现|没有|未|否认")
_ZH_POST_NEG = re.compile(r"^.{0,3}(?:已吸收|吸收|消失)")
_ZH_PRE_UNCERTAIN = re.compile(r"可能|疑似|可疑|疑|考虑|待排")
_ZH_POST_UNCERTAIN = re.compile(r"^.{0,3}(?:可能|待排)")


def _clauses(text: str, lang: str) -> list[str]:
    splitter = _ZH_CLAUSE_END if lang == "zh" else _EN_CLAUSE_END
    return [c for c in splitter.split(text) if c and c.strip()]


@dataclass(frozen=True)
class _StateCues:
    """One language's negation and uncertainty cues: `pre_*` are searched in the text before
    the mention, `post_*` in the text after it."""

    pre_neg: re.Pattern[str]
    post_neg: re.Pattern[str]
    pre_uncertain: re.Pattern[str]
    post_uncertain: re.Pattern[str]


_STATE_CUES = {
    "en": _StateCues(_EN_PRE_NEG, _EN_POST_NEG, _EN_PRE_UNCERTAIN, _EN_POST_UNCERTAIN),
    "zh": _StateCues(_ZH_PRE_NEG, _ZH_POST_NEG, _ZH_PRE_UNCERTAIN, _ZH_POST_UNCERTAIN),
}


def _mention_state(clause: str, start: int, end: int, lang: str) -> int:
    """1 positive, 0 negated, -1 uncertain for the mention clause[start:end]."""
    before, inside, after = clause[:start], clause[start:end], clause[end:]
    if lang == "zh":
        cues, head = _STATE_CUES["zh"], before
        neg_uncertain = _ZH_NEG_UNCERTAIN.search(before + inside) or _ZH_NEG_UNCERTAIN.search(after[:6])
    else:
        # English negation can sit inside the mention ("heart is not enlarged"); pseudo-
        # negations ("no change in the effusion") are blanked out before the search.
        cues = _STATE_CUES["en"]
        head = _EN_PSEUDO_NEG.sub(lambda m: " " * len(m.group()), before + inside)
        neg_uncertain = (
            _EN_NEG_UNCERTAIN.search(head) or _EN_NEG_UNCERTAIN.match(after.lstrip()) or _EN_NEG_UNCERTAIN.search(after[:40])
        )
    # Uncertainty phrases that hold a negation word ("cannot exclude") win over both rules.
    if neg_uncertain:
        return -1
    if cues.pre_neg.search(head) or cues.post_neg.search(after):
        return 0
    if cues.pre_uncertain.search(head) or cues.post_uncertain.search(after):
        return -1
    return 1


def extract_findings(text: str | None, lang: str = "en") -> dict[str, int]:
    """Label a report: {finding: 1 positive, 0 negative/not mentioned, -1 uncertain}.

    See the module docstring for the vocabulary and the negation/uncertainty rules.

    >>> f = extract_findings("Mild cardiomegaly. No pleural effusion or pneumothorax. Possible left basilar pneumonia.")
    >>> f["Cardiomegaly"], f["Pleural Effusion"], f["Pneumothorax"], f["Pneumonia"], f["No Finding"]
    (1, 0, 0, -1, 0)
    >>> extract_findings("双肺未见实变，右侧胸腔积液。", lang="zh")["Pleural Effusion"]
    1
    """
    lang = "zh" if lang.startswith("zh") else "en"
    labels = dict.fromkeys(FINDINGS, 0)
    seen: dict[str, set[int]] = {k: set() for k in FINDINGS}
    for clause in _clauses(text or "", lang):
        for name, pattern in _MENTION_RE[lang].items():
            for m in pattern.finditer(clause):
                seen[name].add(_mention_state(clause, m.start(), m.end(), lang))
    for name, states in seen.items():
        if 1 in states:
            labels[name] = 1
        elif -1 in states:
            labels[name] = -1
    abnormal = [k for k in CHEXPERT_OBSERVATIONS if k not in ("No Finding", "Support Devices") and labels[k] != 0]
    labels["No Finding"] = 0 if abnormal else 1
    return labels


def _binary(labels: Mapping[str, int], names: Sequence[str], uncertain_as: int) -> list[int]:
    return [1 if labels[n] == 1 else (uncertain_as if labels[n] == -1 else 0) for n in names]


def ce_metrics(
    preds: Sequence[str | Mapping[str, int]],
    refs: Sequence[str | Mapping[str, int]],
    lang: str = "en",
    uncertain_as: int = 0,
) -> dict[str, Any]:
    """Clinical-efficacy precision, recall and F1 of generated vs reference reports.

    `preds` and `refs` are report texts (labelled with `extract_findings`) or label dicts
    already extracted. Returns precision, recall, f1 (micro over the 14 CheXpert
    observations), macro_precision/recall/f1, example_precision/recall/f1 (per report,
    averaged), per_finding {name: {precision, recall, f1, support}} over every finding
    including Nodule/Mass, n and uncertain_as.
    """
    if len(preds) != len(refs):
        raise ValueError(f"preds and refs differ in length ({len(preds)} vs {len(refs)})")
    if uncertain_as not in (0, 1):
        raise ValueError("uncertain_as must be 0 or 1")
    pred_labels = [p if isinstance(p, Mapping) else extract_findings(p, lang) for p in preds]
    ref_labels = [r if isinstance(r, Mapping) else extract_findings(r, lang) for r in refs]
    out: dict[str, Any] = {"n": len(preds), "uncertain_as": uncertain_as, "observations": list(CHEXPERT_OBSERVATIONS)}
    if not preds:
        for k in ("precision", "recall", "f1"):
            out[k] = float("nan")
        out["per_finding"] = {}
        return out
    y_pred = np.array([_binary(p, FINDINGS, uncertain_as) for p in pred_labels])  # (reports, findings)
    y_true = np.array([_binary(r, FINDINGS, uncertain_as) for r in ref_labels])  # (reports, findings)
    core = slice(0, len(CHEXPERT_OBSERVATIONS))
    for avg, prefix in (("micro", ""), ("macro", "macro_"), ("samples", "example_")):
        p, r, f, _ = precision_recall_fscore_support(y_true[:, core], y_pred[:, core], average=avg, zero_division=0)
        out[f"{prefix}precision"], out[f"{prefix}recall"], out[f"{prefix}f1"] = float(p), float(r), float(f)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    out["per_finding"] = {
        name: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]), "support": int(s[j])}
        for j, name in enumerate(FINDINGS)
    }
    return out
