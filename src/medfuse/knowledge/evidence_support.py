"""Which abnormal evidence supports which panel disease, from `data/evidence_support.yaml`.

`supported_diseases(evidence)` is what task builders and rewards use to tie an
interpreter's finding (a raised troponin, AF on the ECG, a consolidation box) to the
diseases it argues for; `finding_supports(label)` does the same for an image finding label.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from medfuse.knowledge.data_files import parse_yaml, read_data_file
from medfuse.record.evidence import Evidence


@dataclass(frozen=True)
class SupportRule:
    modality: str
    item: str  # exact item name, or a prefix ending in '*'
    readings: frozenset[str] | None  # None: any abnormal reading
    supports: tuple[str, ...]  # panel keys

    def matches_item(self, item: str) -> bool:
        return item.startswith(self.item[:-1]) if self.item.endswith("*") else item == self.item


@lru_cache(maxsize=1)
def support_rules() -> tuple[SupportRule, ...]:
    """The bundled evidence -> disease rules, in file order."""
    data = parse_yaml(*read_data_file(None, "evidence_support.yaml", "evidence support rules not found"))
    return tuple(
        SupportRule(modality=str(r["modality"]), item=str(r["item"]),
                    readings=frozenset(r["readings"]) if "readings" in r else None,
                    supports=tuple(str(k) for k in r["supports"]))
        for r in data["rules"]
    )


def supported_diseases(ev: Evidence) -> set[str]:
    """Panel keys (of the default panel) that an abnormal evidence item supports.

    Normal items support nothing; genomics items support the disease their variant class
    names (`detail['supports']`, e.g. an EGFR driver -> lung cancer).
    """
    if not ev.abnormal:
        return set()
    if ev.modality == "genomics":
        disease = ev.detail.get("supports")
        return {disease} if isinstance(disease, str) else set()
    out: set[str] = set()
    for rule in support_rules():
        if rule.modality == ev.modality and rule.matches_item(ev.item) and (
                rule.readings is None or ev.interpretation in rule.readings):
            out.update(rule.supports)
    return out


def finding_supports(label: str) -> set[str]:
    """Panel keys an image finding label (any case) supports: 'Consolidation' -> pneumonia, sepsis."""
    out: set[str] = set()
    for rule in support_rules():
        if rule.modality == "cxr" and rule.matches_item(label.lower()):
            out.update(rule.supports)
    return out
