"""All evidence of one case: demographics, ECG, labs, vitals, CXR findings, genomics.

`interpret_case(case)` is what the chain of evidence, the task builders and the
faithfulness checks consume: every item cites where in the case it came from
('ecg:lead II', 'labs[3]', 'cxr[0]:finding 1', 'genomics[0]'), so a cited fact can be
checked against the input. Free-text notes are not interpreted here (they go to the
model as text).
"""

from __future__ import annotations

from medfuse.record.case import PatientCase
from medfuse.record.evidence import Evidence


def demographics_evidence(case: PatientCase) -> list[Evidence]:
    """Age and sex as evidence items (both shape priors and thresholds downstream)."""
    d = case.demographics
    out: list[Evidence] = []
    if d.age is not None:
        out.append(Evidence(modality="demographics", item="age", value=float(d.age), unit="a",
                            interpretation="older adult" if d.age >= 65 else "adult" if d.age >= 18 else "minor",
                            source="demographics"))
    if d.sex is not None:
        out.append(Evidence(modality="demographics", item="sex", value=d.sex,
                            interpretation={"F": "female", "M": "male", "O": "other", "U": "unknown"}[d.sex],
                            source="demographics"))
    return out


def cxr_evidence(case: PatientCase) -> list[Evidence]:
    """Findings supplied with the images (label + 0-999 box), one item per box.

    Ground-truth findings in `case.labels` are not evidence: they are what a model
    must find, so they are left out here on purpose.
    """
    out: list[Evidence] = []
    for i, image in enumerate(case.cxr):
        for j, finding in enumerate(image.findings):
            source = f"cxr[{i}]:finding {j}"
            if not finding.boxes:
                out.append(Evidence(modality="cxr", item=finding.label, value=None, interpretation="present",
                                    abnormal=True, source=source, detail={"view": image.view}))
            for k, box in enumerate(finding.boxes):
                detail = {"view": image.view}
                if len(finding.boxes) > 1:
                    detail["box_index"] = k
                out.append(Evidence(modality="cxr", item=finding.label, value=list(box), interpretation="present",
                                    abnormal=True, source=source, detail=detail))
    return out


def genomics_evidence(case: PatientCase) -> list[Evidence]:
    """One item per reported variant (gene, HGVS, VAF) with its significance from the
    variant knowledge file: only an oncogenic driver counts as abnormal; benign
    polymorphisms and variants of uncertain significance are reported as such."""
    from medfuse.knowledge.variants import classify_variant

    out: list[Evidence] = []
    for k, v in enumerate(case.genomics):
        call = classify_variant(v)
        detail = {key: val for key, val in (("vaf", v.vaf), ("consequence", v.consequence),
                                              ("supports", call.disease), ("class", call.label)) if val is not None}
        out.append(Evidence(modality="genomics", item=v.gene, value=v.hgvs, interpretation=call.significance,
                            abnormal=call.abnormal, source=f"genomics[{k}]", detail=detail))
    return out


def interpret_case(case: PatientCase) -> list[Evidence]:
    """Every interpretable fact of `case`, in a stable order: demographics, ECG, labs,
    vitals, CXR findings, genomics. Missing modalities simply contribute nothing."""
    # Imported here: the lab/vital readers load their catalogues, the ECG reader
    # neurokit2; a caller interpreting one modality should not pay for the others.
    from medfuse.interpret.ecg import ecg_evidence, interpret_ecg
    from medfuse.interpret.labs import interpret_labs
    from medfuse.interpret.vitals import interpret_vitals

    evidence = demographics_evidence(case)
    if case.ecg is not None and case.ecg.signal is not None:
        evidence += ecg_evidence(interpret_ecg(case.ecg, sex=case.demographics.sex))
    if case.labs:
        evidence += interpret_labs(case)
    if case.vitals:
        evidence += interpret_vitals(case)
    evidence += cxr_evidence(case)
    evidence += genomics_evidence(case)
    return evidence
