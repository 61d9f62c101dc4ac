"""Faithfulness checks: is every fact in the model's output present in the case?

Two checks guard `medfuse diagnose` against showing invented facts:

- `evidence_in_case(evidence, case)`: an `Evidence` item's value can be found at the place
  it cites (`labs[3]` holds that value, `vitals[0]` that reading, `cxr[0]:finding 1` that
  box, `genomics[2]` that variant, `ecg:lead II` a lead the recording has).
- `check_reasoning(text, case, evidence)`: the generated reasoning is split into
  sentences and each sentence is checked for claims the case cannot back:

  * a modality that the case does not have ("the chest X-ray shows ..." without an image),
  * a lab test the case does not have ("troponin is raised" without a troponin result),
  * a gene variant the case does not list ("EGFR L858R" without that variant),
  * a number that matches no value of the item it is attached to ("potassium 6.8" when the
    case's potassium is 4.1), or, when no item is named, no number in the case at all.

  A number may also be a criterion ("above 140/90", "> 2 mmol/L") when a comparison word
  precedes it and the number is a reference bound of the case's results or a threshold of
  the disease panel. Negated mentions ("no chest X-ray available", "troponin was not
  measured") are statements about absence, which the case does back.

  Sentences with an unsupported claim are removed from the text and returned in
  `ReasoningCheck.dropped` with the reason, so the caller can show them as flagged, never
  as fact. The check is lexical: it catches the invented numbers, tests, modalities and
  variants above; it cannot judge whether a stated inference is medically sound.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache

from medfuse.knowledge.labs import lab_entries, load_lab_catalogue
from medfuse.knowledge.panel import Panel, load_panel
from medfuse.record.case import VITAL_FIELDS, PatientCase
from medfuse.record.evidence import Evidence

__all__ = ["ReasoningCheck", "UnsupportedClaim", "check_reasoning", "evidence_in_case"]

# --------------------------------------------------------------------------- vocabularies

# Words that name a modality (English and Chinese). A sentence that names an absent
# modality without negating it claims something the case cannot back.
MODALITY_TERMS: dict[str, tuple[str, ...]] = {
    "cxr": ("chest x-ray", "chest x ray", "chest radiograph", "radiograph", "x-ray", "xray", "cxr", "chest film",
            "胸片", "胸部X线", "X线"),
    "ecg": ("ecg", "ekg", "electrocardiogram", "electrocardiography", "心电图"),
    "genomics": ("genomic", "genetic test", "sequencing", "variant panel", "基因检测", "基因突变"),
}

# Oncogenic driver genes a model might name; genes listed in the case are added per case.
KNOWN_GENES = ("EGFR", "KRAS", "ALK", "ROS1", "BRAF", "MET", "RET", "ERBB2", "HER2", "TP53", "STK11", "KEAP1",
               "NTRK1", "NTRK2", "NTRK3", "PIK3CA", "NRAS")

# Terms that bind a following number to a vital sign (field names of VitalSigns).
VITAL_TERMS: dict[str, tuple[str, ...]] = {
    "heart_rate": ("heart rate", "pulse", "HR", "心率", "脉搏"),
    "blood_pressure": ("blood pressure", "BP", "systolic", "diastolic", "血压"),
    "temperature": ("temperature", "temp", "fever", "febrile", "pyrexia", "体温", "发热"),
    "spo2": ("SpO2", "oxygen saturation", "saturation", "血氧"),
    "resp_rate": ("respiratory rate", "respiration rate", "breathing rate", "呼吸频率", "呼吸"),
}
_VITAL_FIELDS_OF = {"heart_rate": ("heart_rate",), "blood_pressure": ("sbp", "dbp"), "temperature": ("temperature",),
                    "spo2": ("spo2",), "resp_rate": ("resp_rate",)}

# ECG measurement words -> substrings of the ECG evidence items they refer to.
ECG_TERMS: dict[str, tuple[str, ...]] = {
    "PR interval": ("PR interval", "PR"),
    "QRS duration": ("QRS duration", "QRS"),
    "QTc": ("QTc",),
    "QT": ("QT interval", "QT"),
    "ST": ("ST elevation", "ST depression", "ST deviation", "ST segment"),
    "Sokolow": ("Sokolow",),
    "Cornell": ("Cornell",),
}

# Absence cues: near a term, they make the mention a statement of absence.
_ABSENCE_BEFORE = re.compile(r"(?:\bno|\bnot|\bwithout|\bmissing|\blacks?|\babsent|\bunavailable|\bnor|无|没有|未|缺少|缺乏)"
                             r"[^.;,]{0,30}$", re.I)
_ABSENCE_AFTER = re.compile(r"^[^.;]{0,30}(?:\bnot (?:available|provided|done|performed|measured|recorded|reported|given)"
                            r"|\bunavailable|\bmissing|\babsent|\bwas not|\bwere not|未提供|未检测|缺失|不可用)", re.I)
# Comparison cues: a number right after one of these may be a criterion, not a measurement.
_COMPARISON = re.compile(r"(?:>=?|<=?|≥|≤|\babove|\bbelow|\bover|\bunder|\bexceed\w*|\bgreater than|\bless than|"
                         r"\bhigher than|\blower than|\bthreshold|\bcut-?off|\blimit|\bupper|\blower|\bat least|"
                         r"\bat most|\bnormal|\brange|\breference|超过|高于|低于|大于|小于|不低于|不高于|正常)[^0-9]{0,12}$", re.I)
# A number standing alone (not part of a word like V1, HbA1c, I48, p.L858R, c.2573T>G).
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\w]|\.\d)")
# Numbers that are not measurements: "12-lead", "type 2", "stage 1", list numbering "1)".
_NOT_A_MEASUREMENT_AFTER = re.compile(r"^(?:\s*-?\s*(?:leads?\b|导联)|\*\d)", re.I)  # "12-lead", "10*9/L"
_NOT_A_MEASUREMENT_BEFORE = re.compile(r"(?:\d\*|\btype|\bstage|\bgrade|\bclass|\bstep|\bday|\bhour|\bpoint|型|级|期)\s*$", re.I)
# Tags whose contents are checked elsewhere (boxes) or are markup, not claims.
_MARKUP = re.compile(r"<\s*ref\s*>.*?<\s*/\s*ref\s*>\s*<\s*box\s*>.*?<\s*/\s*box\s*>|<\s*box\s*>.*?<\s*/\s*box\s*>|"
                     r"<\s*/?\s*(?:think|answer|ref|box)\s*>", re.S | re.I)
# Sentence ends: ". " (not the point of a decimal), "!", "?", ";" and their Chinese forms, newlines.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=;)\s*|(?<=[。！？；])|\n+")


@dataclass(frozen=True)
class UnsupportedClaim:
    """A sentence removed from the reasoning, and why (the claim the case does not back)."""

    sentence: str
    reason: str


@dataclass
class ReasoningCheck:
    """The reasoning with unsupported sentences removed, plus what was removed and why."""

    text: str
    dropped: list[UnsupportedClaim] = field(default_factory=list)
    n_sentences: int = 0

    @property
    def all_supported(self) -> bool:
        return not self.dropped


# --------------------------------------------------------------------------- helpers

def _term_pattern(term: str, any_case: bool = False) -> re.Pattern:
    """A regex for one term: word-bounded for Latin text, case-sensitive for short
    abbreviations ("HR", "BP", "Na") so that ordinary words do not match them."""
    escaped = re.escape(term)
    if re.search(r"[\u4e00-\u9fff]", term):  # Chinese: no word boundaries
        return re.compile(escaped)
    flags = re.I if any_case or not (len(term) <= 3 or term.isupper()) else 0
    return re.compile(rf"(?<![\w-]){escaped}(?![\w])", flags)


@lru_cache(maxsize=1)
def _lab_terms() -> tuple[tuple[str, re.Pattern], ...]:
    """(catalogue key, pattern) for every name, synonym and Chinese name of the catalogue."""
    out: list[tuple[str, re.Pattern]] = []
    for entry in load_lab_catalogue():
        terms = {entry.name, *(s for s in entry.synonyms), *(x for x in (entry.zh,) if x)}
        if len(entry.key) > 3:
            terms.add(entry.key.replace("_", " "))
        for t in terms:
            # Single letters ("K") and lower-case short forms ("cr", "co2") match ordinary text.
            if len(t) < 2 or (len(t) <= 3 and t.islower()):
                continue
            out.append((entry.key, _term_pattern(t)))
    # Generic names that cover two catalogue entries.
    out.append(("troponin", _term_pattern("troponin")))
    out.append(("troponin", _term_pattern("肌钙蛋白")))
    return tuple(out)


@lru_cache(maxsize=1)
def _vital_terms() -> tuple[tuple[str, re.Pattern], ...]:
    return tuple((key, _term_pattern(t)) for key, terms in VITAL_TERMS.items() for t in terms)


@lru_cache(maxsize=1)
def _ecg_terms() -> tuple[tuple[str, re.Pattern], ...]:
    return tuple((key, _term_pattern(t)) for key, terms in ECG_TERMS.items() for t in terms)


@lru_cache(maxsize=1)
def _modality_terms() -> tuple[tuple[str, re.Pattern], ...]:
    return tuple((m, _term_pattern(t, any_case=True)) for m, terms in MODALITY_TERMS.items() for t in terms)


@lru_cache(maxsize=8)
def _panel_thresholds(panel: Panel) -> frozenset[float]:
    """Numbers in the panel's evidence descriptions ("BP >= 140/90", "HbA1c >= 6.5 %")."""
    nums: set[float] = set()
    for d in panel:
        for text in d.evidence.values():
            nums.update(float(x) for x in re.findall(r"\d+(?:\.\d+)?", str(text)))
    return frozenset(nums)


