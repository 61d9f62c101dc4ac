"""The diagnose prompt: evidence numbered `[E1]...`, the disease head's decision, and the scaffold of the reasoning.

`build_prompt` writes the (system, user) messages of one case: input placeholders, the
numbered evidence list, the notes, the candidates, the finding head's boxes and the
task. With a `HeadDecision` the task is to explain that decision: one rationale per
reported disease citing evidence ids, and a line for the considered-but-absent ones;
`reasoning_plan` is the matching scaffold for the constrained decoder
(`medfuse.model.constrained`): the code writes "<think>Heart failure: supported by", the
model picks among `rationale_options` (the items tied to that disease) and the ids it
cites, and so on. The answer is the head's set, written by code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medfuse.formats import format_box, text_language
from medfuse.knowledge.panel import Panel
from medfuse.model.constrained import FactVocabulary, ReasoningPlan
from medfuse.model.faithfulness import evidence_supports
from medfuse.model.reasoning_terms import ECG_LEAD_FINDING_TERMS, lead_mentions
from medfuse.record.case import MODALITIES, PatientCase
from medfuse.record.evidence import Evidence

MAX_CITED_IDS = 3
"""Ids a rationale's citation sentence holds at most (its decode budget is sized for them)."""

__all__ = ["MAX_CITED_IDS", "PLACEHOLDERS", "HeadDecision", "build_prompt", "evidence_facts", "format_considered",
           "head_decision", "numbered_evidence", "parse_numbered_evidence", "rationale_header", "rationale_options",
           "reasoning_plan",
           "supporting_ids"]

# --------------------------------------------------------------------------- pieces

