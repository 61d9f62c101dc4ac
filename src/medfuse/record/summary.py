"""A short readable text summary of one patient case (what `medfuse show` prints)."""

from __future__ import annotations

from medfuse.record.case import PatientCase


def summarise_case(case: PatientCase) -> list[str]:
    """The lines `medfuse show` prints: modalities, abnormal labs, ECG, images, labels.

    Identifiers beyond the case id are not printed.
    """
    lines = [f"case {case.case_id}"]
    d = case.demographics
    demo = ", ".join(x for x in (f"{d.age:g} y" if d.age is not None else None, d.sex) if x)
    if demo:
        lines.append(f"  demographics: {demo}")
    mods = case.modalities()
    lines.append(f"  modalities: {', '.join(mods) if mods else 'none'}")
    for i, img in enumerate(case.cxr):
        view = f", view {img.view}" if img.view else ""
        lines.append(f"  cxr[{i}]: {img.width}x{img.height} px, {img.bits}-bit{view}")
        for f in img.findings:  # reads supplied with the input, if any
            lines.append(f"    read: {f.label} {f.boxes}")
    if case.ecg is not None:
        e = case.ecg
        dur = f"{e.duration_s:.1f} s" if e.duration_s is not None else "?"
        lines.append(f"  ecg: {len(e.leads)} lead(s) [{', '.join(e.leads)}], {e.fs:g} Hz, {dur}")
    if case.labs:
        abnormal = [r for r in case.labs if r.flag and r.flag != "N"]
        lines.append(f"  labs: {len(case.labs)} result(s), {len(abnormal)} flagged")
        for r in abnormal[:30]:
            val = "" if r.value is None else f"{r.censored or ''}{r.value:g}"
            rng = ""
            if r.ref_low is not None or r.ref_high is not None:
                lo = "" if r.ref_low is None else f"{r.ref_low:g}"
                hi = "" if r.ref_high is None else f"{r.ref_high:g}"
                rng = f" (ref {lo}-{hi})"
            lines.append(f"    {r.flag:>2} {r.name}: {val} {r.unit or ''}{rng}".rstrip())
        if len(abnormal) > 30:
            lines.append(f"    ... {len(abnormal) - 30} more flagged")
    v = case.first_vitals()
    if v is not None:
        parts = []
        if v.heart_rate is not None:
            parts.append(f"HR {v.heart_rate:g}/min")
        if v.sbp is not None and v.dbp is not None:
            parts.append(f"BP {v.sbp:g}/{v.dbp:g} mm[Hg]")
        if v.temperature is not None:
            parts.append(f"T {v.temperature:g} Cel")
        if v.spo2 is not None:
            parts.append(f"SpO2 {v.spo2:g}%")
        if v.resp_rate is not None:
            parts.append(f"RR {v.resp_rate:g}/min")
        lines.append(f"  vitals ({len(case.vitals)} set(s)): {', '.join(parts)}")
    for n in case.notes:
        text = " ".join(n.text.split())
        lines.append(f"  note ({n.type}, {n.lang}): {text[:120]}{'...' if len(text) > 120 else ''}")
    for g in case.genomics:
        vaf = f" VAF {g.vaf:.2f}" if g.vaf is not None else ""
        lines.append(f"  variant: {g.gene} {g.hgvs or ''}{vaf}".rstrip())
    if case.labels:
        names = case.labels.disease_names()
        lines.append(f"  labels: {', '.join(names) if names else 'no panel disease'}")
        for f in case.labels.findings:
            boxes = f" {f.boxes}" if f.boxes else " (no box)"
            lines.append(f"    finding: {f.label}{boxes} on cxr[{f.image_index}]")
        if case.labels.report:
            lines.append(f"    report: {' '.join(case.labels.report.split())[:160]}")
    return lines
