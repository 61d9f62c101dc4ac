"""Variant significance from a data file: oncogenic driver, benign, or uncertain.

`classify_variant(variant)` reads `data/variants.yaml`; a synonymous change is likely
benign; anything not listed is a variant of uncertain significance (never called
pathogenic by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from medfuse.record.case import Variant


@dataclass(frozen=True)
class VariantCall:
    significance: str  # "oncogenic driver" | "benign" | "likely benign" | "uncertain significance"
    disease: str | None = None  # panel key the variant supports, for drivers
    label: str | None = None  # e.g. "exon 19 deletion"

    @property
    def abnormal(self) -> bool:
        return self.significance == "oncogenic driver"


@lru_cache(maxsize=1)
def _knowledge() -> dict:
    text = resources.files("medfuse.knowledge").joinpath("data").joinpath("variants.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def classify_variant(v: Variant) -> VariantCall:
    """Significance of one reported variant.

    >>> classify_variant(Variant(gene="EGFR", hgvs="p.L858R")).significance
    'oncogenic driver'
    >>> classify_variant(Variant(gene="ALK", hgvs="EML4::ALK", consequence="gene_fusion")).disease
    'lung_cancer'
    >>> classify_variant(Variant(gene="TP53", hgvs="p.P72R")).significance
    'benign'
    >>> classify_variant(Variant(gene="EGFR", hgvs="p.Q787=")).significance
    'likely benign'
    >>> classify_variant(Variant(gene="EGFR", hgvs="p.A289V")).significance
    'uncertain significance'
    """
    gene = v.gene.strip().upper()
    hgvs = (v.hgvs or "").strip()
    protein = hgvs.split(":")[-1]  # accept 'NP_005219.2:p.L858R'
    consequence = (v.consequence or "").strip().lower()
    data = _knowledge()
    for d in data.get("drivers", []):
        if d["gene"].upper() != gene:
            continue
        if protein and protein in d.get("hgvs", []):
            return VariantCall("oncogenic driver", d.get("disease"), d.get("label"))
        prefixes = d.get("hgvs_prefix", [])
        cons = d.get("consequence", [])
        if prefixes and any(protein.startswith(p) for p in prefixes) and (not cons or consequence in cons or not consequence):
            return VariantCall("oncogenic driver", d.get("disease"), d.get("label"))
        if not prefixes and not d.get("hgvs") and consequence and consequence in cons:
            return VariantCall("oncogenic driver", d.get("disease"), d.get("label"))
        if gene in ("ALK", "ROS1", "RET") and "::" in hgvs and "gene_fusion" in cons:
            return VariantCall("oncogenic driver", d.get("disease"), d.get("label"))
    for b in data.get("benign", []):
        if b["gene"].upper() == gene and b["hgvs"] == protein:
            return VariantCall("benign")
    if protein.endswith("=") or consequence == "synonymous_variant":
        return VariantCall("likely benign")
    return VariantCall("uncertain significance")