# Every phrase of the prompt beside its translations, so no language can lack a phrase
# another has (building `_TEXT` below fails on a missing one).
_PHRASES: dict[str, dict[str, Any]] = {
    "system": {"en": "You are a careful medical expert.", "zh": "你是一名严谨的医学专家。"},
    "inputs": {"en": "Inputs", "zh": "输入"},
    "names": {  # fused-token group -> its name in the inputs line
        "en": {"cxr": "chest X-ray", "ecg": "ECG", "labs": "labs", "vitals": "vital signs", "notes": "notes",
               "genomics": "genomics", "clues": "disease clues"},
        "zh": {"cxr": "胸片", "ecg": "心电图", "labs": "化验", "vitals": "生命体征", "notes": "病历",
               "genomics": "基因检测", "clues": "疾病线索"},
    },
    "evidence": {"en": "Measured evidence", "zh": "测量证据"},
    "notes": {"en": "Notes", "zh": "病历"},
    # A note in the other language is quoted as source material, and the prompt says in
    # which language to answer: without that, a Chinese note pulls an English request
    # into Chinese reasoning (and the reverse).
    "quoted_note": {"en": 'Notes ({type}, written in {language}, quoted as source material): "{text}"',
                    "zh": "病历（{type}，{language}原文，仅作为原始资料引用）：“{text}”"},
    "language_names": {"en": {"en": "English", "zh": "Chinese"}, "zh": {"en": "英文", "zh": "中文"}},
    "answer_language": {
        "en": "The notes quoted above are in {language}; write the reasoning and the answer in English.",
        "zh": "上面引用的病历为{language}；请用中文书写推理和答案。",
    },
    "candidates": {"en": "Candidate diseases", "zh": "候选疾病"},
    "task": {
        "en": ("Reason step by step inside <think></think>, citing only the values above, then give every disease "
               "the patient has from the candidates, separated by ';', inside <answer></answer>; write "
               "<answer>none</answer> if none applies."),
        "zh": ("请先在 <think></think> 中逐步推理，只引用上面的数值，然后在 <answer></answer> 中列出患者所患的全部候选疾病，"
               "用 ';' 分隔；若都不符合，请写 <answer>none</answer>。"),
    },
    # Decision-conditioned task: the head has decided, the model explains.
    "decision": {"en": "Disease head decision", "zh": "疾病判定头的决定"},
    "reported": {"en": "reported", "zh": "报告"},
    "considered": {"en": "considered, not reported", "zh": "考虑但未报告"},
    "nothing_reported": {"en": "no disease reaches its threshold", "zh": "没有疾病达到阈值"},
    "explain_task": {
        "en": ("The decision above is final. Inside <think></think> write one line per reported disease, "
               "'Disease: rationale.', citing the evidence it rests on by id, e.g. [E2]; quote only the values "
               "above. End with one line for the considered diseases that are not reported."),
        "zh": ("上面的决定是最终的。请在 <think></think> 中为每个报告的疾病写一行“疾病：理由。”，用编号引用所依据的证据，"
               "例如 [E2]；只引用上面的数值。最后用一行说明考虑但未报告的疾病。"),
    },
    "considered_line": {"en": "Considered, not reported (below threshold): {names}.",
                        "zh": "考虑但未报告（低于阈值）：{names}。"},
    "none_reported_line": {"en": "No candidate disease reaches its decision threshold.",
                           "zh": "没有候选疾病达到其判定阈值。"},
    "list_sep": {"en": ", ", "zh": "、"},
    # The decoder opens the citation sentence of a rationale line; the model picks the ids.
    "cite_opener": {"en": " Evidence: [E", "zh": "证据：[E"},
    # A rationale names the items tied to its disease: "Heart failure: supported by
    # BNP (high), SpO2 (hypoxaemia)." / "心力衰竭：BNP（high）、SpO2（hypoxaemia）支持该诊断。"
    "supported_by": {"en": " supported by", "zh": ""},
    "choice_lead": {"en": " ", "zh": ""},
    "choice_end": {"en": ".", "zh": "支持该诊断。"},
    # A reported disease no listed item is tied to (as the training targets word it).
    "rationale_unsupported": {"en": " no listed evidence item shows it directly.",
                              "zh": "列出的证据未直接显示该病。"},
    # Items are tied to it but none can be named faithfully: the ids that follow say which.
    "rationale_cited_only": {"en": " supported by the listed evidence cited below.",
                             "zh": "由下面引用的证据支持。"},
    "cite_close": {"en": ".", "zh": "。"},
    "located": {"en": "Image findings located by the image encoder", "zh": "影像编码器定位的影像所见"},
    "none_located": {"en": "Image findings located by the image encoder: none", "zh": "影像编码器定位的影像所见: 无"},
    "no_data": {"en": "No clinical data recorded.", "zh": "无临床数据。"},
    "off_language": {"en": "[this reasoning is not in English, the requested language: the model drifted; rely on "
                           "the diagnoses, the evidence and the report]",
                     "zh": "[此推理不是所要求的中文：模型输出偏离了语言要求；请以诊断、证据和报告为准]"},
}
# language -> phrase -> text: the prompt in one language.
_TEXT: dict[str, dict[str, Any]] = {lang: {key: texts[lang] for key, texts in _PHRASES.items()} for lang in ("en", "zh")}

# Placeholder token of each fused-token group (M2's special tokens).
PLACEHOLDERS = {"cxr": "<cxr>", "ecg": "<ecg>", "labs": "<labs>", "vitals": "<vitals>", "notes": "<notes>",
                "genomics": "<genomics>", "clues": "<clue>"}