def _negated(sentence: str, start: int, end: int) -> bool:
    return bool(_ABSENCE_BEFORE.search(sentence[:start]) or _ABSENCE_AFTER.search(sentence[end:]))


def _matches(written: str, value: float) -> bool:
    """True when the number as written equals `value` at the written precision (a model
    that writes 2.1 for 2.13 is rounding, not inventing), or within 1 %."""
    text = written
    x = float(text)
    decimals = len(text.split(".", 1)[1]) if "." in text else 0
    tolerance = 0.5 * 10 ** (-decimals) + 1e-9
    return abs(x - value) <= tolerance or (value != 0 and abs(x - value) <= 0.01 * abs(value))


def _numbers_in(obj) -> list[float]:
    """Every finite number inside an evidence value or detail (nested dicts and lists)."""
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [float(obj)] if math.isfinite(obj) else []
    if isinstance(obj, str):
        return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", obj)]
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _numbers_in(v)]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _numbers_in(v)]
    return []


@dataclass
class _CaseFacts:
    """The case's values indexed by what they measure, built once per check."""

    labs: dict[str, list[float]]  # catalogue key (or local name) -> values (source and canonical units)
    lab_bounds: dict[str, list[float]]  # catalogue key -> reference bounds
    vitals: dict[str, list[float]]  # VITAL_TERMS key -> values
    ecg: dict[str, list[float]]  # ECG_TERMS key -> values
    all_values: list[float]  # every number in the case's evidence and results
    bounds: list[float]  # reference bounds and thresholds found in the evidence
    genes: set[str]
    modalities: set[str]


