"""The report `diagnose` assembles from checked parts, and the human-readable summary `medfuse diagnose` prints."""

from __future__ import annotations

from medfuse.knowledge.panel import Panel
from medfuse.model.prompt import _TEXT
from medfuse.model.result import Diagnosed, DiagnosisEntry, EvidenceEntry, FindingEntry
from medfuse.record.case import MODALITIES
from medfuse.record.evidence import Evidence

__all__ = ["build_report", "cite_evidence", "format_result"]


def build_report(lang: str, diagnoses: list[DiagnosisEntry], evidence: list[Evidence], findings: list[FindingEntry],
            insufficient: list[str], panel: Panel) -> str:
    """The summary: head decisions, image findings, key abnormal evidence, what could not be assessed."""
    present = sorted((d for d in diagnoses if d.present), key=lambda d: -d.probability)
    abnormal = [e for e in evidence if e.abnormal]
    if lang == "zh":
        parts = ["印象: " + ("; ".join(f"{d.name} (概率 {d.probability:.2f})" for d in present) if present else "未发现达到阈值的候选疾病") + "。"]
        if findings:
            parts.append("影像所见: " + "; ".join(f"{f.label} {f.box}" for f in findings) + "。")
        if abnormal:
            parts.append("主要证据: " + "; ".join(cite_evidence(e) for e in abnormal[:8]) + "。")
        if insufficient:
            parts.append("数据不足，无法判断: " + "、".join(panel.by_key(k).display("zh") for k in insufficient) + "。")
        return "".join(parts)
    parts = ["Impression: " + ("; ".join(f"{d.name} (probability {d.probability:.2f})" for d in present)
                               if present else "no candidate disease above its threshold") + "."]
    if findings:
        parts.append("Image findings: " + "; ".join(f"{f.label} at {f.box}" for f in findings) + ".")
    if abnormal:
        parts.append("Key evidence: " + "; ".join(cite_evidence(e) for e in abnormal[:8]) + ".")
    if insufficient:
        parts.append("Insufficient data to assess: " + ", ".join(panel.by_key(k).name for k in insufficient) + ".")
    return " ".join(parts)


def cite_evidence(e: Evidence | EvidenceEntry) -> str:
    """'creatinine 2.1 mg/dL (high)': an evidence item as the report quotes it."""
    value = f"{e.value:g}" if isinstance(e.value, float) else "" if e.value is None else str(e.value)
    unit = f" {e.unit}" if getattr(e, "unit", None) else ""
    return f"{e.item} {value}{unit} ({e.interpretation})".replace("  ", " ")


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
            lines.append(f"  - {cite_evidence(e)} [{e.source}]")
    for f in r.findings:
        lines.append(f"finding: {f.label} {f.box}")
    if r.reasoning:
        lines.append(f"reasoning: {r.reasoning}")
    if r.reasoning_language not in (None, lang):
        lines.append(f"  ! the reasoning is written in {_TEXT['en']['language_names'][r.reasoning_language]}, "
                     f"not in {_TEXT['en']['language_names'][lang]} (--lang {lang})")
    if d.consistency is not None and not d.consistency.consistent:
        for problem in d.consistency.problems:
            lines.append(f"  ! inconsistent with the disease head: {problem}")
    for claim in d.check.dropped:
        lines.append(f"  ! removed (unsupported: {claim.reason}): {claim.sentence[:160]}")
    for reason in d.dropped_findings:
        lines.append(f"  ! box removed: {reason}")
    lines.append(f"report: {r.report}")
    return "\n".join(lines)