def build_prompt(case: PatientCase, evidence: list[Evidence], panel: Panel, lang: str = "en",
                 token_groups: Sequence[str] = (),
                 findings: Sequence[tuple[str, Sequence[Sequence[int]]]] | None = None,
                 decision: HeadDecision | None = None) -> tuple[str, str]:
    """(system, user) messages for one case.

    `token_groups` are the fused-token groups present for this case (modalities, plus
    "clues"); each gets its placeholder, which the language model replaces by that
    group's projected tokens. Evidence is cited as 'item value unit (reading) [source]',
    the form the faithfulness check reads back. `findings` are the image findings the
    finding head located, (label, boxes) on the 0-999 grid (at training time: the labelled
    ones); with an image and `findings=None` (an untrained head) the line is left out.

    A note written in the other language is quoted as source material, and a last line
    asks for the reasoning and the answer in `lang`; a prompt whose notes are all in
    `lang` is unchanged by this.

    Evidence items are numbered `[E1]`, `[E2]`, ... (`numbered_evidence`), the ids a
    rationale cites. With `decision`, the head's reported diseases (with probabilities)
    and the considered-but-absent ones are stated and the task is to explain them;
    without it, the task is the free `<think>/<answer>` diagnosis.
    """
    t = _TEXT[lang]
    lines: list[str] = []
    groups = [g for g in (*MODALITIES, "clues") if g in token_groups]
    if groups:
        lines.append(f"{t['inputs']}: " + ", ".join(f"{t['names'][g]} {PLACEHOLDERS[g]}" for g in groups))
    cited = [ev.cite() for ev in numbered_evidence(evidence)]
    if cited:
        lines.append(f"{t['evidence']}:\n" + "\n".join(f"[E{k}] {c}" for k, c in enumerate(cited, 1)))
    foreign: list[str] = []  # languages of the notes not written in `lang`, in order of appearance
    for note in case.notes:
        text = " ".join(note.text.split())[:600]
        written_in = text_language(text)
        if written_in is None or written_in == lang:
            lines.append(f"{t['notes']} ({note.type}): {text}")
            continue
        language = t["language_names"][written_in]
        lines.append(t["quoted_note"].format(type=note.type, language=language, text=text))
        if language not in foreign:
            foreign.append(language)
    if not cited and not case.notes and not groups:
        lines.append(t["no_data"])
    lines.append(f"{t['candidates']}: " + "; ".join(d.display(lang) for d in panel))
    if case.cxr and findings is not None:
        located = "; ".join(format_box(label, boxes) for label, boxes in findings)
        lines.append(f"{t['located']}: {located}" if located else t["none_located"])
    if decision is not None:
        lines.append(_decision_line(decision, panel, lang))
    lines.append(t["task"] if decision is None else t["explain_task"])
    if foreign:
        # After the task paragraph, which the instruction-data variants replace: the
        # language line stays in every variant.
        lines.append(t["answer_language"].format(language=("、" if lang == "zh" else " and ").join(foreign)))
    return t["system"], "\n\n".join(lines)



def numbered_evidence(evidence: Sequence[Evidence]) -> list[Evidence]:
    """The evidence items the prompt lists, in order: item k (1-based) is `[Ek]`.

    Abnormal items, plus the demographics, image and genomics items (context a rationale
    may need even when normal).
    """
    return [ev for ev in evidence if ev.abnormal or ev.modality in ("demographics", "cxr", "genomics")]


def supporting_ids(numbered: Sequence[Evidence], disease_key: str) -> list[int]:
    """Ids (1-based) of the numbered items the panel's evidence rules tie to `disease_key`."""
    return [k for k, ev in enumerate(numbered, 1) if disease_key in evidence_supports(ev)]


@dataclass(frozen=True)
class HeadDecision:
    """The disease head's decision for one case, as the prompt states it."""

    reported: tuple[tuple[str, float], ...]  # (panel key, probability), most probable first
    considered: tuple[tuple[str, float], ...]  # below threshold but not negligible, most probable first


def head_decision(probabilities: np.ndarray, thresholds: np.ndarray, panel: Panel, skip: Sequence[str] = (),
                  max_considered: int = 3, min_considered: float = 0.1) -> HeadDecision:
    """Reported = diseases at or above their threshold; considered = the `max_considered`
    most probable others with probability >= `min_considered`. `skip`: keys not assessed."""
    reported, others = [], []
    for j, d in enumerate(panel):
        if d.key in skip:
            continue
        p = float(probabilities[j])
        (reported if p >= float(thresholds[j]) else others).append((d.key, round(p, 2)))
    reported.sort(key=lambda x: -x[1])
    others = sorted((x for x in others if x[1] >= min_considered), key=lambda x: -x[1])[:max_considered]
    return HeadDecision(reported=tuple(reported), considered=tuple(others))


def _decision_line(decision: HeadDecision, panel: Panel, lang: str) -> str:
    t = _TEXT[lang]
    stop, colon = ("。", "：") if lang == "zh" else (". ", ": ")
    reported = "; ".join(f"{panel.by_key(k).display(lang)} {p:.2f}" for k, p in decision.reported)
    line = f"{t['decision']}{colon}{t['reported']}{colon}{reported or t['nothing_reported']}"
    if decision.considered:
        line += f"{stop}{t['considered']}{colon}" + "; ".join(f"{panel.by_key(k).display(lang)} {p:.2f}"
                                                             for k, p in decision.considered)
    return line + stop.strip()


