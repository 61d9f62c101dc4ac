"""The disease panel: a data file of diseases with ICD code groups and synonyms.

The panel is data, not code (DESIGN.md): `load_panel()` reads the bundled default, and
`load_panel(path)` reads any YAML file of the same shape, e.g. MIMIC-derived ICD groups.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

from medfuse.errors import InputError
from medfuse.knowledge.data_files import parse_yaml, read_data_file

DEFAULT_PANEL = "panel_default.yaml"


@dataclass(frozen=True)
class Disease:
    key: str
    name: str
    icd10: tuple[str, ...]
    icd9: tuple[str, ...]
    synonyms: tuple[str, ...] = ()
    zh: str | None = None
    zh_synonyms: tuple[str, ...] = ()
    evidence: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    def display(self, lang: str = "en") -> str:
        return self.zh if lang == "zh" and self.zh else self.name


def normalise_term(text: str) -> str:
    """Case-, width- and whitespace-insensitive form of a disease name."""
    t = unicodedata.normalize("NFKC", text).strip().lower()
    t = re.sub(r"[\s_\-]+", " ", t)
    return t.strip(" .;,:。；，：")


def normalise_icd(code: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", code).upper()


@dataclass(frozen=True)
class Panel:
    name: str
    diseases: tuple[Disease, ...]

    @property
    def keys(self) -> list[str]:
        return [d.key for d in self.diseases]

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.diseases]

    def __len__(self) -> int:
        return len(self.diseases)

    def __iter__(self):
        return iter(self.diseases)

    def by_key(self, key: str) -> Disease:
        for d in self.diseases:
            if d.key == key:
                return d
        raise KeyError(key)

    def index(self, name_or_key: str) -> int:
        d = self.lookup(name_or_key)
        if d is None:
            raise KeyError(name_or_key)
        return self.diseases.index(d)

    def lookup(self, term: str) -> Disease | None:
        """The disease a free-text name refers to (key, name, synonym, Chinese), or None."""
        return self._term_table.get(normalise_term(term))

    @cached_property
    def _term_table(self) -> dict[str, Disease]:
        table: dict[str, Disease] = {}
        for d in self.diseases:
            for t in (d.key, d.name, *d.synonyms, *(x for x in (d.zh,) if x), *d.zh_synonyms):
                table.setdefault(normalise_term(t), d)
        return table

    def match_icd(self, code: str, version: int) -> Disease | None:
        """The panel disease an ICD-9 or ICD-10 code belongs to (longest prefix wins)."""
        c = normalise_icd(code)
        best: tuple[int, Disease] | None = None
        for d in self.diseases:
            for prefix in d.icd10 if version == 10 else d.icd9:
                p = normalise_icd(prefix)
                if c.startswith(p) and (best is None or len(p) > best[0]):
                    best = (len(p), d)
        return None if best is None else best[1]


def load_panel(path: str | Path | None = None) -> Panel:
    """Load a panel YAML file; without a path, the bundled default panel."""
    return _parse_panel(*read_data_file(path, DEFAULT_PANEL, "panel file not found"))


@lru_cache(maxsize=8)
def _parse_panel(text: str, origin: str) -> Panel:
    data = parse_yaml(text, origin)
    if not isinstance(data, dict) or not isinstance(data.get("diseases"), list) or not data["diseases"]:
        raise InputError(origin, "a panel needs a non-empty 'diseases' list")
    diseases = []
    seen: set[str] = set()
    for i, d in enumerate(data["diseases"]):
        if not isinstance(d, dict) or "key" not in d or "name" not in d:
            raise InputError(origin, f"diseases[{i}] needs 'key' and 'name'")
        if d["key"] in seen:
            raise InputError(origin, f"diseases[{i}]: duplicate key '{d['key']}'")
        seen.add(d["key"])
        diseases.append(
            Disease(
                key=str(d["key"]),
                name=str(d["name"]),
                icd10=tuple(str(c) for c in d.get("icd10", []) or []),
                icd9=tuple(str(c) for c in d.get("icd9", []) or []),
                synonyms=tuple(str(s) for s in d.get("synonyms", []) or []),
                zh=d.get("zh"),
                zh_synonyms=tuple(str(s) for s in d.get("zh_synonyms", []) or []),
                evidence=dict(d.get("evidence", {}) or {}),
            )
        )
    return Panel(name=str(data.get("name", origin)), diseases=tuple(diseases))
