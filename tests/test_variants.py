"""Variant significance: drivers the synthetic cohort plants are drivers; distractors are not."""

from __future__ import annotations

import doctest

import medfuse.knowledge.variants as variants
from medfuse.knowledge.variants import classify_variant
from medfuse.record.case import PatientCase, Variant
from medfuse.synth.genomics import BENIGN, DRIVERS


def test_doctests():
    assert doctest.testmod(variants).failed == 0


def test_synthetic_drivers_and_distractors_are_classified():
    for gene, hgvs, consequence in DRIVERS.values():
        call = classify_variant(Variant(gene=gene, hgvs=hgvs, consequence=consequence))
        assert call.abnormal and call.disease == "lung_cancer", (gene, hgvs)
    for gene, hgvs, consequence in BENIGN:
        assert not classify_variant(Variant(gene=gene, hgvs=hgvs, consequence=consequence)).abnormal, (gene, hgvs)


def test_case_evidence_marks_only_drivers_abnormal():
    from medfuse.interpret.case import genomics_evidence

    case = PatientCase(case_id="g", genomics=[Variant(gene="TP53", hgvs="p.P72R", vaf=0.5),
                                              Variant(gene="KRAS", hgvs="NP_004976.2:p.G12C", vaf=0.2)])
    ev = genomics_evidence(case)
    assert [e.abnormal for e in ev] == [False, True]
    assert ev[0].interpretation == "benign" and ev[1].detail["supports"] == "lung_cancer"


def test_fusion_reported_under_its_partner_and_bracketed_hgvs_are_drivers():
    for v, alteration in [(Variant(gene="EML4", hgvs="EML4::ALK"), "ALK_FUSION"),
                          (Variant(gene="EGFR", hgvs="p.(L747_P753delinsS)"), "EGFR_EX19DEL"),
                          (Variant(gene="MET", hgvs="c.3028+1G>T", consequence="splice_donor_variant"), "MET_EX14")]:
        call = classify_variant(v)
        assert call.abnormal and call.alteration == alteration, v


def test_every_model_genomics_slot_is_a_driver_of_the_knowledge_file():
    from medfuse.knowledge.variants import variant_knowledge
    from medfuse.model.inputs import HOTSPOTS

    assert set(HOTSPOTS) <= {d.id for d in variant_knowledge().drivers}
