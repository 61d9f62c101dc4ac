"""`diagnose`: one case (or a batch) in, a checked multi-disease diagnosis out.

The pipeline for a batch of cases:

1. `interpret_case` reads every modality into `Evidence` items; each item is checked
   against the case (`evidence_in_case`) before it is shown.
2. The fusion model (`MedFuse.fuse`) gives calibrated per-disease probabilities, the
   per-modality gates (the reported modality weights) and the fused tokens.
3. The language model writes `<think>reasoning</think><answer>...</answer>` (plus
   `<ref>label</ref><box>[[...]]</box>` findings when there is an image) from a prompt
   holding the modality placeholders and the case's evidence, in the requested language
   (a note in the other language is quoted as source material, and the prompt says which
   language to answer in; in English no token outside ASCII can be generated).
4. The reasoning is checked sentence by sentence (`check_reasoning`): unsupported claims
   are removed and listed as flagged, never shown as fact; boxes are parsed with
   `medfuse.formats.parse_boxes` and kept only when valid on the 0-999 grid and the case
   has an image.
5. Diseases for which none of the panel's evidence modalities is present are reported in
   `insufficient_data` and get no probability (no guessing).

The disease set (`present`) comes from the calibrated head and its stored per-disease
thresholds; the language model explains, it does not overrule the head. The `report`
is assembled from checked parts only (head decisions, abnormal evidence, findings).
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from medfuse.formats import format_box, parse_boxes, parse_think, text_language
from medfuse.knowledge.panel import Panel
from medfuse.model.faithfulness import ReasoningCheck, check_reasoning, evidence_in_case
from medfuse.record.case import MODALITIES, PatientCase
from medfuse.record.evidence import Evidence

if TYPE_CHECKING:
    from medfuse.model import MedFuse

__all__ = [
    "DiagnoseResult",
    "Diagnosed",
    "build_prompt",
    "diagnose",
    "diagnose_many",
    "format_result",
    "insufficient_diseases",
]


# --------------------------------------------------------------------------- output schema

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiagnosisEntry(_Strict):
    name: str = Field(..., description="Panel disease name (Chinese name with lang=zh).")
    icd10: str | None = Field(None, description="The panel's first ICD-10 code prefix for the disease.")
    probability: float = Field(..., ge=0.0, le=1.0, description="Calibrated probability from the disease head.")
    present: bool = Field(..., description="probability >= the disease's stored decision threshold.")


class EvidenceEntry(_Strict):
    modality: str
    item: str
    value: float | str | list[int] | bool | None = Field(None, description="The value as found in the case.")
    interpretation: str
    source: str = Field(..., description="Where in the case the value is: 'labs[3]', 'ecg:lead II', 'cxr[0]:finding 1'.")


class FindingEntry(_Strict):
    label: str
    box: list[int] = Field(..., min_length=4, max_length=4, description="[x1, y1, x2, y2] on the 0-999 grid.")


class ModalityWeights(_Strict):
    ecg: float = Field(..., ge=0.0, le=1.0)
    cxr: float = Field(..., ge=0.0, le=1.0)
    labs: float = Field(..., ge=0.0, le=1.0)
    vitals: float = Field(..., ge=0.0, le=1.0)
    notes: float = Field(..., ge=0.0, le=1.0)
    genomics: float = Field(..., ge=0.0, le=1.0)


class ModelInfo(_Strict):
    name: str
    version: str


class DiagnoseResult(_Strict):
    """The JSON `medfuse diagnose --json` prints, one object per case."""

    case_id: str
    diagnoses: list[DiagnosisEntry] = Field(..., description="Every panel disease with enough data, in panel order.")
    evidence: list[EvidenceEntry] = Field(..., description="Interpreted facts of the case, each checked against it.")
    findings: list[FindingEntry] = Field(..., description="Image findings the model located (0-999 boxes).")
    modality_weights: ModalityWeights = Field(..., description="Perception-layer gates; 0 for missing modalities.")
    reasoning: str = Field(..., description="The model's reasoning with unsupported statements removed.")
    reasoning_language: Literal["en", "zh"] | None = Field(
        None, description="The language the reasoning is written in, by its script (None: no reasoning). When it is "
                          "not the requested language the model drifted, and the reasoning ends with a warning.")
    report: str = Field(..., description="Summary assembled from the checked parts above.")
    insufficient_data: list[str] = Field(..., description="Panel diseases none of whose evidence modalities is present.")
    model: ModelInfo


@dataclass
class Diagnosed:
    """A result with what the user-facing JSON leaves out: the flagged claims and the raw text."""

    result: DiagnoseResult
    check: ReasoningCheck
    raw_text: str
    dropped_findings: list[str] = field(default_factory=list)
    dropped_evidence: int = 0
    evidence: list[Evidence] = field(default_factory=list)  # the checked items behind `result.evidence` (units, flags)


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
                 findings: Sequence[tuple[str, Sequence[Sequence[int]]]] | None = None) -> tuple[str, str]:
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
    """
    t = _TEXT[lang]
    lines: list[str] = []
    groups = [g for g in (*MODALITIES, "clues") if g in token_groups]
    if groups:
        lines.append(f"{t['inputs']}: " + ", ".join(f"{t['names'][g]} {PLACEHOLDERS[g]}" for g in groups))
    cited = [ev.cite() for ev in evidence if ev.abnormal or ev.modality in ("demographics", "cxr", "genomics")]
    if cited:
        lines.append(f"{t['evidence']}:\n" + "\n".join(f"- {c}" for c in cited))
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
    lines.append(t["task"])
    if foreign:
        # After the task paragraph, which the instruction-data variants replace: the
        # language line stays in every variant.
        lines.append(t["answer_language"].format(language=("、" if lang == "zh" else " and ").join(foreign)))
    return t["system"], "\n\n".join(lines)


