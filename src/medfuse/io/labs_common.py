"""One lab result from any source -> `LabResult`, shared by the CSV, FHIR and MIMIC-IV importers.

`make_lab_result` takes what a lab system exports (a test name, a value that may be a
number or text, a unit, a reference range, a flag, a time) and returns a `LabResult`
in the catalogue's canonical UCUM unit, or None when the result cannot be kept. Every
decision is counted in the `ImportReport`, so nothing is dropped silently:

- numbers: plain ('5.2', '1e3'), thousands separators ('1,234.5', '1.234,5'), and a
  European decimal comma ('1,2') where it cannot be a thousands separator. '1,200'
  is ambiguous (1.2 or 1200) and is skipped rather than guessed;
- censored results ('<0.5', '>= 1000', '≤0.01') are kept: `value` is the bound,
  `censored` the comparator and `value_text` the raw text;
- text results ('see note', 'hemolysed', 'pos'), empty values and NaN are skipped; a
  negative value is skipped for catalogue tests (none of them can be negative:
  concentrations, counts, percentages, ratios);
- an infinite value, or one beyond what a living patient can have (the catalogue's
  `plausible_max` in its canonical unit, `UNMAPPED_LAB_LIMIT` for other tests), is a
  damaged file, not a result: `InputError` naming the file and row, or with `skip_bad`
  dropped and listed in the report. A glucose of 1e308 would otherwise reach the model;
- the test maps to the catalogue by LOINC, else by name (and fluid when given); a
  mapped result is converted to the canonical unit (value *and* reference range), the
  original kept in `source_value` / `source_unit`; a unit the catalogue does not know
  for that test (glucose in U/L) is skipped, because a number in an unknown unit is
  worse than no number. Unmapped tests are kept as given, with `code=None` and the unit
  in UCUM spelling, for the model's "other labs" and for a user's own catalogue;
- flags are mapped to the HL7 interpretation codes (L, H, LL, HH, A, AA, N).

Reasons passed to `report.skip` / `report.note` are short fixed strings (plus the
catalogue key or unit), never patient data.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from medfuse.errors import InputError
from medfuse.io.base import ImportReport
from medfuse.knowledge.labs import LabCatalogue, LabEntry, load_lab_catalogue, normalise_unit
from medfuse.record.case import LabResult

# The largest magnitude kept for a test not in the catalogue (its unit is unknown). The
# largest real lab numbers are counts per litre (red cells, ~6e12 /L); anything beyond
# 1e15 is a damaged value, not a measurement.
UNMAPPED_LAB_LIMIT = 1e15

# '<0.5', '< 0.5', '>=1000', '≤0.01', '<= 5,0'. The bound is parsed like any number.
_CENSORED = re.compile(r"^\s*(<=|>=|=<|=>|≤|≥|<|>)\s*(.+?)\s*$")
_COMPARATOR = {"<": "<", ">": ">", "<=": "<=", ">=": ">=", "=<": "<=", "=>": ">=", "≤": "<=", "≥": ">="}
_PLAIN = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_COMMA_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")  # 1,234 / 1,234,567.8
_DOT_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(\.\d{3})+,\d+$")  # 1.234,5 (European)
_COMMA_DECIMAL = re.compile(r"^[+-]?\d+,\d+$")  # 1,2 / 12,50

# Source flag spellings -> HL7 v3 ObservationInterpretation / v2 abnormal flags.
# Keys are lower-case and stripped. 'HU'/'LU' ("significantly high/low") are not
# critical, so they stay H/L; only explicit critical/panic spellings become HH/LL.
_FLAGS: dict[str, str] = {
    "h": "H", "high": "H", "hi": "H", "above high normal": "H", "+": "H", "hu": "H", "significantly high": "H",
    "l": "L", "low": "L", "lo": "L", "below low normal": "L", "-": "L", "lu": "L", "significantly low": "L",
    "hh": "HH", "critical high": "HH", "critically high": "HH", "high critical": "HH", "panic high": "HH",
    "high panic": "HH", "h*": "HH", "c+": "HH",
    "ll": "LL", "critical low": "LL", "critically low": "LL", "low critical": "LL", "panic low": "LL",
    "low panic": "LL", "l*": "LL", "c-": "LL",
    "a": "A", "abnormal": "A", "abn": "A", "pos": "A", "positive": "A", "det": "A", "detected": "A",
    "aa": "AA", "critical": "AA", "critically abnormal": "AA", "critical abnormal": "AA", "panic": "AA",
    "n": "N", "normal": "N", "nl": "N", "wnl": "N", "within normal limits": "N", "neg": "N", "negative": "N",
    "nd": "N", "not detected": "N",
}


class _Unparsed(Exception):
    """A value that is not a number; `reason` is the skip reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def parse_number(text: str) -> tuple[float, bool]:
    """Parse a lab number written as text. Returns (value, used_decimal_comma).

    >>> parse_number("5.2"), parse_number("1,234.5"), parse_number("1.234,5"), parse_number("12,5")
    ((5.2, False), (1234.5, False), (1234.5, True), (12.5, True))

    Raises ValueError for text that is not a number or a comma that could be a decimal
    comma or a thousands separator ('1,200').
    """
    s = text.strip().replace("\u2212", "-").replace(" ", "").replace("\u00a0", "")
    if _PLAIN.match(s):
        return float(s), False
    if _DOT_THOUSANDS.match(s):
        return float(s.replace(".", "").replace(",", ".")), True
    if _COMMA_THOUSANDS.match(s):
        if "." not in s and s.count(",") == 1:
            raise ValueError("ambiguous comma")  # '1,200': 1.2 (European) or 1200?
        return float(s.replace(",", "")), False
    if _COMMA_DECIMAL.match(s):
        return float(s.replace(",", ".")), True
    raise ValueError("not a number")


