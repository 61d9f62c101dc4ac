"""Lab interpretation: each result of a case becomes one `Evidence` item with a flag.

The flag comes from the result's own reference range (the laboratory that measured it
knows its assay best), else from the lab catalogue's adult range; the catalogue's
critical limits turn L/H into LL/HH. Censored results ('<0.01') are flagged only when
every value the bound allows gets the same flag, so a troponin T of '<0.01' ng/mL with
range 0-0.01 is normal, not low. Results are mapped onto the catalogue by
`medfuse.knowledge.labs.lab_entries`; those it does not know are kept, marked
`mapped: False` in `detail`, and read against their own range when they have one
(interpretation 'unmapped' when they have none).

Flags use the HL7 interpretation codes of `medfuse.record.case` (LL, L, N, H, HH) plus
'IND' (indeterminate: no range, or a censored bound that straddles a limit).
"""

from __future__ import annotations

import math

from medfuse.knowledge.labs import LabCatalogue, LabEntry, lab_entries, normalise_unit
from medfuse.record.case import LabResult, PatientCase
from medfuse.record.evidence import Evidence

INTERPRETATION: dict[str, str] = {
    "LL": "critically low",
    "L": "low",
    "N": "normal",
    "H": "high",
    "HH": "critically high",
    "IND": "indeterminate",
}
ABNORMAL_FLAGS = frozenset({"LL", "L", "H", "HH", "A", "AA"})
_ORDER = ("LL", "L", "N", "H", "HH")


def lab_flag(
    value: float,
    ref_low: float | None,
    ref_high: float | None,
    critical: tuple[float | None, float | None] | None = None,
    *,
    censored: str | None = None,
) -> str:
    """The flag of a value against a reference range and optional critical limits.

    Range limits are inclusive (a value equal to a limit is normal, as in MIMIC-IV);
    critical limits are exceeded strictly. Returns 'LL', 'L', 'N', 'H', 'HH', or 'IND'
    when there is no range at all or when a censored value ('<', '<=', '>', '>=' with
    `value` as the bound) could fall on either side of a limit. 'IND' is not a
    `LabResult.flag`: store None for it. Censored lower bounds assume a non-negative
    quantity (a concentration cannot be below 0) unless the bound itself is <= 0.

    >>> lab_flag(5.8, 3.3, 5.1)
    'H'
    >>> lab_flag(7.0, 3.3, 5.1, (2.5, 6.5))
    'HH'
    >>> lab_flag(5.1, 3.3, 5.1)
    'N'
    >>> lab_flag(0.01, 0.0, 0.01, censored="<")   # troponin '<0.01' is normal
    'N'
    >>> lab_flag(5, 3.5, None, censored="<")      # '<5' with a lower limit 3.5: either side
    'IND'
    >>> lab_flag(1000, 70, 100, (40, 500), censored=">")
    'HH'
    >>> lab_flag(1.0, None, None)
    'IND'
    """
    crit_low, crit_high = critical if critical is not None else (None, None)
    if ref_low is None and ref_high is None and crit_low is None and crit_high is None:
        return "IND"
    value = float(value)
    if math.isnan(value):
        return "IND"

    def flag_at(x: float) -> str:
        if crit_low is not None and x < crit_low:
            return "LL"
        if crit_high is not None and x > crit_high:
            return "HH"
        if ref_low is not None and x < ref_low:
            return "L"
        if ref_high is not None and x > ref_high:
            return "H"
        return "N"

    if censored is None:
        return flag_at(value)
    # The flag is monotonic in the value, so the censored interval's flags run from the
    # flag at one end to the flag at the other; it has one flag only if both ends agree.
    if censored in ("<", "<="):
        top = value if censored == "<=" else math.nextafter(value, -math.inf)
        bottom = 0.0 if value > 0 else -math.inf
        ends = (flag_at(bottom), flag_at(top))
    elif censored in (">", ">="):
        bottom = value if censored == ">=" else math.nextafter(value, math.inf)
        ends = (flag_at(bottom), flag_at(math.inf))
    else:
        raise ValueError(f"censored must be one of '<', '<=', '>', '>=', got {censored!r}")
    return ends[0] if ends[0] == ends[1] else "IND"


