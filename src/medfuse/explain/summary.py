"""A plain-text summary of an `Explanation` (what `medfuse explain` prints by default)."""

from __future__ import annotations

from medfuse.explain.schema import Explanation

_TOP = 5  # items listed per disease


def format_explanation(explanation: Explanation, top: int = _TOP) -> str:
    """Diseases with P and threshold, then per explained disease its modality totals and top
    items, the modality ablation, and the counterfactuals."""
    e = explanation
    lines = [(f"case {e.case_id} | {e.model} | modalities: {', '.join(e.modalities_present) or 'none'} | "
              f"{e.seconds:.2f} s")]
    reported = [d for d in e.diseases if d.present]
    lines.append("reported: " + (", ".join(f"{d.name} {d.probability:.2f} (>= {d.threshold:.2f})" for d in reported)
                                  or "none above its threshold"))
    for a in e.attributions:
        mods = ", ".join(f"{m} {v:+.3f}" for m, v in sorted(a.modalities.items(), key=lambda kv: -abs(kv[1])))
        lines.append("")
        lines.append(f"{a.name}: P {a.probability:.2f}")
        lines.append(f"  modalities: {mods}")
        for it in a.items[:top]:
            value = "" if it.value is None else f" {it.value:.4g} {it.unit or ''}".rstrip()
            lines.append(f"  {it.attribution:+.3f}  {it.label}{value}")
        if a.ecg_saliency is not None and a.ecg_saliency.scores:
            sal = a.ecg_saliency
            lead, seg = max(((lead, j) for lead, row in zip(sal.leads, sal.scores, strict=True)
                             for j in range(len(row))),
                            key=lambda t: abs(sal.scores[sal.leads.index(t[0])][t[1]]))
            lines.append(f"  ECG: most salient segment lead {lead}, {seg * sal.segment_seconds:g}-"
                         f"{(seg + 1) * sal.segment_seconds:g} s")
    if e.ablation:
        lines.append("")
        lines.append("without each modality (change in P):")
        names = {d.disease: d.name for d in e.diseases}
        for row in e.ablation:
            changes = ", ".join(f"{names[k]} {row.change[k]:+.2f}{' (flips)' if k in row.flips else ''}"
                                for k in e.explained)
            lines.append(f"  {row.modality}: {changes}")
    if e.counterfactuals or e.no_counterfactual:
        lines.append("")
        lines.append("counterfactuals:")
        for cf in e.counterfactuals:
            flags = ("" if cf.valid else " [not valid on re-run]") + ("" if cf.plausible else " [implausible]")
            lines.append(f"  {cf.text}{flags}")
        if e.no_counterfactual:
            lines.append(f"  none of one or two labs/vitals flips: {', '.join(e.no_counterfactual)}")
    return "\n".join(lines)