def _parse_value(raw: Any) -> tuple[float, str | None, str | None, bool]:
    """(value, censored comparator, raw text when not a plain number, decimal comma used)."""
    if raw is None:
        raise _Unparsed("empty lab value")
    if isinstance(raw, bool):  # bool is an int subclass; True is not a lab value
        raise _Unparsed("text lab value")
    if isinstance(raw, (int, float)):
        return float(raw), None, None, False
    text = str(raw).strip()
    if not text:
        raise _Unparsed("empty lab value")
    m = _CENSORED.match(text)
    comparator = None
    number_text = text
    if m:
        comparator = _COMPARATOR[m.group(1)]
        number_text = m.group(2)
    try:
        value, comma = parse_number(number_text)
    except ValueError as e:
        if str(e) == "ambiguous comma":
            raise _Unparsed("ambiguous decimal comma in lab value") from None
        word = number_text.strip().lower().lstrip("+-")
        if word == "nan":
            raise _Unparsed("NaN lab value") from None
        if word in ("inf", "infinity"):
            return math.inf, comparator, text, False

        raise _Unparsed("text lab value") from None
    keep_text = text if (comparator or comma) else None
    return value, comparator, keep_text, comma


def map_flag(flag: str | None, report: ImportReport | None = None) -> str | None:
    """A source abnormal flag as an HL7 interpretation code (L, H, LL, HH, A, AA, N).

    >>> map_flag("critical high"), map_flag("abnormal"), map_flag("L"), map_flag(None)
    ('HH', 'A', 'L', None)

    An unknown flag is dropped (the result is kept) and counted.
    """
    if flag is None:
        return None
    key = str(flag).strip().lower()
    if not key:
        return None
    code = _FLAGS.get(key)
    if code is None and report is not None:
        report.note("unknown lab flag dropped")
    return code


def _to_datetime(time: dt.datetime | dt.date | str | None, report: ImportReport | None) -> dt.datetime | None:
    """A naive datetime. Aware times are converted to UTC, so results from sources that
    mix offsets ('Z' and '+02:00') stay comparable within one case."""
    if time is None:
        return None
    if isinstance(time, str):
        s = time.strip()
        if not s:
            return None
        try:
            time = dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError:
            time = _parse_local_date(s)
            if time is None:
                _note(report, "unreadable or ambiguous lab time dropped")
                return None
    elif isinstance(time, dt.date) and not isinstance(time, dt.datetime):
        time = dt.datetime(time.year, time.month, time.day)
    if not isinstance(time, dt.datetime):
        _note(report, "unreadable lab time dropped")
        return None
    if time.tzinfo is not None:
        time = time.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return time