def interpret_lab(result: LabResult, index: int, entry: LabEntry | None) -> Evidence:
    """One result as Evidence; `index` is its position in `case.labs` (cited as 'labs[i]'),
    `entry` its catalogue entry (`lab_entries(case)`; None for an unmapped test)."""
    unit = normalise_unit(result.unit)
    item = entry.key if entry is not None else result.name
    value_cited: float | str | None
    if result.value is None:
        value_cited = result.value_text
    elif result.censored:
        value_cited = f"{result.censored}{result.value:g}"
    else:
        value_cited = float(result.value)
    detail: dict = {
        "name": result.name,
        "mapped": entry is not None,
        "source_flag": result.flag,
    }
    if result.loinc:
        detail["loinc"] = result.loinc
    if result.time is not None:
        detail["time"] = result.time.isoformat()

    def evidence(interpretation: str, flag: str | None) -> Evidence:
        detail["flag"] = flag
        return Evidence(modality="labs", item=item, value=value_cited, unit=result.unit,
                        interpretation=interpretation, abnormal=flag in ABNORMAL_FLAGS,
                        source=f"labs[{index}]", detail=detail)

    if result.value is None:
        return evidence("no numeric value", None)

    # Compare in the catalogue's canonical unit when the entry knows the result's unit,
    # so the catalogue's range and critical limits apply; else in the result's own unit.
    to_canonical = entry is not None and entry.knows_unit(unit)
    value = entry.to_canonical(result.value, unit) if to_canonical else float(result.value)
    critical = entry.critical if to_canonical else None
    if result.ref_low is not None or result.ref_high is not None:
        low, high = result.ref_low, result.ref_high
        if to_canonical:
            low = None if low is None else entry.to_canonical(low, unit)
            high = None if high is None else entry.to_canonical(high, unit)
        detail.update(ref_low=result.ref_low, ref_high=result.ref_high, range_source="result")
    elif to_canonical and (entry.ref[0] is not None or entry.ref[1] is not None):
        low, high = entry.ref
        detail.update(ref_low=low, ref_high=high, range_source="catalogue", ref_unit=entry.unit)
    else:
        low = high = None
    if low is None and high is None and not (critical and any(c is not None for c in critical)):
        # Nothing to compare against: fall back on the source's own flag when it gave one.
        if result.flag is not None:
            detail["range_source"] = "source flag"
            reading = {**INTERPRETATION, "A": "abnormal", "AA": "critically abnormal"}.get(result.flag, "abnormal")
            return evidence(reading, result.flag)
        if entry is None:
            return evidence("unmapped", None)
        reading = "no reference range" if entry.knows_unit(unit) else "unit not comparable with the catalogue"
        return evidence(reading, None)
    if critical and any(c is not None for c in critical):
        detail["critical"] = list(critical)
    flag = lab_flag(value, low, high, critical, censored=result.censored)
    return evidence(INTERPRETATION[flag], flag)


def interpret_labs(case: PatientCase, catalogue: LabCatalogue | None = None) -> list[Evidence]:
    """One `Evidence` per lab result of `case`, in order, each citing 'labs[i]'.

    `interpretation` is one of: normal, low, high, critically low, critically high,
    indeterminate, unmapped, no reference range, no numeric value (or the reading of the
    source's own flag when no range exists). `detail` holds the flag code, the range used
    and where it came from ('result', 'catalogue', 'source flag'), the source's own flag,
    and `mapped` (False for tests the catalogue does not know).
    """
    entries = lab_entries(case, catalogue)
    return [interpret_lab(r, i, entry) for i, (r, entry) in enumerate(zip(case.labs, entries, strict=True))]


__all__ = ["ABNORMAL_FLAGS", "INTERPRETATION", "interpret_lab", "interpret_labs", "lab_flag"]