def insufficient_diseases(case: PatientCase, panel: Panel) -> list[str]:
    """Keys of the panel diseases for which the case has none of the evidence modalities.

    The panel lists, per disease, the modalities that carry its evidence; a disease whose
    list shares nothing with the case's modalities cannot be judged from this case.
    """
    present = set(case.modalities())
    out = []
    for d in panel:
        needed = {m for m in d.evidence if m in MODALITIES}
        if needed and not needed & present:
            out.append(d.key)
    return out


def _checked_evidence(case: PatientCase, evidence: list[Evidence]) -> tuple[list[Evidence], int]:
    """The evidence items whose values are found where they cite, and how many were not."""
    kept = [ev for ev in evidence if evidence_in_case(ev, case)]
    # An interpreter bug must not put an unverifiable value in front of a clinician.
    return kept, len(evidence) - len(kept)


def _entry(ev: Evidence) -> EvidenceEntry:
    value = ev.value
    if isinstance(value, float) and not math.isfinite(value):
        value = None  # NaN/inf are not JSON; an unmeasurable value is reported as absent
    return EvidenceEntry(modality=ev.modality, item=ev.item, value=value, interpretation=ev.interpretation,
                         source=ev.source)


def _findings(text: str, case: PatientCase, located: Sequence[tuple[str, list[int]]] = ()) -> tuple[list[FindingEntry], list[str]]:
    """The finding head's boxes (`located`), then the valid boxes of the generated text for
    labels the head did not report, and a reason for each box that was dropped.

    The finding head localises on the image patches; the language model only sees pooled
    image tokens, so where the two name the same finding the head's box is kept.
    """
    kept: list[FindingEntry] = [FindingEntry(label=label, box=list(box)) for label, box in located]
    by_head = {f.label for f in kept}
    dropped: list[str] = []
    for label, boxes in parse_boxes(text):
        label = " ".join(label.split())
        for box in boxes:
            if not case.cxr:
                dropped.append(f"{label or 'unlabelled'}: a box but the case has no image")
            elif not label:
                dropped.append("a box without a label")
            elif not all(0 <= v <= 999 for v in box) or box[2] < box[0] or box[3] < box[1]:
                dropped.append(f"{label}: box {box} is not a valid 0-999 box")
            elif label in by_head:
                dropped.append(f"{label}: the finding head's box is reported instead of the generated {box}")
            elif not any(f.label == label and f.box == box for f in kept):
                kept.append(FindingEntry(label=label, box=box))
    return kept, dropped


def _grouped(found: Sequence[tuple[str, list[int]]]) -> list[tuple[str, list[list[int]]]]:
    """[(label, box)] -> [(label, [boxes])] in first-seen order (bilateral findings: one entry)."""
    out: dict[str, list[list[int]]] = {}
    for label, box in found:
        out.setdefault(label, []).append(list(box))
    return list(out.items())


def _reasoning_source(text: str) -> str:
    """The reasoning part of a generation: the <think> block, else the text without tags."""
    think = parse_think(text)
    return think if think is not None else text


def _language_kwargs(model: MedFuse, lang: str, generate_kwargs: dict | None) -> dict:
    """`generate_kwargs`, plus for English the tokens that cannot be English suppressed.

    The English targets the language model is trained on are plain ASCII, so in English
    no token that decodes to anything else (Chinese characters, or the byte pieces of
    one) is ever right: suppressing them keeps a Chinese note from pulling the reasoning
    into Chinese, and leaves every all-ASCII generation as it was. Chinese text cannot
    be guarded that way (it cites English codes), hence the language check after.
    """
    kwargs = dict(generate_kwargs or {})
    if lang == "en":
        # `suppress_tokens` replaces the language model's own list (its placeholders).
        kept = kwargs.get("suppress_tokens", model.lm.placeholder_ids.values())
        kwargs["suppress_tokens"] = sorted({*kept, *_non_ascii_token_ids(model.lm.tokenizer)})
    return kwargs