# '01/03/2024 08:10', '1.3.2024', '2024/03/01 8:10:00'
_NUMERIC_DATE = re.compile(r"^(\d{1,4})[/.\-](\d{1,2})[/.\-](\d{1,4})(?:[ T](\d{1,2}):(\d{2})(?::(\d{2}))?)?$")


def _parse_local_date(text: str) -> dt.datetime | None:
    """A date in a common non-ISO spelling, or None when unreadable or ambiguous.

    Year first ('2024/03/01') and dotted dates ('01.03.2024', day first wherever dots are
    used) are read; a slashed date is read only when a part above 12 shows which is the
    day, because '01/03/2024' is 1 March in Europe and 3 January in the US.
    """
    m = _NUMERIC_DATE.match(text.strip())
    if not m:
        return None
    a, b, c = (int(x) for x in m.group(1, 2, 3))
    hh, mm, ss = int(m.group(4) or 0), int(m.group(5) or 0), int(m.group(6) or 0)
    sep = text.strip()[len(m.group(1))]
    if len(m.group(1)) == 4:
        year, month, day = a, b, c
    elif len(m.group(3)) == 4 or len(m.group(3)) == 2:
        year = c if len(m.group(3)) == 4 else 2000 + c if c < 70 else 1900 + c
        if sep == "." or a > 12:
            day, month = a, b
        elif b > 12:
            month, day = a, b
        else:
            return None  # day/month order unknowable
    else:
        return None
    try:
        return dt.datetime(year, month, day, hh, mm, ss)
    except ValueError:
        return None


def _finite(x: Any) -> float | None:
    """A float reference limit, or None for missing / text / NaN."""
    if x is None or isinstance(x, bool):
        return None
    if isinstance(x, str):
        try:
            x = parse_number(x)[0]
        except ValueError:
            return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _skip(report: ImportReport | None, reason: str) -> None:
    if report is not None:
        report.skip(reason)


def _note(report: ImportReport | None, reason: str) -> None:
    if report is not None:
        report.note(reason)


def make_lab_result(
    name: str,
    raw_value: Any,
    unit: str | None,
    *,
    loinc: str | None = None,
    ref_low: Any = None,
    ref_high: Any = None,
    flag: str | None = None,
    time: dt.datetime | dt.date | str | None = None,
    fluid: str | None = None,
    report: ImportReport | None = None,
    catalogue: LabCatalogue | None = None,
    source: str | Path | None = None,
    where: str | None = None,
    skip_bad: bool = False,
) -> LabResult | None:
    """One lab result in canonical form, or None when it cannot be kept (reason counted).

    `raw_value` is a number or the text the source holds ('5.2', '<0.5', '1,2', 'see
    note'); `unit` any common spelling (mapped to UCUM); `ref_low`/`ref_high` numbers or
    numeric text in the same unit as the value; `flag` the source's abnormal flag in any
    common spelling; `time` a datetime or ISO text; `fluid` the specimen ('Blood',
    'Urine') when the source says. `catalogue` defaults to the bundled lab catalogue.

    An implausible value (infinite, or beyond the test's plausible range) raises
    `InputError` naming `source` and `where` (e.g. 'line 12'); with `skip_bad` it is
    dropped and listed in `report` instead.
    """
    name = (name or "").strip()
    loinc = (loinc or "").strip() or None
    if not name and not loinc:
        _skip(report, "lab result without a test name or code")
        return None
    try:
        value, censored, value_text, comma = _parse_value(raw_value)
    except _Unparsed as e:
        _skip(report, e.reason)
        return None
    if math.isnan(value):
        _skip(report, "NaN lab value")
        return None

    cat = catalogue if catalogue is not None else load_lab_catalogue()
    entry = cat.lookup(name=name or None, loinc=loinc, fluid=fluid)
    problem = _implausible(value, unit, entry)
    if problem is not None:
        error = InputError(source, f"{where}: {problem}" if where else problem)
        if not skip_bad or report is None:
            raise error
        report.skip_file(error, "implausible lab value")
        return None
    low, high = _finite(ref_low), _finite(ref_high)
    if low is not None and high is not None and low > high:
        _note(report, "lab reference range with low > high dropped")
        low = high = None

    if entry is not None:
        result = _mapped(entry, name, value, unit, low, high, loinc, report)
        if result is None:
            return None
    else:
        if loinc is None and not name:
            return None
        result = {"name": name or loinc, "loinc": loinc, "code": None, "value": value,
                  "unit": normalise_unit(unit), "ref_low": low, "ref_high": high}

    if comma:
        _note(report, "decimal comma read as a decimal point")
    if censored:
        _note(report, "censored lab value kept as its bound")
    return LabResult(
        **result,
        censored=censored,
        value_text=value_text,
        time=_to_datetime(time, report),
        flag=map_flag(flag, report),
    )


