"""Variant knowledge from a data file: functional class, oncogenic driver, benign, uncertain.

`classify_variant(variant)` reads `data/variants.yaml` and names the driver alteration a
variant is (`EGFR_L858R`, `ALK_FUSION`, ...); a synonymous change is likely benign;
anything not listed is a variant of uncertain significance (never called pathogenic by
default). `variant_class(variant)` is its functional class (missense, truncating, ...).
Case interpretation and the model's genomics inputs both read variants through these two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from medfuse.knowledge.data_files import parse_yaml, read_data_file
from medfuse.record.case import Variant

# Functional class of a variant, from its consequence or its HGVS expression.
VARIANT_CLASSES: tuple[str, ...] = ("missense", "truncating", "inframe_indel", "fusion", "splice", "silent")

_CONSEQUENCE_CLASS = {
    "missense_variant": "missense", "stop_gained": "truncating", "frameshift_variant": "truncating",
    "start_lost": "truncating", "stop_lost": "truncating", "inframe_deletion": "inframe_indel",
    "inframe_insertion": "inframe_indel", "protein_altering_variant": "inframe_indel",
    "gene_fusion": "fusion", "transcript_ablation": "truncating", "splice_acceptor_variant": "splice",
    "splice_donor_variant": "splice", "splice_region_variant": "splice", "exon_loss_variant": "splice",
    "synonymous_variant": "silent", "intron_variant": "silent", "5_prime_utr_variant": "silent",
    "3_prime_utr_variant": "silent", "upstream_gene_variant": "silent", "downstream_gene_variant": "silent",
}

# An in-frame protein indel and the codon it starts at: 'p.E746_A750del', 'p.Glu746_Ala750del'.
_PROTEIN_INDEL = re.compile(r"P\.[A-Z]+?(\d+)_[A-Z]+?(\d+)(DEL|INS|DUP)")


def _consequences(variant: Variant) -> list[str]:
    return [t for t in re.split(r"[&,]", (variant.consequence or "").strip().lower()) if t]


def variant_class(variant: Variant) -> str | None:
    """The functional class of a variant (one of `VARIANT_CLASSES`): from its Sequence
    Ontology consequence, else its HGVS; None when neither says.

    >>> variant_class(Variant(gene="EGFR", hgvs="p.E746_A750del"))
    'inframe_indel'
    >>> variant_class(Variant(gene="EML4", hgvs="EML4::ALK"))
    'fusion'
    """
    for term in _consequences(variant):
        if term in _CONSEQUENCE_CLASS:
            return _CONSEQUENCE_CLASS[term]
    h = (variant.hgvs or "").strip()
    if not h:
        return None
    if "::" in h or "fusion" in h.lower():
        return "fusion"
    p = h.split(":")[-1]
    if p.startswith("p."):
        if p.endswith("=") or p == "p.(=)":
            return "silent"
        if "fs" in p or "Ter" in p or p.endswith(("*", "X")):
            return "truncating"
        if any(k in p for k in ("del", "ins", "dup")):
            return "inframe_indel"
        if re.fullmatch(r"p\.\(?[A-Za-z]{1,3}\d+[A-Za-z]{1,3}\)?", p):
            return "missense"
    if p.startswith("c."):
        if re.search(r"[+-][12](?!\d)[ACGT]?>", p):
            return "splice"
        if any(k in p for k in ("del", "ins", "dup")):
            return "inframe_indel"
    return None


@dataclass(frozen=True)
class Driver:
    """One named driver alteration of the data file and the criteria that recognise it."""

    id: str
    gene: str
    disease: str | None = None
    label: str | None = None
    hgvs: tuple[str, ...] = ()  # protein changes without 'p.', upper case: 'L858R'
    codons: tuple[int, int] | None = None
    indel: tuple[str, ...] = ()  # 'DEL', 'INS', 'DUP'
    consequence: tuple[str, ...] = ()
    fusion: bool = False
    text: tuple[str, ...] = ()
    splice_site: tuple[str, ...] = ()

    def matches(self, hgvs: str, consequences: list[str], cls: str | None) -> bool:
        """Whether a variant of this gene (HGVS upper-case, no parentheses) is this alteration."""
        if any(change in hgvs for change in self.hgvs):
            return True
        indel = _PROTEIN_INDEL.search(hgvs)
        if (self.codons is not None and indel is not None
                and self.codons[0] <= int(indel.group(1)) <= self.codons[1] and indel.group(3) in self.indel):
            return True
        # A consequence alone stands for a codon range only when the HGVS has no position.
        if (self.codons is None or indel is None) and any(t in self.consequence for t in consequences):
            return True
        if self.fusion and cls == "fusion":
            return True
        if any(word in hgvs for word in self.text):
            return True
        return cls == "splice" and any(site in hgvs for site in self.splice_site)


@dataclass(frozen=True)
class VariantKnowledge:
    drivers: tuple[Driver, ...]
    benign: frozenset[tuple[str, str]]  # (gene, protein change), upper case

    @property
    def fusion_genes(self) -> tuple[str, ...]:
        """Genes whose fusions are drivers (ALK, ROS1, RET), in file order."""
        return tuple(dict.fromkeys(d.gene for d in self.drivers if d.fusion))


def _upper_tuple(items) -> tuple[str, ...]:
    return tuple(str(x).upper() for x in items or [])


@lru_cache(maxsize=1)
def variant_knowledge() -> VariantKnowledge:
    """The bundled variant knowledge (`data/variants.yaml`)."""
    data = parse_yaml(*read_data_file(None, "variants.yaml", "variant knowledge not found"))
    drivers = tuple(
        Driver(
            id=str(d["id"]), gene=str(d["gene"]).upper(), disease=d.get("disease"), label=d.get("label"),
            hgvs=tuple(h.removeprefix("P.") for h in _upper_tuple(d.get("hgvs"))),
            codons=tuple(int(c) for c in d["codons"]) if d.get("codons") else None,
            indel=_upper_tuple(d.get("indel")), consequence=tuple(str(c).lower() for c in d.get("consequence", [])),
            fusion=bool(d.get("fusion", False)), text=_upper_tuple(d.get("text")),
            splice_site=_upper_tuple(d.get("splice_site")),
        )
        for d in data.get("drivers", [])
    )
    benign = frozenset((str(b["gene"]).upper(), _normalised_hgvs(str(b["hgvs"]))) for b in data.get("benign", []))
    return VariantKnowledge(drivers=drivers, benign=benign)


def _normalised_hgvs(hgvs: str) -> str:
    """HGVS compared case-insensitively, without parentheses or a transcript prefix."""
    return hgvs.strip().split(":")[-1].upper().replace("(", "").replace(")", "")


def reported_gene(variant: Variant) -> str:
    """The gene a variant is about, upper case: its own, except that a fusion reported
    under its 5' partner ('EML4::ALK' under EML4) is about the driver it activates.

    >>> reported_gene(Variant(gene="EML4", hgvs="EML4::ALK"))
    'ALK'
    """
    gene = variant.gene.strip().upper()
    fusion_genes = variant_knowledge().fusion_genes
    if gene not in fusion_genes and variant_class(variant) == "fusion":
        partner = next((g for g in fusion_genes if g in (variant.hgvs or "").upper()), None)
        gene = partner or gene
    return gene


@dataclass(frozen=True)
class VariantCall:
    significance: str  # "oncogenic driver" | "benign" | "likely benign" | "uncertain significance"
    disease: str | None = None  # panel key the variant supports, for drivers
    label: str | None = None  # e.g. "exon 19 deletion"
    alteration: str | None = None  # the driver's id in variants.yaml, e.g. "EGFR_EX19DEL"

    @property
    def abnormal(self) -> bool:
        return self.significance == "oncogenic driver"


def classify_variant(v: Variant) -> VariantCall:
    """Significance of one reported variant.

    >>> classify_variant(Variant(gene="EGFR", hgvs="p.L858R")).significance
    'oncogenic driver'
    >>> classify_variant(Variant(gene="ALK", hgvs="EML4::ALK", consequence="gene_fusion")).disease
    'lung_cancer'
    >>> classify_variant(Variant(gene="EGFR", hgvs="p.(L747_P753delinsS)")).alteration
    'EGFR_EX19DEL'
    >>> classify_variant(Variant(gene="TP53", hgvs="p.P72R")).significance
    'benign'
    >>> classify_variant(Variant(gene="EGFR", hgvs="p.Q787=")).significance
    'likely benign'
    >>> classify_variant(Variant(gene="EGFR", hgvs="p.A289V")).significance
    'uncertain significance'
    """
    knowledge = variant_knowledge()
    gene = reported_gene(v)
    # The whole HGVS text (not only the part after a transcript prefix) may hold the
    # change: 'c.2573T>G (p.L858R)', 'MET exon14 skipping'.
    hgvs = (v.hgvs or "").upper().replace("(", "").replace(")", "")
    consequences = _consequences(v)
    cls = variant_class(v)
    for d in knowledge.drivers:
        if d.gene == gene and d.matches(hgvs, consequences, cls):
            return VariantCall("oncogenic driver", d.disease, d.label, d.id)
    protein = _normalised_hgvs(v.hgvs or "")
    if (gene, protein) in knowledge.benign:
        return VariantCall("benign")
    if protein.endswith("=") or "synonymous_variant" in consequences:
        return VariantCall("likely benign")
    return VariantCall("uncertain significance")