def _case_facts(case: PatientCase, evidence: list[Evidence]) -> _CaseFacts:
    labs: dict[str, list[float]] = {}
    lab_bounds: dict[str, list[float]] = {}
    all_values: list[float] = []
    bounds: list[float] = []
    for r, entry in zip(case.labs, lab_entries(case), strict=True):
        key = entry.key if entry is not None else r.name.lower()
        values = [v for v in (r.value, r.source_value) if v is not None]
        if entry is not None and r.value is not None:
            canonical = entry.to_canonical(r.value, r.unit)
            if canonical is not None:
                values.append(canonical)
        labs.setdefault(key, []).extend(values)
        if key.startswith("troponin"):
            labs.setdefault("troponin", []).extend(values)
        item_bounds = [b for b in (r.ref_low, r.ref_high) if b is not None]
        if entry is not None:
            item_bounds += [b for b in (*entry.ref, *entry.critical) if b is not None]
        lab_bounds.setdefault(key, []).extend(item_bounds)
        all_values.extend(values)
        bounds.extend(item_bounds)
    vitals: dict[str, list[float]] = {k: [] for k in VITAL_TERMS}
    for v in case.vitals:
        for key, fields in _VITAL_FIELDS_OF.items():
            vitals[key].extend(float(getattr(v, f)) for f in fields if getattr(v, f) is not None)
    for f in VITAL_FIELDS:
        all_values.extend(float(getattr(v, f)) for v in case.vitals if getattr(v, f) is not None)
    ecg: dict[str, list[float]] = {k: [] for k in ECG_TERMS}
    for ev in evidence:
        nums = _numbers_in(ev.value)
        all_values.extend(nums)
        # Reference ranges and thresholds carried in the evidence's detail are criteria.
        for k, val in ev.detail.items():
            if any(s in k for s in ("ref", "threshold", "critical", "limit")):
                bounds.extend(_numbers_in(val))
            else:
                all_values.extend(_numbers_in(val))
        if ev.modality == "ecg":
            if ev.item == "heart_rate":
                vitals["heart_rate"].extend(nums)  # "heart rate 110" may cite the ECG rate
            for key, substrings in ECG_TERMS.items():
                if any(s.lower() in ev.item.lower() for s in substrings) or (key == "QTc" and "qt" in ev.item.lower()):
                    ecg[key].extend(nums)
    if case.demographics.age is not None:
        all_values.append(float(case.demographics.age))
    for g in case.genomics:
        if g.vaf is not None:
            all_values += [g.vaf, g.vaf * 100]
    return _CaseFacts(labs=labs, lab_bounds=lab_bounds, vitals=vitals, ecg=ecg, all_values=all_values,
                      bounds=bounds, genes={g.gene.upper() for g in case.genomics}, modalities=set(case.modalities()))


