"""Synthetic tumour/germline variant panels.

Lung-cancer patients who were tested carry at most one actionable driver, at frequencies
shaped like non-small-cell lung cancer series (EGFR more common in never-smokers, KRAS
G12C in smokers); drivers are somatic, so their variant allele fraction follows tumour
purity (mostly 0.05-0.45). Every panel also reports a few common benign germline variants
(VAF near 0.5 or 1.0) as distractors, and patients without cancer who had a panel
(e.g. a germline screen) carry only such benign variants.
"""

from __future__ import annotations

import numpy as np

from medfuse.record.case import Variant
from medfuse.synth.diseases import SynthPatient

# Driver -> (gene, HGVS protein change or HGNC fusion name, consequence), with probability for never- and
# ever-smokers; the remainder carry no actionable driver.
DRIVERS: dict[str, tuple[str, str, str]] = {
    "EGFR_L858R": ("EGFR", "p.L858R", "missense_variant"),
    "EGFR_EX19DEL": ("EGFR", "p.E746_A750del", "inframe_deletion"),
    "KRAS_G12C": ("KRAS", "p.G12C", "missense_variant"),
    "ALK_FUSION": ("ALK", "EML4::ALK", "gene_fusion"),
}
DRIVER_RATES: dict[str, dict[str, float]] = {
    "never": {"EGFR_L858R": 0.22, "EGFR_EX19DEL": 0.24, "KRAS_G12C": 0.03, "ALK_FUSION": 0.10},
    "ever": {"EGFR_L858R": 0.06, "EGFR_EX19DEL": 0.06, "KRAS_G12C": 0.18, "ALK_FUSION": 0.03},
}
# Common benign germline variants (population polymorphisms), reported as distractors.
BENIGN: tuple[tuple[str, str, str], ...] = (
    ("TP53", "p.P72R", "missense_variant"),
    ("EGFR", "p.Q787=", "synonymous_variant"),
    ("KDR", "p.Q472H", "missense_variant"),
    ("ERBB2", "p.P1170A", "missense_variant"),
    ("PIK3CA", "p.I391M", "missense_variant"),
    ("MET", "p.T1010I", "missense_variant"),
    ("BRCA2", "p.V2466A", "missense_variant"),
)


def draw_variants(rng: np.random.Generator, patient: SynthPatient) -> list[Variant]:
    """The variants a sequencing panel reports for this patient (driver first, if any)."""
    variants: list[Variant] = []
    if "lung_cancer" in patient.diseases:
        rates = DRIVER_RATES["never" if patient.smoking == "never" else "ever"]
        u, cum = rng.random(), 0.0
        for key, p in rates.items():
            cum += p
            if u < cum:
                gene, hgvs, consequence = DRIVERS[key]
                purity = float(np.clip(rng.beta(2.5, 4.0), 0.1, 0.9))
                vaf = float(np.clip(purity / 2 * rng.uniform(0.7, 1.3), 0.03, 0.6))
                variants.append(Variant(gene=gene, hgvs=hgvs, vaf=round(vaf, 3), consequence=consequence))
                break
    n_benign = int(rng.integers(1, 4))
    for i in sorted(rng.choice(len(BENIGN), size=n_benign, replace=False)):
        gene, hgvs, consequence = BENIGN[int(i)]
        homozygous = rng.random() < 0.2
        vaf = rng.normal(0.99 if homozygous else 0.5, 0.03)
        variants.append(Variant(gene=gene, hgvs=hgvs, vaf=round(float(np.clip(vaf, 0.3, 1.0)), 3), consequence=consequence))
    return variants


def is_driver(variant: Variant) -> bool:
    """Whether a variant is one of the actionable lung-cancer drivers this generator draws."""
    return any(variant.gene == g and variant.hgvs == h for g, h, _ in DRIVERS.values())