def rationale_header(disease_key: str, panel: Panel, lang: str) -> str:
    """The scaffold a rationale line starts with: 'Heart failure:' / '心力衰竭：'."""
    return panel.by_key(disease_key).display(lang) + ("：" if lang == "zh" else ":")


def format_considered(decision: HeadDecision, panel: Panel, lang: str) -> str:
    """The code-written line of considered-but-absent diseases ('' when a disease is reported and none is considered)."""
    t = _TEXT[lang]
    names = t["list_sep"].join(panel.by_key(k).display(lang) for k, _ in decision.considered)
    considered = t["considered_line"].format(names=names) if decision.considered else ""
    if decision.reported:
        return considered
    return t["none_reported_line"] + ((" " if lang == "en" else "") + considered if considered else "")


def evidence_facts(numbered: Sequence[Evidence]) -> FactVocabulary:
    """The numbers (as the prompt writes them) and ECG leads a rationale may quote."""
    numbers: set[str] = set()
    leads: set[str] = set()
    for ev in numbered:
        if isinstance(ev.value, bool) or ev.value is None or isinstance(ev.value, list):
            pass
        elif isinstance(ev.value, (int, float)):
            numbers.add(f"{ev.value:g}")
        else:
            numbers.update(_numbers_in_text(str(ev.value)))
        # Readings quote numbers too ("stage 2 hypertension").
        numbers.update(_numbers_in_text(ev.interpretation))
        if ev.modality == "ecg":
            for _, _, names in lead_mentions(f"{ev.item} {ev.source.removeprefix('ecg:')}", ecg_context=True):
                leads.update(names)
    return FactVocabulary(numbers=frozenset(numbers), leads=frozenset(leads))


def _numbers_in_text(text: str) -> list[str]:
    return re.findall(r"(?<![A-Za-z0-9.])\d+(?:\.\d+)?", text)


def rationale_options(numbered: Sequence[Evidence], disease_key: str, lang: str = "en") -> list[str]:
    """The phrases a rationale for `disease_key` may name: one per item of the numbered
    list that the panel's evidence rules tie to it (`supporting_ids`, the rule the checker
    applies too), spelled as the list spells the item, with its reading and no numbers:
    'creatinine (high)', 'blood pressure (stage 2 hypertension)', 'EGFR p.L858R
    (pathogenic)', an image finding by its label; ECG lead findings grouped as the reader
    reported them: 'ST depression (II, III, aVF)'."""
    open_, close, sep = ("（", "）", "、") if lang == "zh" else (" (", ")", ", ")
    phrases: list[str | tuple[str]] = []
    leads: dict[str, list[str]] = {}
    for k in supporting_ids(numbered, disease_key):
        ev = numbered[k - 1]
        name = ev.item.replace("_", " ")
        reading = ev.interpretation.replace("_", " ")
        lead = next((label for label in ECG_LEAD_FINDING_TERMS if ev.modality == "ecg"
                     and ev.item.startswith(label + " ")), None)
        if lead is not None:
            if lead not in leads:
                leads[lead] = []
                phrases.append((lead,))
            leads[lead].append(ev.item[len(lead) + 1:])
            continue
        if ev.modality == "cxr":
            phrase = name
        elif ev.modality == "genomics" and isinstance(ev.value, str) and ev.value:
            phrase = f"{name} {ev.value}{open_}{reading}{close}"
        else:
            phrase = f"{name}{open_}{reading}{close}"
        if phrase not in phrases:
            phrases.append(phrase)
    return [p if isinstance(p, str) else f"{p[0]}{open_}{sep.join(leads[p[0]])}{close}" for p in phrases]