def _mentions(sentence: str, terms: tuple[tuple[str, re.Pattern], ...]) -> list[tuple[int, int, str]]:
    """(start, end, key) of every term occurrence, in order; a match inside a longer one is
    not a mention of its own ("Hemoglobin A1c" names HbA1c, not hemoglobin; "N末端B型利钠肽原"
    is NT-proBNP, not BNP)."""
    found = []
    for key, pat in terms:
        for m in pat.finditer(sentence):
            found.append((m.start(), m.end(), key))
    found.sort(key=lambda t: (t[0], -(t[1] - t[0])))
    kept: list[tuple[int, int, str]] = []
    for start, end, key in found:
        if any(s <= start and end <= e and (e - s) > (end - start) for s, e, _ in found):
            continue
        kept.append((start, end, key))
    return kept


# A source citation as `Evidence.cite()` writes it: "[labs[3]]", "[vitals[0], vitals[2]]",
# "[ecg:lead V2]", "[cxr[0]:finding 1]". It points into the case; its numbers are indices.
_CITATION = re.compile(r"\[((?:labs|vitals|cxr|genomics)\[\d+\][^\[\]]*(?:\[\d+\][^\[\]]*)*|ecg(?::[^\[\]]*)?)\]")
_CITED_INDEX = re.compile(r"(labs|vitals|cxr|genomics)\[(\d+)\]")


