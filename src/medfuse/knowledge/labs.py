"""The lab catalogue (data file) and unit normalisation to UCUM.

`load_lab_catalogue()` reads `data/labs_catalogue.yaml`; `LabCatalogue.lookup` maps a
local test name or LOINC code to an entry, `lab_entries(case)` maps a case's results (the
one rule every reader of lab results uses), and `LabEntry.to_canonical` converts a value
from any unit the entry knows to its canonical UCUM unit.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

from medfuse.errors import InputError
from medfuse.knowledge.data_files import parse_yaml, read_data_file
from medfuse.record.case import LabResult, PatientCase

# Spellings seen in lab systems -> UCUM. Keys are compared after `_unit_key`.
_UNIT_ALIASES: dict[str, str] = {
    "mg/dl": "mg/dL",
    "g/dl": "g/dL",
    "g/l": "g/L",
    "mg/l": "mg/L",
    "ng/ml": "ng/mL",
    "ng/l": "ng/L",
    "pg/ml": "pg/mL",
    "ug/l": "ug/L",
    "µg/l": "ug/L",
    "mcg/l": "ug/L",
    "mmol/l": "mmol/L",
    "mmol/mol": "mmol/mol",
    "umol/l": "umol/L",
    "µmol/l": "umol/L",
    "μmol/l": "umol/L",
    "pmol/l": "pmol/L",
    "meq/l": "meq/L",
    "mequiv/l": "meq/L",
    "u/l": "U/L",
    "iu/l": "U/L",
    "[iu]/l": "U/L",
    "ukat/l": "ukat/L",
    "%": "%",
    "percent": "%",
    "k/ul": "10*3/uL",
    "10*3/ul": "10*3/uL",
    "10^3/ul": "10*3/uL",
    "x10^3/ul": "10*3/uL",
    "x10e3/ul": "10*3/uL",
    "thou/ul": "10*3/uL",
    "10*9/l": "10*9/L",
    "10^9/l": "10*9/L",
    "x10^9/l": "10*9/L",
    "x10*9/l": "10*9/L",
    "g/l ": "g/L",
    "/nl": "/nL",
    "ratio": "{INR}",
    "{inr}": "{INR}",
    "inr": "{INR}",
    "1": "{INR}",
    "mm[hg]": "mm[Hg]",
    "mmhg": "mm[Hg]",
    "/min": "/min",
    "bpm": "/min",
    "beats/min": "/min",
    "breaths/min": "/min",
    "cel": "Cel",
    "°c": "Cel",
    "degc": "Cel",
    "c": "Cel",
    "[degf]": "[degF]",
    "°f": "[degF]",
    "degf": "[degF]",
    "f": "[degF]",
}


def _unit_key(unit: str) -> str:
    u = unicodedata.normalize("NFKC", unit).strip().lower().replace(" ", "")
    return u.replace("μ", "u").replace("µ", "u")


def normalise_unit(unit: str | None) -> str | None:
    """A unit string in UCUM form where it is a known spelling; None for empty input.

    Unknown spellings are returned stripped but otherwise unchanged, so a caller can
    decide whether the unit is usable for a given test.
    """
    if unit is None:
        return None
    u = unit.strip()
    if not u:
        return None
    return _UNIT_ALIASES.get(_unit_key(u), u)


@dataclass(frozen=True)
class LabEntry:
    key: str
    name: str
    loinc: tuple[str, ...]
    unit: str
    units: dict[str, tuple[float, float]] = field(hash=False, compare=False)  # ucum -> (factor, offset)
    ref: tuple[float | None, float | None] = (None, None)
    critical: tuple[float | None, float | None] = (None, None)
    synonyms: tuple[str, ...] = ()
    zh: str | None = None
    fluids: tuple[str, ...] = ()
    # Above this (canonical unit) a value is a damaged or mistyped entry, not a patient.
    plausible_max: float | None = None

    def to_canonical(self, value: float, unit: str | None) -> float | None:
        """`value` in the canonical unit, or None if the unit is unknown for this test.

        A missing unit is taken as canonical (many exports omit it for the usual unit).
        """
        u = normalise_unit(unit)
        if u is None or u == self.unit:
            return float(value)
        if u in self.units:
            factor, offset = self.units[u]
            return float(value) * factor + offset
        return None

    def knows_unit(self, unit: str | None) -> bool:
        u = normalise_unit(unit)
        return u is None or u == self.unit or u in self.units


def _name_key(name: str) -> str:
    t = unicodedata.normalize("NFKC", name).strip().lower()
    return re.sub(r"\s+", " ", t)


@dataclass(frozen=True)
class LabCatalogue:
    entries: tuple[LabEntry, ...]

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def keys(self) -> list[str]:
        return [e.key for e in self.entries]

    def get(self, key: str) -> LabEntry:
        """The entry with this key; KeyError when the catalogue has none."""
        return self._key_table[key]

    # Lookup tables built once per catalogue (cached_property writes the instance __dict__
    # directly, which a frozen dataclass allows); hashing the catalogue per call was slow.
    @cached_property
    def _key_table(self) -> dict[str, LabEntry]:
        table: dict[str, LabEntry] = {}
        for e in self.entries:
            table.setdefault(e.key, e)
        return table

    @cached_property
    def _loinc_table(self) -> dict[str, LabEntry]:
        return {code: e for e in self.entries for code in e.loinc}

    @cached_property
    def _name_table(self) -> dict[str, LabEntry]:
        table: dict[str, LabEntry] = {}
        for e in self.entries:
            for t in (e.key, e.name, *e.synonyms, *(x for x in (e.zh,) if x)):
                table.setdefault(_name_key(t), e)
        return table

    def lookup(self, name: str | None = None, loinc: str | None = None, fluid: str | None = None) -> LabEntry | None:
        """The entry for a LOINC code or a local name; None when unmapped.

        LOINC wins over the name. When `fluid` is given and the entry lists fluids, a
        result from another fluid (urine glucose, pleural-fluid pH) does not map.
        """
        entry = None
        if loinc:
            entry = self._loinc_table.get(loinc.strip())
        if entry is None and name:
            entry = self._name_table.get(_name_key(name))
        if entry is not None and fluid and entry.fluids:
            f = fluid.strip().lower()
            if not any(f.startswith(x) for x in entry.fluids):
                return None
        return entry

    def entry_for(self, result: LabResult, *, match_name: bool = True) -> LabEntry | None:
        """The entry of one result: the key in its `code`, else its LOINC code, else
        (with `match_name`) its local name; None when unmapped.

        A `code` names the entry its builder mapped it to; a key this catalogue lacks
        (a case mapped against another catalogue) is looked up like an uncoded result.
        """
        if result.code in self._key_table:
            return self._key_table[result.code]
        return self.lookup(name=result.name if match_name else None, loinc=result.loinc)


def lab_entries(case: PatientCase, catalogue: LabCatalogue | None = None) -> list[LabEntry | None]:
    """The catalogue entry of each of `case.labs`, in order (None where unmapped).

    The one mapping rule for every reader of lab results (interpretation, model inputs,
    faithfulness checks): a result's `code`, else its LOINC code, else its local name,
    synonym or Chinese name (case-insensitive). In a case an importer built
    (`provenance["importer"]` set) a result without a code is matched by LOINC only:
    the importer already matched its name knowing the specimen fluid, which the result
    does not keep, so matching the name again would read a urine glucose as a blood
    glucose. Values convert to the entry's unit with `LabEntry.to_canonical`.
    """
    catalogue = catalogue or load_lab_catalogue()
    match_name = not case.provenance.get("importer")
    return [catalogue.entry_for(r, match_name=match_name) for r in case.labs]


def load_lab_catalogue(path: str | Path | None = None) -> LabCatalogue:
    """Load the lab catalogue; without a path, the bundled one."""
    return _parse(*read_data_file(path, "labs_catalogue.yaml", "lab catalogue not found"))


def _pair(v) -> tuple[float | None, float | None]:
    if not v:
        return (None, None)
    lo, hi = v
    return (None if lo is None else float(lo), None if hi is None else float(hi))


@lru_cache(maxsize=8)
def _parse(text: str, origin: str) -> LabCatalogue:
    data = parse_yaml(text, origin)
    if not isinstance(data, dict) or not isinstance(data.get("labs"), list):
        raise InputError(origin, "a lab catalogue needs a 'labs' list")
    entries = []
    for i, d in enumerate(data["labs"]):
        try:
            units = {
                normalise_unit(u) or u: (float(spec.get("factor", 1.0)), float(spec.get("offset", 0.0)))
                for u, spec in (d.get("units") or {}).items()
            }
            entries.append(
                LabEntry(
                    key=str(d["key"]),
                    name=str(d["name"]),
                    loinc=tuple(str(c) for c in d.get("loinc", []) or []),
                    unit=normalise_unit(str(d["unit"])) or str(d["unit"]),
                    units=units,
                    ref=_pair(d.get("ref")),
                    critical=_pair(d.get("critical")),
                    synonyms=tuple(str(s) for s in d.get("synonyms", []) or []),
                    zh=d.get("zh"),
                    fluids=tuple(str(f).lower() for f in d.get("fluids", []) or []),
                    plausible_max=None if d.get("plausible_max") is None else float(d["plausible_max"]),
                )
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(origin, f"labs[{i}] is malformed ({e.__class__.__name__}: {e})") from None
    return LabCatalogue(entries=tuple(entries))