def reasoning_plan(decision: HeadDecision, numbered: Sequence[Evidence], panel: Panel, lang: str = "en",
                   max_new_tokens: int = 128, token_count: Any = len, min_budget: int = 12,
                   max_budget: int = 40, cite_budget: int = 3 * MAX_CITED_IDS + 1,
                   accept: Callable[[str], bool] | None = None) -> ReasoningPlan:
    """The scaffold of one reasoning for the constrained decoder.

    Per reported disease: its header ("<think>Heart failure: supported by") is forced,
    then a choice slot in which the model names one or more of `rationale_options` (the
    items the evidence list ties to that disease, whole, as the list spells them) and
    the sentence ends; when some listed evidence is tied to the disease, the decoder
    opens " Evidence: [E" and the model picks the ids among those items, then "." is
    forced. A disease nothing in the list is tied to (decided from a variant class, the
    notes or the fused inputs) gets a code-written sentence that says so. Then the
    code-written considered line and "</think>"; the end of sequence closes it.

    `accept(sentence)` vets every sentence the plan can produce: each option is kept
    only when the rationale naming it alone passes (the caller passes the faithfulness
    checker, so what the decoder may write and what the checker keeps are one rule).
    The choice slots share what `max_new_tokens` leaves after the forced text and the
    citation slots (`token_count(text)` counts it), each between `min_budget` and
    `max_budget` tokens.
    """
    t = _TEXT[lang]
    reported = [k for k, _ in decision.reported]
    headers = [("<think>" if i == 0 else "\n") + rationale_header(k, panel, lang) for i, k in enumerate(reported)]
    cites = [supporting_ids(numbered, k) for k in reported]
    lines = []  # per reported disease: (forced text, options or None)
    for key, header, ids in zip(reported, headers, cites):
        plain = header.removeprefix("<think>").lstrip("\n")
        opener = plain + t["supported_by"]
        options = [o for o in rationale_options(numbered, key, lang)
                   if accept is None or accept(opener + t["choice_lead"] + o + t["choice_end"])]
        if options:
            lines.append((header + t["supported_by"], options))
        else:
            # Nothing listed is tied to it, or nothing tied to it can be named faithfully:
            # the sentence says which, and claims nothing else.
            lines.append((header + (t["rationale_cited_only"] if ids else t["rationale_unsupported"]), None))
    considered = format_considered(decision, panel, lang)
    if reported:
        closing = ("\n" + considered if considered else "") + "</think>"
    else:
        closing = "<think>" + considered + "</think>"
    cite_tokens = token_count(t["cite_opener"]) + cite_budget + token_count(t["cite_close"])
    forced = (sum(token_count(text) for text, _ in lines) + token_count(closing) + 1
              + sum(cite_tokens for ids in cites if ids))
    per_slot = (max_new_tokens - forced) // max(1, sum(options is not None for _, options in lines))
    budget = max(min_budget, min(max_budget, per_slot))
    plan = ReasoningPlan()
    for (text, options), ids in zip(lines, cites):
        plan.forced(text)
        if options is not None:
            plan.choice(budget, options, separator=t["list_sep"], lead=t["choice_lead"], end=t["choice_end"])
        if ids:
            plan.forced(t["cite_opener"]).citation(cite_budget, ids).forced(t["cite_close"])
    plan.forced(closing)
    plan.forced("")  # the end of sequence
    return plan


_NUMBERED_LINE = re.compile(r"^\[E(\d+)\] (?P<body>.*?) \((?P<reading>[^()]*)\) \[(?P<source>[^\[\]]*(?:\[\d+\][^\[\]]*)?)\]$",
                            re.MULTILINE)
_NOT_ABNORMAL_READINGS = frozenset({"normal", "female", "male", "adult", "older adult"})


def parse_numbered_evidence(user: str) -> list[Evidence]:
    """The numbered evidence list of a prompt written by `build_prompt`, read back.

    For rewards, which see only the prompt text: each item keeps its modality (from the
    source), its name (the longest leading words an evidence rule knows, else the first
    word) and its reading, enough for `evidence_supports`. Values and genomics' supported
    disease are not recovered.
    """
    from medfuse.knowledge.evidence_support import support_rules

    out: list[Evidence] = []
    for m in _NUMBERED_LINE.finditer(user):
        source = m.group("source")
        modality = source.split("[")[0].split(":")[0]
        if modality not in ("cxr", "ecg", "labs", "vitals", "notes", "genomics", "demographics"):
            continue
        words = m.group("body").split()
        item = words[0] if words else "item"
        for n in range(len(words), 0, -1):
            candidate = " ".join(words[:n])
            if any(r.modality == modality and r.matches_item(candidate) for r in support_rules()):
                item = candidate
                break
        reading = m.group("reading")
        out.append(Evidence(modality=modality, item=item, interpretation=reading,
                            abnormal=reading not in _NOT_ABNORMAL_READINGS, source=source))
    return out