def _citation_problem(sentence: str, case: PatientCase) -> tuple[str, str | None]:
    """The sentence with its source citations blanked out, and a reason if one points nowhere."""
    problem = None
    for m in _CITATION.finditer(sentence):
        for kind, index in _CITED_INDEX.findall(m.group(1)):
            if int(index) >= len(getattr(case, kind)):
                problem = problem or f"cites {kind}[{index}], which the case does not have"
        if m.group(1).startswith("ecg") and case.ecg is None:
            problem = problem or "cites the ECG but the case has no ECG"
    return _CITATION.sub(lambda m: " " * len(m.group(0)), sentence), problem


def _sentence_problem(sentence: str, facts: _CaseFacts, thresholds: frozenset[float]) -> str | None:
    """The first unsupported claim in one sentence, as a short reason; None when all is backed."""
    for modality, pat in _modality_terms():
        for m in pat.finditer(sentence):
            if modality not in facts.modalities and not _negated(sentence, m.start(), m.end()):
                return f"mentions {modality} findings but the case has no {modality}"
    genes = set(KNOWN_GENES) | facts.genes
    for m in re.finditer(r"(?<![\w-])([A-Z][A-Z0-9]{1,6})(?![\w])", sentence):
        gene = m.group(1)
        if gene in genes and gene not in facts.genes and not _negated(sentence, m.start(), m.end()):
            return f"mentions a {gene} variant the case does not list"
    lab_mentions = _mentions(sentence, _lab_terms())
    for start, end, key in lab_mentions:
        if key not in facts.labs and not _negated(sentence, start, end):
            return f"mentions {key.replace('_', ' ')} but the case has no such result"
    # Bind each number to the nearest item named before it in the sentence.
    anchors: list[tuple[int, str, str]] = []  # (end position, kind, key)
    anchors += [(e, "lab", k) for _, e, k in lab_mentions]
    anchors += [(e, "vital", k) for _, e, k in _mentions(sentence, _vital_terms())]
    anchors += [(e, "ecg", k) for _, e, k in _mentions(sentence, _ecg_terms())]
    anchors.sort()
    criterion = False
    for m in _NUMBER.finditer(sentence):
        written = m.group(0).lstrip("+")
        if _NOT_A_MEASUREMENT_AFTER.match(sentence[m.end():]) or _NOT_A_MEASUREMENT_BEFORE.search(sentence[:m.start()]):
            continue
        if not sentence[:m.start()].strip() and sentence[m.end():m.end() + 1] in (".", ")", "、"):
            continue  # list numbering: "2. Creatinine ...", "3) ..."
        value = float(written)
        before = [a for a in anchors if a[0] <= m.start()]
        # The second number of a pair ("140/90") is whatever the first one was.
        paired = bool(re.search(r"\d\s*/\s*$", sentence[:m.start()]))
        criterion = criterion if paired else bool(_COMPARISON.search(sentence[:m.start()]))
        if before:
            _, kind, key = before[-1]
            values = (facts.labs if kind == "lab" else facts.vitals if kind == "vital" else facts.ecg).get(key, [])
            if kind == "lab" and key == "troponin":
                values = facts.labs.get("troponin", [])
            if any(_matches(written, v) for v in values):
                continue
            if criterion and (any(_matches(written, b) for b in facts.lab_bounds.get(key, []) + facts.bounds)
                              or value in thresholds):
                continue
            name = key.replace("_", " ")
            if not values:
                if kind == "ecg" and "ecg" in facts.modalities and any(_matches(written, v) for v in facts.all_values):
                    continue
                return f"states {written} for {name}, which the case does not report"
            return f"states {written} for {name}, which does not match the case"
        if any(_matches(written, v) for v in facts.all_values):
            continue
        if criterion and (value in thresholds or any(_matches(written, b) for b in facts.bounds)):
            continue
        return f"states the number {written}, which the case does not contain"
    return None