def _implausible(value: float, unit: str | None, entry: LabEntry | None) -> str | None:
    """Why `value` cannot be a real result of the test (None when it can). The message
    names the test and the bound, never the value (a record's content)."""
    if not math.isfinite(value):
        return f"infinite value for lab test {entry.key if entry else 'result'}"
    if entry is None:
        if abs(value) > UNMAPPED_LAB_LIMIT:
            return f"lab value beyond {UNMAPPED_LAB_LIMIT:g} (not a measurement)"
        return None
    canonical = entry.to_canonical(value, unit) if entry.knows_unit(unit) else None
    limit = entry.plausible_max
    if canonical is not None and limit is not None and canonical > limit:
        return f"{entry.key} value above the plausible maximum of {limit:g} {entry.unit}"
    return None


def _mapped(entry: LabEntry, name: str, value: float, unit: str | None, low: float | None, high: float | None,
            loinc: str | None, report: ImportReport | None) -> dict | None:
    """Fields of a catalogue-mapped result in the canonical unit, or None (reason counted)."""
    if value < 0:
        # Every catalogue analyte is a concentration, count, activity, percentage or ratio.
        _skip(report, f"negative value for {entry.key}")
        return None
    src_unit = normalise_unit(unit)
    if not entry.knows_unit(src_unit):
        _skip(report, f"unknown unit for {entry.key}")
        return None
    converted = src_unit is not None and src_unit != entry.unit
    canonical = entry.to_canonical(value, src_unit)
    if canonical is None:  # knows_unit said yes; kept for safety if the two ever disagree
        _skip(report, f"unknown unit for {entry.key}")
        return None
    fields: dict[str, Any] = {
        "name": name or entry.name,
        "loinc": loinc or (entry.loinc[0] if entry.loinc else None),
        "code": entry.key,
        "value": _tidy(canonical) if converted else value,
        "unit": entry.unit,
        "ref_low": None if low is None else (_tidy(entry.to_canonical(low, src_unit)) if converted else low),
        "ref_high": None if high is None else (_tidy(entry.to_canonical(high, src_unit)) if converted else high),
    }
    if src_unit is None:
        _note(report, f"no unit given, {entry.unit} assumed for {entry.key}")
    if converted:
        fields["source_value"] = value
        fields["source_unit"] = src_unit
        _note(report, f"unit converted {src_unit} -> {entry.unit} ({entry.key})")
    return fields


def _tidy(x: float | None) -> float | None:
    """Round away float noise from a unit factor (5.5 * 18.016 = 99.08800000000001)."""
    return None if x is None else float(f"{x:.12g}")


def dedupe_labs(results: Iterable[LabResult], report: ImportReport | None = None) -> list[LabResult]:
    """The results without exact duplicates (same test, time, value and unit), in order.

    Duplicates come from exports that repeat a panel or merge two feeds; each dropped
    copy is counted.
    """
    kept: list[LabResult] = []
    seen: set[tuple] = set()
    for r in results:
        key = (r.code or r.name.strip().lower(), r.loinc if r.code is None else None, r.time, r.value, r.censored,
               r.unit)
        if key in seen:
            _skip(report, "duplicate lab result (same test, time and value)")
            continue
        seen.add(key)
        kept.append(r)
    return kept