@functools.lru_cache(maxsize=4)
def _non_ascii_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """Ids of the tokens that decode to text outside ASCII (~900 of SmolLM's 49k)."""
    return tuple(i for i in range(len(tokenizer)) if not tokenizer.decode([i]).isascii())


def _report(lang: str, diagnoses: list[DiagnosisEntry], evidence: list[Evidence], findings: list[FindingEntry],
            insufficient: list[str], panel: Panel) -> str:
    present = sorted((d for d in diagnoses if d.present), key=lambda d: -d.probability)
    abnormal = [e for e in evidence if e.abnormal]
    if lang == "zh":
        parts = ["印象: " + ("; ".join(f"{d.name} (概率 {d.probability:.2f})" for d in present) if present else "未发现达到阈值的候选疾病") + "。"]
        if findings:
            parts.append("影像所见: " + "; ".join(f"{f.label} {f.box}" for f in findings) + "。")
        if abnormal:
            parts.append("主要证据: " + "; ".join(_cite(e) for e in abnormal[:8]) + "。")
        if insufficient:
            parts.append("数据不足，无法判断: " + "、".join(panel.by_key(k).display("zh") for k in insufficient) + "。")
        return "".join(parts)
    parts = ["Impression: " + ("; ".join(f"{d.name} (probability {d.probability:.2f})" for d in present)
                               if present else "no candidate disease above its threshold") + "."]
    if findings:
        parts.append("Image findings: " + "; ".join(f"{f.label} at {f.box}" for f in findings) + ".")
    if abnormal:
        parts.append("Key evidence: " + "; ".join(_cite(e) for e in abnormal[:8]) + ".")
    if insufficient:
        parts.append("Insufficient data to assess: " + ", ".join(panel.by_key(k).name for k in insufficient) + ".")
    return " ".join(parts)


def _cite(e: Evidence | EvidenceEntry) -> str:
    value = f"{e.value:g}" if isinstance(e.value, float) else "" if e.value is None else str(e.value)
    unit = f" {e.unit}" if getattr(e, "unit", None) else ""
    return f"{e.item} {value}{unit} ({e.interpretation})".replace("  ", " ")


# --------------------------------------------------------------------------- entry points

def diagnose(model: MedFuse, case: PatientCase, lang: Literal["en", "zh"] = "en", max_new_tokens: int = 128) -> DiagnoseResult:
    """Diagnose one case (see the module docstring for what is checked)."""
    return diagnose_many(model, [case], lang=lang, max_new_tokens=max_new_tokens)[0].result


def diagnose_many(model: MedFuse, cases: Sequence[PatientCase], lang: Literal["en", "zh"] = "en",
                  max_new_tokens: int = 128, evidence: Sequence[list[Evidence]] | None = None,
                  generate_kwargs: dict | None = None) -> list[Diagnosed]:
    """Diagnose a batch of cases in one fusion pass and one batched generation.

    `evidence` may pass `interpret_case` results computed earlier; `generate_kwargs` go to
    the language model's `generate` (the benchmark forces a token count with them).
    """
    from medfuse.interpret.case import interpret_case

    if lang not in _TEXT:
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")
    panel = model.panel
    evidence = list(evidence) if evidence is not None else [interpret_case(c) for c in cases]
    fused = model.fuse(cases)
    located = model.card.get("findings_trained")
    prompts = [build_prompt(case, ev, panel, lang, token_groups=fused.token_groups[i],
                            findings=_grouped(fused.findings[i]) if located else None)
               for i, (case, ev) in enumerate(zip(cases, evidence, strict=True))]
    texts = model.generate(prompts, fused, max_new_tokens=max_new_tokens, **_language_kwargs(model, lang, generate_kwargs))
    out: list[Diagnosed] = []
    for i, case in enumerate(cases):
        insufficient = insufficient_diseases(case, panel)
        diagnoses = []
        for j, d in enumerate(panel):
            if d.key in insufficient:
                continue  # no probability without the data to back it
            p = float(fused.probabilities[i, j])
            diagnoses.append(DiagnosisEntry(name=d.display(lang), icd10=d.icd10[0] if d.icd10 else None,
                                            probability=round(p, 4), present=bool(p >= fused.thresholds[j])))
        kept_evidence, n_bad = _checked_evidence(case, evidence[i])
        findings, dropped_boxes = _findings(texts[i], case, fused.findings[i])
        check = check_reasoning(_reasoning_source(texts[i]), case, evidence[i], panel,
                                findings=[label for label, _ in fused.findings[i]] if located else None)
        reasoning = check.text
        # A small language model can drift into the language of a quoted note; what it
        # wrote is shown, marked, never passed off as an answer in the requested language.
        written_in = text_language(reasoning)
        if written_in not in (None, lang):
            reasoning = f"{reasoning} {_TEXT[lang]['off_language']}"
        if check.dropped:
            note = ("[已删除 {n} 条病例数据不支持的陈述]" if lang == "zh"
                    else "[{n} statement(s) not supported by this case's data were removed]")
            reasoning = f"{reasoning} {note.format(n=len(check.dropped))}".strip()
        gates = fused.gates[i]
        weights = ModalityWeights(**{m: round(float(gates[k]), 4) for k, m in enumerate(MODALITIES)})
        result = DiagnoseResult(
            case_id=case.case_id, diagnoses=diagnoses, evidence=[_entry(ev) for ev in kept_evidence],
            findings=findings, modality_weights=weights, reasoning=reasoning, reasoning_language=written_in,
            report=_report(lang, diagnoses, kept_evidence, findings, insufficient, panel),
            insufficient_data=[panel.by_key(k).display(lang) for k in insufficient],
            model=ModelInfo(name=model.name, version=model.version),
        )
        out.append(Diagnosed(result=result, check=check, raw_text=texts[i], dropped_findings=dropped_boxes,
                             dropped_evidence=n_bad, evidence=kept_evidence))
    return out