def split_sentences(text: str) -> list[str]:
    """Sentences of a reasoning text (decimal points do not end a sentence)."""
    pieces = [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]
    out: list[str] = []
    for piece in pieces:
        # A bare list marker ("2.") belongs to the sentence it numbers.
        if out and re.fullmatch(r"\d{1,2}[.)]", out[-1]):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def check_reasoning(text: str, case: PatientCase, evidence: list[Evidence], panel: Panel | None = None) -> ReasoningCheck:
    """Remove the sentences of `text` whose claims the case does not back (see module doc).

    `evidence` is `interpret_case(case)` (already computed by the caller); `panel`
    supplies the criteria thresholds a sentence may quote ("BP >= 140/90").
    """
    panel = panel or load_panel()
    facts = _case_facts(case, evidence)
    thresholds = _panel_thresholds(panel)
    kept: list[str] = []
    dropped: list[UnsupportedClaim] = []
    sentences = split_sentences(_MARKUP.sub(" ", text))
    for sentence in sentences:
        masked, problem = _citation_problem(sentence, case)
        problem = problem or _sentence_problem(masked, facts, thresholds)
        if problem is None:
            kept.append(sentence)
        else:
            dropped.append(UnsupportedClaim(sentence=sentence, reason=problem))
    joiner = "" if any(re.search(r"[\u4e00-\u9fff]", s) for s in kept) else " "
    return ReasoningCheck(text=joiner.join(kept), dropped=dropped, n_sentences=len(sentences))


# --------------------------------------------------------------------------- evidence values

_INDEXED = re.compile(r"^(labs|vitals|cxr|genomics)\[(\d+)\]")


def evidence_in_case(ev: Evidence, case: PatientCase) -> bool:
    """True when `ev.value` can be found at the place `ev.source` cites in `case`.

    ECG measurements are computed from the signal, so for them the check is that the
    case has an ECG with the cited lead(s); every other value must equal the input.
    """
    if ev.modality == "demographics":
        if ev.item == "age":
            return case.demographics.age is not None and _close(ev.value, case.demographics.age)
        if ev.item == "sex":
            return ev.value == case.demographics.sex
        return False
    if ev.modality == "ecg":
        if case.ecg is None:
            return False
        leads = {name.upper() for name in case.ecg.leads}
        m = re.match(r"^ecg:leads? (.+)$", ev.source)
        if m is None:
            return ev.source.startswith("ecg")
        cited = [x.strip().upper() for x in m.group(1).split(",")]
        return all(c in leads for c in cited) or cited == ["ALL"] or m.group(1) == "all leads"
    sources = [s.strip() for s in ev.source.split(",")]
    for source in sources:
        m = _INDEXED.match(source)
        if m is None:
            return False
        kind, index = m.group(1), int(m.group(2))
        if kind == "labs":
            if index >= len(case.labs):
                return False
            r = case.labs[index]
            if isinstance(ev.value, float) and not _close(ev.value, r.value):
                return False
            if isinstance(ev.value, str) and ev.value not in (r.value_text, f"{r.censored}{r.value:g}" if r.censored and r.value is not None else None):
                return False
        elif kind == "vitals":
            if index >= len(case.vitals):
                return False
            v = case.vitals[index]
            if len(sources) > 1 or (ev.unit is None and isinstance(ev.value, float)):
                continue  # a screening score (qSOFA) over several sets: each cited set must exist
            if ev.item == "blood_pressure":
                if v.sbp is None or v.dbp is None or ev.value != f"{v.sbp:g}/{v.dbp:g}":
                    return False
            elif ev.item in VITAL_FIELDS and not _close(ev.value, getattr(v, ev.item)):
                return False
        elif kind == "cxr":
            if index >= len(case.cxr):
                return False
            fm = re.search(r"finding (\d+)", source)
            findings = case.cxr[index].findings
            if fm is None or int(fm.group(1)) >= len(findings):
                return False
            finding = findings[int(fm.group(1))]
            if finding.label != ev.item or (ev.value is not None and list(ev.value) not in finding.boxes):
                return False
        elif kind == "genomics":
            if index >= len(case.genomics):
                return False
            g = case.genomics[index]
            if g.gene != ev.item or ev.value != g.hgvs:
                return False
    return True


def _close(a, b) -> bool:
    try:
        return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    except (TypeError, ValueError):
        return False