def diagnose_to_jsonl(model: MedFuse, cases: Iterable[PatientCase], out_path: Path | None, lang: str = "en",
                      max_new_tokens: int = 128, batch_size: int = 8, total: int | None = None,
                      progress: bool = True) -> int:
    """Diagnose a stream of cases in batches, writing one JSON object per line.

    With `out_path`, the file is written to a temporary name and renamed when complete,
    so an interrupted run leaves no half-written results file. Returns the case count.
    """
    from tqdm import tqdm

    n = 0
    bar = tqdm(total=total, unit="case", desc="diagnose", disable=not progress or None, file=sys.stderr)
    tmp = None if out_path is None else out_path.with_name(f".{out_path.name}.partial")
    sink = sys.stdout if tmp is None else open(tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        for batch in iter_batches(cases, batch_size):
            for d in diagnose_many(model, batch, lang=lang, max_new_tokens=max_new_tokens):
                sink.write(json.dumps(d.result.model_dump(mode="json"), ensure_ascii=False) + "\n")
                n += 1
            bar.update(len(batch))
        if tmp is not None:
            sink.close()
            tmp.replace(out_path)
    finally:
        bar.close()
        if tmp is not None and not sink.closed:
            sink.close()
            tmp.unlink(missing_ok=True)
    return n


def iter_batches(items: Iterable[PatientCase], size: int) -> Iterator[list[PatientCase]]:
    batch: list[PatientCase] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def format_result(d: Diagnosed, lang: str = "en") -> str:
    """The human-readable summary `medfuse diagnose` prints."""
    r = d.result
    lines = [f"case {r.case_id}  (model {r.model.name} {r.model.version})"]
    lines.append("diagnoses:")
    for x in sorted(r.diagnoses, key=lambda x: -x.probability):
        mark = "+" if x.present else " "
        lines.append(f"  {mark} {x.name:<26} p={x.probability:.2f}  {x.icd10 or ''}".rstrip())
    if r.insufficient_data:
        lines.append("insufficient data (not assessed): " + ", ".join(r.insufficient_data))
    weights = ", ".join(f"{m} {getattr(r.modality_weights, m):.2f}" for m in MODALITIES
                        if getattr(r.modality_weights, m) > 0)
    lines.append(f"modality weights: {weights or 'none'}")
    abnormal = [e for e in d.evidence if e.abnormal]
    if d.evidence:
        lines.append(f"evidence ({len(abnormal)} of {len(d.evidence)} items abnormal):")
        for e in abnormal[:25]:
            lines.append(f"  - {_cite(e)} [{e.source}]")
    for f in r.findings:
        lines.append(f"finding: {f.label} {f.box}")
    if r.reasoning:
        lines.append(f"reasoning: {r.reasoning}")
    if r.reasoning_language not in (None, lang):
        lines.append(f"  ! the reasoning is written in {_TEXT['en']['language_names'][r.reasoning_language]}, "
                     f"not in {_TEXT['en']['language_names'][lang]} (--lang {lang})")
    for claim in d.check.dropped:
        lines.append(f"  ! removed (unsupported: {claim.reason}): {claim.sentence[:160]}")
    for reason in d.dropped_findings:
        lines.append(f"  ! box removed: {reason}")
    lines.append(f"report: {r.report}")
    return "\n".join(lines)
