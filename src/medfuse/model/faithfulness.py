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
  * an image finding without a chest X-ray, or (when the case says which findings its
    image has: supplied findings, labels or the finding head's) one not among them,
  * an ECG lead finding the reading does not report in the leads named ("T inversion in
    V4-V6" when the reader found it in V5 only), or a lead the recording lacks,
  * a "normal" claim about items the case reads as abnormal ("no measured item is
    abnormal", "labs are unremarkable", "potassium is normal"), scoped to the test or
    modality it names,
  * a number that is not the value of the test it is attached to. A number is tied to
    the test named in its clause (catalogue names and synonyms, everyday names like
    "blood sugar", vital-sign words like "fever", ECG measurements), to the measurement
    its unit names ("112 bpm", "38.9 °C") or to the age ("67-year-old"); it must equal
    that item's value at the written precision or after unit conversion. A number tied
    to nothing counts against the sentence unless it is plainly not a measurement (a
    count, a year, a lead, a list number) or the case's notes state it the same way.

  A number may also be a criterion ("above 140/90", "> 2 mmol/L") when a comparison word
  precedes it and the number is a reference bound of the case's results or a threshold of
  the disease panel. Negated mentions ("no chest X-ray available", "troponin was not
  measured", "no consolidation") are statements about absence, which the case backs unless
  it reports that very thing.

  With the numbered evidence list the prompt showed (`cited`), citations are checked too:
  every `[Ek]` must be an item of the list, and a sentence about a disease (a rationale
  line "Heart failure: ... [E3]", or one that names the disease) may cite only items the
  panel's evidence rules (`knowledge/evidence_support.yaml`) tie to that disease. The
  first sentence of a rationale line ("Heart failure: supported by ...") may likewise
  name only tests, readings, ECG lead findings and image findings of listed items tied
  to its disease, and no word grown out of a test's name ("Sokolowljen"). The
  constrained decoder offers only rationales this check keeps (`rationale_filter`).

  `check_consistency` compares a reasoning with the disease head's decision: every
  reported disease has a rationale line that survived the check, and no sentence outside
  the considered-but-absent line argues for a disease the head does not report.

  Sentences with an unsupported claim are removed from the text and returned in
  `ReasoningCheck.dropped` with the reason, so the caller can show them as flagged, never
  as fact. A reasoning cut off mid-sentence (an open `<think>` or a last sentence without
  closing punctuation) is marked `truncated` and its partial sentence is dropped and
  counted like the others. The check is lexical: it catches the invented numbers, tests,
  modalities, findings, leads and variants above; it cannot judge whether a stated
  inference is medically sound.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from medfuse.formats import parse_think
from medfuse.knowledge.evidence_support import finding_supports, supported_diseases
from medfuse.knowledge.labs import lab_entries, load_lab_catalogue
from medfuse.knowledge.panel import Panel, load_panel
from medfuse.model.reasoning_terms import (
    ECG_LEAD_FINDING_TERMS,
    ECG_TERMS,
    FINDING_TERMS,
    KNOWN_GENES,
    LAY_LAB_TERMS,
    VITAL_TERMS,
    Mention,
    clause_index,
    ecg_lead_finding_terms,
    ecg_terms,
    finding_mentions,
    lab_terms,
    lead_mentions,
    mentions,
    modality_terms,
    scope_terms,
    term_pattern,
    vital_terms,
)
from medfuse.record.case import VITAL_FIELDS, PatientCase
from medfuse.record.evidence import Evidence

__all__ = ["TRUNCATED_REASON", "ConsistencyCheck", "ReasoningCheck", "UnsupportedClaim", "check_consistency",
           "check_reasoning", "evidence_in_case", "evidence_supports", "split_sentences"]

# --------------------------------------------------------------------------- cues

_VITAL_FIELDS_OF = {"heart_rate": ("heart_rate",), "blood_pressure": ("sbp", "dbp"), "temperature": ("temperature",),
                    "spo2": ("spo2",), "resp_rate": ("resp_rate",)}
# Number words that stand for a measured value: "V1, V5" and friends are leads, not values.
_VAF_TERMS = tuple(term_pattern(t) for t in ("VAF", "variant allele frequency", "allele frequency", "等位基因频率"))

# Absence cues: near a term, they make the mention a statement of absence.
_ABSENCE_BEFORE = re.compile(r"(?:\bno|\bnot|\bwithout|\bmissing|\blacks?|\babsent|\bunavailable|\bnor|无|没有|未|缺少|缺乏)"
                             r"[^.;,]{0,30}$"
                             # a list under an absence heading: "not assessed: heart rate, white cell count"
                             r"|(?:\bnot assessed|\bnot measured|\bmissing|\bunavailable|未评估|未检测)\s*[:：][^.;]*$",
                             re.IGNORECASE)
_ABSENCE_AFTER = re.compile(r"^[^.;]{0,30}(?:\bnot (?:available|provided|done|performed|measured|recorded|reported|given)"
                            r"|\bunavailable|\bmissing|\babsent|\bwas not|\bwere not|\bcannot be (?:assessed|evaluated|"
                            r"determined|judged)|\bcould not be (?:assessed|evaluated|determined|judged)|"
                            r"未提供|未检测|缺失|不可用|无法评估|无法判断)", re.IGNORECASE)
# Comparison cues: a number right after one of these may be a criterion, not a measurement.
_COMPARISON = re.compile(r"(?:>=?|<=?|≥|≤|\babove|\bbelow|\bover|\bunder|\bexceed\w*|\bgreater than|\bless than|"
                         r"\bhigher than|\blower than|\bthreshold|\bcut-?off|\blimit|\bupper|\blower|\bat least|"
                         r"\bat most|\bnormal|\brange|\breference|\bref|超过|高于|低于|大于|小于|不低于|不高于|正常)"
                         r"[^0-9]{0,12}$", re.IGNORECASE)
# A number standing alone (not part of a word like V1, HbA1c, I48, p.L858R, c.2573T>G);
# thousands separators ("263,000") belong to the number.
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w]|\.\d|,\d{3}(?!\d))")
# Numbers that are not measurements: "12-lead", "type 2", "stage 1", "lead 2", "10*9/L".
_NOT_A_MEASUREMENT_AFTER = re.compile(r"^(?:\s*-?\s*(?:leads?\b|导联)|\*\d)", re.IGNORECASE)
_NOT_A_MEASUREMENT_BEFORE = re.compile(r"(?:\d\*|\btype|\bstage|\bgrade|\bclass|\bstep|\bday|\bhour|\bpoint|\bleads?|"
                                       r"\bnumber|\bNo\.|\bcase|\bitem|#|型|级|期)\s*$", re.IGNORECASE)
# Counts: "2 findings", "3 of 4 criteria", "两项" is written without digits, "2项".
_COUNT_AFTER = re.compile(r"^\s*(?:(?:abnormal|measured|candidate|positive|negative|other|more|additional|separate|"
                          r"different)\s+)?(?:findings?|items?|results?|readings?|values?|measurements?|tests?|"
                          r"criteri(?:on|a)|diseases?|diagnos[ie]s|candidates?|abnormalit(?:y|ies)|signs?|features?|"
                          r"modalit(?:y|ies)|sets?|sentences?|points?|times?|of\b|out of\b)|^\s*[项个条种处]", re.IGNORECASE)
_YEAR = re.compile(r"^(?:19|20)\d\d$")
# The age: "67-year-old", "67 years old", "aged 67", "67岁".
_AGE_AFTER = re.compile(r"^\s*-?\s*(?:years?|yrs?|y)(?:\s*-?\s*old\b|(?=\s+of\s+age))|^\s*岁|^\s*y/o\b", re.IGNORECASE)
_AGE_BEFORE = re.compile(r"(?:\baged?|\bage of|年龄)\s*:?\s*$", re.IGNORECASE)
# A unit that names exactly one kind of measurement ties its number to it ("112 bpm").
# The first number of a pair ("150/95 mmHg") carries the pair's unit.
_UNIT_TIES: tuple[tuple[re.Pattern, str, str], ...] = tuple(
    (re.compile(r"^(?:\s*/\s*\d+(?:\.\d+)?)?\s*" + unit, re.IGNORECASE), kind, key) for unit, kind, key in (
        (r"(?:bpm\b|beats?\s*(?:per|/)\s*min)", "vital", "heart_rate"),
        (r"(?:°\s*[CF]\b|℃|℉|degrees?\s*(?:C|F|Celsius|Fahrenheit)\b|Cel\b)", "vital", "temperature"),
        (r"mm\s*\[?Hg\]?", "vital", "blood_pressure"),
        (r"breaths?\s*(?:per|/)\s*min", "vital", "resp_rate"),
        (r"ms\b", "ecg", "ms"),
        (r"mV\b", "ecg", "mV"),
    ))
# A denominator ("SIRS 2/4", "2 out of 4") after a score.
_DENOMINATOR_BEFORE = re.compile(r"(?:/|\bout of|\bof)\s*$", re.IGNORECASE)

# "Normal" claims. Not a claim: "above the upper limit of normal", "not normal", "the
# normal range is 3.3-5.1" (a reference statement), "高于正常范围", "正常值上限".
_NORMAL = re.compile(r"(?<![\w-])(?:within (?:the )?normal (?:limits|ranges?)|normal|unremarkable)(?![\w-])", re.IGNORECASE)
_NOT_A_NORMAL_CLAIM_BEFORE = re.compile(r"(?:\babove|\bbelow|\bupper|\blower|\boutside|\bexceed\w*|\bbeyond|\bthan|"
                                        r"\bof|\bnot|\bno longer|\bnear|\bborderline|\bto|\bfrom)\s+(?:the\s+)?$", re.IGNORECASE)
_REFERENCE_AFTER = re.compile(r"^\s*(?:range|limits?|values?|ranges)\s*(?:is|are|of|:|=|\(|\d)", re.IGNORECASE)
_NEGATED_ABNORMAL = re.compile(r"(?<![\w-])(?:no|none|nothing|not any|without)(?![\w-])(?P<mid>[^.;,:]{0,40}?)"
                               r"(?<![\w-])abnormal(?:ity|ities)?(?![\w-])", re.IGNORECASE)
_ITEM_GROUPS = {("ecg", "intervals")}
_NORMAL_ZH = re.compile(r"(?<!高于)(?<!低于)(?<!超过)(?<!超出)(?<!偏离)(?<!不)正常(?!值?(?:上限|下限|高限|低限))")
_NEGATED_ABNORMAL_ZH = re.compile(r"(?:没有|无|未见|未发现|均无)(?P<mid>[^，。；,;]{0,15}?)异常")

# Tags whose contents are checked elsewhere (boxes) or are markup, not claims.
_MARKUP = re.compile(r"<\s*ref\s*>.*?<\s*/\s*ref\s*>\s*<\s*box\s*>.*?<\s*/\s*box\s*>|<\s*box\s*>.*?<\s*/\s*box\s*>|"
                     r"<\s*/?\s*(?:think|answer|ref|box)\s*>", re.DOTALL | re.IGNORECASE)
# A tag the generation was cut off in ("...hypertension).</").
_PARTIAL_TAG = re.compile(r"<\s*/?\s*[a-z]*\s*$", re.IGNORECASE)
_OPEN_THINK = re.compile(r"<\s*think\s*>", re.IGNORECASE)
_CLOSE_THINK = re.compile(r"<\s*/\s*think\s*>", re.IGNORECASE)
# A finished sentence ends with closing punctuation (quotes and brackets may follow it).
_FINISHED = re.compile(r"[.!?。！？…][\"'”’)\]）】」]*$")
# Sentence ends: ". " (not the point of a decimal), "!", "?", ";" and their Chinese forms, newlines.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=;)\s*|(?<=[。！？；])|\n+")
TRUNCATED_REASON = "cut off mid-sentence: the reasoning ends before this sentence does"


@dataclass(frozen=True)
class UnsupportedClaim:
    """A sentence removed from the reasoning, and why (the claim the case does not back)."""

    sentence: str
    reason: str


@dataclass
class ReasoningCheck:
    """The reasoning with unsupported sentences removed, plus what was removed and why.

    `n_sentences` counts every sentence, the partial last one of a cut-off reasoning
    included; `truncated` says the reasoning was cut off (that partial sentence is in
    `dropped` with `TRUNCATED_REASON`).
    """

    text: str
    dropped: list[UnsupportedClaim] = field(default_factory=list)
    n_sentences: int = 0
    truncated: bool = False

    @property
    def all_supported(self) -> bool:
        return not self.dropped


# --------------------------------------------------------------------------- the case's facts

@dataclass
class _CaseFacts:
    """The case's values indexed by what they measure, built once per check."""

    values: dict[tuple[str, str], list[float]]  # (kind, key) -> values in every unit the case's data allow
    lab_bounds: dict[str, list[float]]  # catalogue key -> reference bounds
    bounds: list[float]  # reference bounds and thresholds found in the results and evidence
    screen_totals: dict[str, list[float]]  # SIRS / qSOFA -> number of criteria (a score's denominator)
    readings: dict[tuple[str, str], list[bool]]  # (kind, key) -> abnormal flag of each reading
    abnormal: dict[str, list[str]]  # modality -> names of its abnormal evidence items
    image_only: list[str]  # image findings the case reports beyond its cxr evidence (labels, finding head)
    genes: set[str]
    modalities: set[str]
    ecg_leads: set[str]  # upper-case lead names of the recording
    lead_findings: dict[str, set[str]]  # ECG lead finding label -> upper-case leads the reader reports it in
    findings: set[str] | None  # canonical image findings the case reports; None when nothing says which
    note_numbers: set[tuple[float, str]]  # (number, the word after it) as the notes write them

    def of(self, kind: str, key: str) -> list[float]:
        return self.values.get((kind, key), [])


def canonical_finding(label: str) -> str:
    """The `FINDING_TERMS` label a case's finding label names ('Effusion' -> 'pleural effusion')."""
    low = " ".join(label.lower().replace("_", " ").split())
    for canonical, terms in FINDING_TERMS.items():
        if low == canonical or low in (t.lower() for t in terms):
            return canonical
    return low


def _lab_values(r, entry) -> list[float]:
    """A lab result's value as given, as the source gave it, and in every unit its catalogue
    entry knows (a model may write a glucose of 180 mg/dL as 10 mmol/L)."""
    values = [v for v in (r.value, r.source_value) if v is not None]
    if entry is not None and r.value is not None:
        canonical = entry.to_canonical(r.value, r.unit)
        if canonical is not None:
            values.append(canonical)
            values += [(canonical - offset) / factor for factor, offset in entry.units.values() if factor]
    return values


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


def _next_word(text: str) -> str:
    m = re.match(r"\s*-?\s*([^\W\d_]+)", text)
    return m.group(1).lower().rstrip("s") if m else ""


def _case_facts(case: PatientCase, evidence: list[Evidence], head_findings: Iterable[str] | None) -> _CaseFacts:
    values: dict[tuple[str, str], list[float]] = {}
    readings: dict[tuple[str, str], list[bool]] = {}
    abnormal: dict[str, list[str]] = {}
    lab_bounds: dict[str, list[float]] = {}
    bounds: list[float] = []

    def add(kind: str, key: str, nums: Iterable[float]) -> None:
        values.setdefault((kind, key), []).extend(nums)

    for r, entry in zip(case.labs, lab_entries(case), strict=True):
        key = entry.key if entry is not None else r.name.lower()
        nums = _lab_values(r, entry)
        add("lab", key, nums)
        if key.startswith("troponin"):
            add("lab", "troponin", nums)
        item_bounds = [b for b in (r.ref_low, r.ref_high) if b is not None]
        if entry is not None:
            item_bounds += [b for b in (*entry.ref, *entry.critical) if b is not None]
        lab_bounds.setdefault(key, []).extend(item_bounds)
        bounds.extend(item_bounds)
    for v in case.vitals:
        for key, fields in _VITAL_FIELDS_OF.items():
            add("vital", key, (float(getattr(v, f)) for f in fields if getattr(v, f) is not None))
        if v.temperature is not None:
            add("vital", "temperature", [v.temperature * 9 / 5 + 32])  # the same reading in °F
    screen_totals: dict[str, list[float]] = {}
    lead_findings: dict[str, set[str]] = {label: set() for label in ECG_LEAD_FINDING_TERMS}
    for ev in evidence:
        nums = _numbers_in(ev.value)
        for k, val in ev.detail.items():
            if any(s in k for s in ("ref", "threshold", "critical", "limit")):
                bounds.extend(_numbers_in(val))  # reference ranges and thresholds are criteria
        keys: list[tuple[str, str]] = []
        if ev.modality == "labs":
            keys = [("lab", ev.item)] + ([("lab", "troponin")] if ev.item.startswith("troponin") else [])
        elif ev.modality == "vitals":
            keys = [("vital", ev.item)]
            if ev.item in ("SIRS", "qSOFA"):
                add("vital", ev.item, nums)
                total = sum(len(ev.detail.get(k) or ()) for k in ("met", "not_met", "missing"))
                screen_totals.setdefault(ev.item, []).append(float(total))
        elif ev.modality == "ecg":
            item = ev.item.lower()
            if ev.item == "heart_rate":
                add("vital", "heart_rate", nums)  # "heart rate 110" may cite the ECG rate
                keys.append(("vital", "heart_rate"))
            for key, substrings in ECG_TERMS.items():
                if any(s.lower() in item for s in substrings) or (key == "QTc" and "qt" in item):
                    add("ecg", key, nums)
                    keys.append(("ecg", key))
            if ev.unit in ("ms", "mV"):
                add("ecg", ev.unit, nums)
            if ev.unit == "ms":
                keys.append(("ecg", "intervals"))
            if ev.item == "rhythm":
                keys.append(("ecg", "rhythm"))
            for label in ECG_LEAD_FINDING_TERMS:
                if ev.item.startswith(label + " "):
                    lead_findings[label].add(ev.item[len(label) + 1:].strip().upper())
        elif ev.modality == "genomics" and ev.detail.get("vaf") is not None:
            add("vaf", "vaf", [ev.detail["vaf"], ev.detail["vaf"] * 100])
        for key in keys:
            readings.setdefault(key, []).append(ev.abnormal)
        if ev.abnormal and ev.modality != "demographics":
            abnormal.setdefault(ev.modality, []).append(ev.item.replace("_", " "))
    if case.demographics.age is not None:
        add("age", "age", [float(case.demographics.age)])
    findings = _known_findings(case, head_findings)
    # Labelled or located findings that are not evidence: they make the image abnormal,
    # but they are not "measured items" (the diagnosis targets' "no measured item is
    # abnormal" beside "Chest X-ray: nodule" is faithful).
    image_only = sorted((findings or set()) - {canonical_finding(x) for x in abnormal.get("cxr", [])})
    note_numbers = {(float(m.group(0).replace(",", "")), _next_word(note.text[m.end():]))
                    for note in case.notes for m in _NUMBER.finditer(note.text)}
    return _CaseFacts(values=values, lab_bounds=lab_bounds, bounds=bounds, screen_totals=screen_totals,
                      readings=readings, abnormal=abnormal, image_only=image_only, genes={g.gene.upper() for g in case.genomics},
                      modalities=set(case.modalities()),
                      ecg_leads={n.upper() for n in case.ecg.leads} if case.ecg is not None else set(),
                      lead_findings=lead_findings, findings=findings, note_numbers=note_numbers)


def _known_findings(case: PatientCase, head_findings: Iterable[str] | None) -> set[str] | None:
    """The image findings the case reports: supplied with the images, labelled, or located
    by the finding head. None when nothing says which findings the image has (an
    unlabelled image, no head run), so only the image's presence can be checked."""
    if not case.cxr:
        return None
    sources = [f.label for image in case.cxr for f in image.findings]
    said = bool(sources)
    if case.labels is not None:
        sources += [f.label for f in case.labels.findings]
        said = True
    if head_findings is not None:
        sources += list(head_findings)
        said = True
    return {canonical_finding(s) for s in sources} if said else None


# --------------------------------------------------------------------------- helpers

def _negated(sentence: str, start: int, end: int) -> bool:
    return bool(_ABSENCE_BEFORE.search(sentence[:start]) or _ABSENCE_AFTER.search(sentence[end:]))


def _matches(written: str, value: float) -> bool:
    """True when the number as written equals `value` at the written precision (a model
    that writes 2.1 for 2.13 is rounding, not inventing), or within 1 %."""
    x = float(written)
    decimals = len(written.split(".", 1)[1]) if "." in written else 0
    tolerance = 0.5 * 10 ** (-decimals) + 1e-9
    return abs(x - value) <= tolerance or (value != 0 and abs(x - value) <= 0.01 * abs(value))


@dataclass(frozen=True)
class _Clauses:
    """Clause boundaries of one sentence: which mentions share a number's clause."""

    starts: list[int]

    def of(self, pos: int) -> int:
        return bisect_right(self.starts, pos) - 1

    def nearest(self, pos: int, found: list[tuple[int, int, str, str]], before: bool) -> tuple[str, str] | None:
        """(kind, key) of the mention nearest `pos` in its clause, before or after it."""
        clause = self.of(pos)
        if before:
            hits = [m for m in found if m[1] <= pos and self.of(m[0]) == clause]
            return hits[-1][2:] if hits else None
        hits = [m for m in found if m[0] >= pos and self.of(m[0]) == clause]
        return hits[0][2:] if hits else None


# A source citation as `Evidence.cite()` writes it: "[labs[3]]", "[vitals[0], vitals[2]]",
# "[ecg:lead V2]", "[cxr[0]:finding 1]". It points into the case; its numbers are indices.
_CITATION = re.compile(r"\[((?:labs|vitals|cxr|genomics)\[\d+\][^\[\]]*(?:\[\d+\][^\[\]]*)*|ecg(?::[^\[\]]*)?)\]")
_CITED_INDEX = re.compile(r"(labs|vitals|cxr|genomics)\[(\d+)\]")
# Evidence numbering in a reasoning ("[E3]", "[E1, E4]"): a pointer, not a value.
_EVIDENCE_NUMBER = re.compile(r"\[E\d+(?:\s*,\s*E\d+)*\]", re.IGNORECASE)


def _citation_problem(sentence: str, case: PatientCase) -> tuple[str, str | None]:
    """The sentence with its source citations blanked out, and a reason if one points nowhere."""
    problem = None
    for m in _CITATION.finditer(sentence):
        for kind, index in _CITED_INDEX.findall(m.group(1)):
            if int(index) >= len(getattr(case, kind)):
                problem = problem or f"cites {kind}[{index}], which the case does not have"
        if m.group(1).startswith("ecg") and case.ecg is None:
            problem = problem or "cites the ECG but the case has no ECG"
    blank = _CITATION.sub(lambda m: " " * len(m.group(0)), sentence)
    return _EVIDENCE_NUMBER.sub(lambda m: " " * len(m.group(0)), blank), problem


# --------------------------------------------------------------------------- per-claim checks

def _modality_problem(sentence: str, facts: _CaseFacts) -> str | None:
    for modality, pat in modality_terms():
        for m in pat.finditer(sentence):
            if modality not in facts.modalities and not _negated(sentence, m.start(), m.end()):
                return f"mentions {modality} findings but the case has no {modality}"
    return None


def _gene_problem(sentence: str, facts: _CaseFacts) -> str | None:
    genes = set(KNOWN_GENES) | facts.genes
    for m in re.finditer(r"(?<![\w-])([A-Z][A-Z0-9]{1,6})(?![\w])", sentence):
        gene = m.group(1)
        if gene in genes and gene not in facts.genes and not _negated(sentence, m.start(), m.end()):
            return f"mentions a {gene} variant the case does not list"
    return None


def _lab_problem(sentence: str, facts: _CaseFacts, lab_mentions: list[Mention]) -> str | None:
    for start, end, key in lab_mentions:
        if ("lab", key) not in facts.values and not _negated(sentence, start, end):
            return f"mentions {key.replace('_', ' ')} but the case has no such result"
    return None


def _finding_problem(sentence: str, facts: _CaseFacts) -> str | None:
    """Image findings need an image, and (where the case says which) must be among its findings."""
    for start, end, label in finding_mentions(sentence):
        negated = _negated(sentence, start, end)
        if "cxr" not in facts.modalities:
            if not negated:
                return f"mentions {label} but the case has no chest X-ray"
            continue
        if facts.findings is None:
            continue
        if negated and label in facts.findings:
            return f"denies {label}, which the case's image findings include"
        if not negated and label not in facts.findings:
            return f"mentions {label}, which the case's image findings do not include"
    return None


def _ecg_lead_problem(sentence: str, facts: _CaseFacts, clauses: _Clauses) -> str | None:
    """ECG lead findings must be what the reader reported, in the leads named; a lead named
    on its own must be one the recording has."""
    finds = mentions(sentence, ecg_lead_finding_terms())
    leads = lead_mentions(sentence, ecg_context=bool(finds))
    if not finds and not leads:
        return None
    if "ecg" not in facts.modalities:
        for start, end, label in finds:
            if not _negated(sentence, start, end):
                return f"mentions {label} but the case has no ECG"
        if leads and not _negated(sentence, leads[0][0], leads[0][1]):
            return f"names lead {leads[0][2][0]} but the case has no ECG"
        return None
    bound: dict[int, list[str]] = {}  # index into finds -> leads named for it
    found = [(s, e, "lead_finding", str(i)) for i, (s, e, _) in enumerate(finds)]
    for start, _, names in leads:
        tie = clauses.nearest(start, found, before=True) or clauses.nearest(start, found, before=False)
        if tie is None:
            absent = [n for n in names if n.upper() not in facts.ecg_leads]
            if absent:
                return f"names lead {absent[0]}, which the ECG does not have"
            continue
        bound.setdefault(int(tie[1]), []).extend(names)
    for i, (start, end, label) in enumerate(finds):
        reported = facts.lead_findings.get(label, set())
        named = bound.get(i, [])
        if _negated(sentence, start, end):
            contradicted = [n for n in named if n.upper() in reported] if named else sorted(reported)
            if contradicted:
                return f"denies {label} in {', '.join(contradicted)}, which the ECG reading reports there"
            continue
        if not named and not reported:
            return f"states {label}, which the ECG reading does not report"
        missing = [n for n in named if n.upper() not in reported]
        if missing:
            return f"states {label} in {', '.join(missing)}, which the ECG reading does not report there"
    return None


def _normal_claims(sentence: str) -> list[tuple[int, int, int, int]]:
    """(claim start, claim end, inner start, inner end) of each "normal" claim; the inner
    span of "no <...> abnormal" holds what it is about."""
    claims = []
    for m in _NORMAL.finditer(sentence):
        if _NOT_A_NORMAL_CLAIM_BEFORE.search(sentence[:m.start()]) or _REFERENCE_AFTER.match(sentence[m.end():]):
            continue
        claims.append((m.start(), m.end(), m.end(), m.end()))
    for m in _NORMAL_ZH.finditer(sentence):
        claims.append((m.start(), m.end(), m.end(), m.end()))
    for pat in (_NEGATED_ABNORMAL, _NEGATED_ABNORMAL_ZH):
        for m in pat.finditer(sentence):
            claims.append((m.start(), m.end(), m.start("mid"), m.end("mid")))
    return sorted(claims)


def _normality_problem(sentence: str, facts: _CaseFacts, clauses: _Clauses,
                       items: list[tuple[int, int, str, str]]) -> str | None:
    """A claim that a test, a modality or everything is normal, against the abnormal items."""
    claims = _normal_claims(sentence)
    if not claims:
        return None
    words = [(s, e, *k.split(":", 1)) if ":" in k else (s, e, k, k) for s, e, k in mentions(sentence, scope_terms())]
    # A scope word inside a test's name ("间期" in "PR间期") is that test, not a scope of its own.
    scopes = sorted(items + [w for w in words if not any(s <= w[0] and w[1] <= e and (s, e) != w[:2]
                                                         for s, e, *_ in items)])
    for start, end, inner_start, inner_end in claims:
        clause = clauses.of(start)
        same = [m for m in scopes if clauses.of(m[0]) == clause]
        inside = [m for m in same if inner_start <= m[0] and m[1] <= inner_end]
        before = [m for m in same if m[1] <= start]
        after = [m for m in same if m[0] >= end and m[0] - end <= 30]
        chosen = inside[-1] if inside else after[0] if after and not before else before[-1] if before else None
        if chosen is None:
            continue
        kind, key = chosen[2], chosen[3]
        if kind == "all":
            modal = [m for m in same if m[2] == "modality"]
            kind, key = ("modality", modal[0][3]) if modal else ("all", "all")
        if kind == "all":
            bad = list(dict.fromkeys(item for items_ in facts.abnormal.values() for item in items_))
            if bad:
                return f"says no item is abnormal, but the case has abnormal items ({', '.join(bad[:4])})"
        elif kind == "modality":
            bad = list(dict.fromkeys(facts.abnormal.get(key, []) + (facts.image_only if key == "cxr" else [])))
            if bad:
                return f"calls {key} normal, but the case has abnormal {key} items ({', '.join(bad[:4])})"
        elif kind in ("lab", "vital", "ecg"):
            flags = facts.readings.get((kind, key), [])
            # One test read several times is "normal" if some reading is; a group of items
            # ("the intervals") is not if any of them is abnormal.
            if flags and (any(flags) if (kind, key) in _ITEM_GROUPS else all(flags)):
                return f"calls {key.replace('_', ' ')} normal, but the case reads it as abnormal"
    return None


def _number_problem(sentence: str, facts: _CaseFacts, thresholds: frozenset[float], clauses: _Clauses,
                    anchors: list[tuple[int, int, str, str]]) -> str | None:
    """Every number must be the value of the test it is tied to (see the module docstring)."""
    lead_spans = [(s, e) for s, e, _ in lead_mentions(sentence)]
    criterion = False
    previous: tuple[str, str] | None = None
    for m in _NUMBER.finditer(sentence):
        written = m.group(0).lstrip("+").replace(",", "")
        before, after = sentence[:m.start()], sentence[m.end():]
        if any(s <= m.start() < e for s, e in lead_spans):
            continue  # "V4-6"
        if _NOT_A_MEASUREMENT_AFTER.match(after) or _NOT_A_MEASUREMENT_BEFORE.search(before):
            continue
        if not before.strip() and after[:1] in (".", ")", "、"):
            continue  # list numbering: "2. Creatinine ...", "3) ..."
        value = float(written)
        # The second number of a pair ("140/90") or a range ("0.5-1.2") is whatever the first was.
        paired = bool(re.search(r"\d\s*[/\-–]\s*$", before))
        criterion = criterion if paired else bool(_COMPARISON.search(before))
        tie = _tie(m.start(), before, after, clauses, anchors)
        if tie is None and paired and previous is not None:
            tie = previous
        previous = tie
        if tie is None:
            if _COUNT_AFTER.match(after) or (_YEAR.match(written) and "." not in written):
                continue
            if (value, _next_word(after)) in facts.note_numbers and _next_word(after):
                continue  # the notes say it the same way ("15 pack-years")
            if criterion and (value in thresholds or any(_matches(written, b) for b in facts.bounds)):
                continue
            return f"states the number {written} without naming the test it belongs to"
        kind, key = tie
        values = facts.of(kind, key)
        if any(_matches(written, v) for v in values):
            continue
        if kind == "vital" and key in facts.screen_totals and _DENOMINATOR_BEFORE.search(before) and \
                any(_matches(written, v) for v in facts.screen_totals[key]):
            continue
        if criterion and (any(_matches(written, b) for b in facts.lab_bounds.get(key, []) + facts.bounds)
                          or value in thresholds):
            continue
        name = "age" if kind == "age" else key.replace("_", " ")
        if not values:
            return f"states {written} for {name}, which the case does not report"
        return f"states {written} for {name}, which does not match the case"
    return None


def _tie(pos: int, before: str, after: str, clauses: _Clauses,
         anchors: list[tuple[int, int, str, str]]) -> tuple[str, str] | None:
    """What a number at `pos` measures: the age, the measurement its unit names, the test
    named before it in its clause, or the test named after it there; None if nothing."""
    if _AGE_AFTER.match(after) or _AGE_BEFORE.search(before):
        return ("age", "age")
    unit = next(((kind, key) for pat, kind, key in _UNIT_TIES if pat.match(after)), None)
    named = clauses.nearest(pos, anchors, before=True)
    if named is not None and (unit is None or named[0] == unit[0] == "ecg" or named == unit):
        return named
    return unit or clauses.nearest(pos, anchors, before=False)


def _sentence_problem(sentence: str, facts: _CaseFacts, thresholds: frozenset[float]) -> str | None:
    """The first unsupported claim in one sentence, as a short reason; None when all is backed."""
    lab_mentions = mentions(sentence, lab_terms())
    anchors = sorted([(s, e, "lab", k) for s, e, k in lab_mentions]
                     + [(s, e, "vital", k) for s, e, k in mentions(sentence, vital_terms())]
                     + [(s, e, "ecg", k) for s, e, k in mentions(sentence, ecg_terms())]
                     + [(m.start(), m.end(), "vaf", "vaf") for p in _VAF_TERMS for m in p.finditer(sentence)])
    clauses = _Clauses(clause_index(sentence))
    return (_modality_problem(sentence, facts) or _gene_problem(sentence, facts)
            or _lab_problem(sentence, facts, lab_mentions) or _finding_problem(sentence, facts)
            or _ecg_lead_problem(sentence, facts, clauses)
            or _normality_problem(sentence, facts, clauses, anchors)
            or _number_problem(sentence, facts, thresholds, clauses, anchors))


# --------------------------------------------------------------------------- the check

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


@lru_cache(maxsize=8)
def _panel_thresholds(panel: Panel) -> frozenset[float]:
    """Numbers in the panel's evidence descriptions ("BP >= 140/90", "HbA1c >= 6.5 %")."""
    nums: set[float] = set()
    for d in panel:
        for text in d.evidence.values():
            nums.update(float(x) for x in re.findall(r"\d+(?:\.\d+)?", str(text)))
    return frozenset(nums)


def check_reasoning(text: str, case: PatientCase, evidence: list[Evidence], panel: Panel | None = None,
                    findings: Iterable[str] | None = None, cited: Sequence[Evidence] | None = None) -> ReasoningCheck:
    """Remove the sentences of `text` whose claims the case does not back (see module doc).

    `evidence` is `interpret_case(case)` (already computed by the caller); `panel`
    supplies the criteria thresholds a sentence may quote ("BP >= 140/90"); `findings`
    are the image finding labels the finding head located (None: it did not run), which
    a sentence may name besides the case's own findings. `text` may be the raw
    generation: an opening `<think>` without its closing tag marks it as cut off.
    `cited` is the numbered evidence list of the prompt (`[E1]` is `cited[0]`); without
    it, `[Ek]` citations are not checked.
    """
    panel = panel or load_panel()
    facts = _case_facts(case, evidence, findings)
    thresholds = _panel_thresholds(panel)
    kept: list[str] = []
    dropped: list[UnsupportedClaim] = []
    think = parse_think(text)  # a whole generation: its reasoning is the <think> block
    sentences = split_sentences(_PARTIAL_TAG.sub("", _MARKUP.sub(" ", text if think is None else think)))
    unfinished = bool(sentences) and not _FINISHED.search(sentences[-1])
    truncated = unfinished or bool(_OPEN_THINK.search(text) and not _CLOSE_THINK.search(text))
    about: str | None = None  # the disease the current rationale line is about
    for i, sentence in enumerate(sentences):
        about = _sentence_disease(sentence, panel, about)
        if unfinished and i == len(sentences) - 1:
            # A partial claim is not shown as fact, whatever it says; it is counted, not lost.
            dropped.append(UnsupportedClaim(sentence=sentence, reason=TRUNCATED_REASON))
            continue
        masked, problem = _citation_problem(sentence, case)
        if cited is not None:
            problem = problem or _evidence_id_problem(sentence, cited, about, panel)
            if about is not None and _opens_rationale(sentence, panel):
                problem = problem or _rationale_item_problem(masked, cited, about, panel)
        problem = problem or _sentence_problem(masked, facts, thresholds)
        if problem is None:
            kept.append(sentence)
        else:
            dropped.append(UnsupportedClaim(sentence=sentence, reason=problem))
    joiner = "" if any(re.search(r"[\u4e00-\u9fff]", s) for s in kept) else " "
    return ReasoningCheck(text=joiner.join(kept), dropped=dropped, n_sentences=len(sentences), truncated=truncated)


# --------------------------------------------------------------------------- evidence ids and consistency

_EVIDENCE_ID = re.compile(r"\bE(\d+)\b")
_HEADER = re.compile(r"^\s*([^:：.;。；\[\]]{2,60})[:：]")
_CONSIDERED_LINE = re.compile(r"^\s*(?:Considered, not reported|No candidate disease|考虑但未报告|没有候选疾病)")


def evidence_supports(ev: Evidence) -> set[str]:
    """Panel keys the panel's evidence rules tie to an evidence item (image findings by label too)."""
    keys = supported_diseases(ev)
    if ev.modality == "cxr" and ev.abnormal:
        keys = keys | finding_supports(str(ev.item))
    return keys


def _sentence_disease(sentence: str, panel: Panel, current: str | None) -> str | None:
    """The disease a sentence is about: its 'Disease:' header, else the rationale line it continues."""
    if _CONSIDERED_LINE.search(sentence):
        return None
    m = _HEADER.match(sentence)
    d = panel.lookup(m.group(1)) if m is not None else None
    # "Evidence: [E3]." continues the line of the disease before it.
    return d.key if d is not None else current


def _evidence_id_problem(sentence: str, cited: Sequence[Evidence], about: str | None, panel: Panel) -> str | None:
    for m in _EVIDENCE_NUMBER.finditer(sentence):
        for k in (int(x) for x in _EVIDENCE_ID.findall(m.group(0).upper())):
            if not 1 <= k <= len(cited):
                return f"cites [E{k}], which is not in the evidence list"
            if about is not None and about not in evidence_supports(cited[k - 1]):
                return (f"cites [E{k}] ({cited[k - 1].item}) for {panel.by_key(about).name}, which the panel "
                        "does not tie to it")
    return None


def _opens_rationale(sentence: str, panel: Panel) -> bool:
    """The sentence is a rationale line's first sentence: 'Heart failure: ...'."""
    m = _HEADER.match(sentence)
    return m is not None and panel.lookup(m.group(1)) is not None


def _evidence_things(ev: Evidence) -> set[tuple[str, str]]:
    """What a sentence may call an evidence item by: (kind, key) as the mention finders key it."""
    item = ev.item.lower()
    if ev.modality == "labs":
        return {("lab", ev.item)} | ({("lab", "troponin")} if item.startswith("troponin") else set())
    if ev.modality == "vitals":
        return {("vital", ev.item)}
    if ev.modality == "cxr":
        return {("finding", canonical_finding(str(ev.item)))}
    if ev.modality != "ecg":
        return set()
    out = {("vital", "heart_rate")} if ev.item == "heart_rate" else set()
    out |= {("ecg", key) for key, subs in ECG_TERMS.items()
            if any(x.lower() in item for x in subs) or (key == "QTc" and "qt" in item)}
    out |= {("lead_finding", label) for label in ECG_LEAD_FINDING_TERMS if ev.item.startswith(label + " ")}
    return out


@lru_cache(maxsize=1)
def _test_names() -> tuple[frozenset[str], frozenset[str]]:
    """(every lower-case word of the test, vital-sign, ECG and image-finding names the
    checker knows; the one-word names of 5+ letters among them, the stems a garbled name
    such as 'Sokolowljen' grows from)."""
    names = [t for table in (LAY_LAB_TERMS, VITAL_TERMS, ECG_TERMS, ECG_LEAD_FINDING_TERMS, FINDING_TERMS)
             for ts in table.values() for t in ts]
    for entry in load_lab_catalogue():
        names += [entry.name, *entry.synonyms, entry.key.replace("_", " ")]
    words = {w.lower() for t in names for w in re.findall(r"[A-Za-z]+", t)}
    stems = {t.lower() for t in names if re.fullmatch(r"[A-Za-z]{5,}", t)}
    return frozenset(words), frozenset(stems)


def _rationale_item_problem(sentence: str, cited: Sequence[Evidence], about: str, panel: Panel) -> str | None:
    """A rationale for a disease names only items the panel's evidence rules tie to it
    (the rule `supporting_ids` applies), and names them whole: a word grown out of a test's
    name ('Sokolowljen', 'creatininemi') is not a name of anything in the case."""
    disease = panel.by_key(about).name
    found = ([(s, e, ("lab", k)) for s, e, k in mentions(sentence, lab_terms())]
             + [(s, e, ("vital", k)) for s, e, k in mentions(sentence, vital_terms())]
             + [(s, e, ("ecg", k)) for s, e, k in mentions(sentence, ecg_terms())]
             + [(s, e, ("lead_finding", k)) for s, e, k in mentions(sentence, ecg_lead_finding_terms())]
             + [(s, e, ("finding", k)) for s, e, k in finding_mentions(sentence)])
    for start, end, thing in sorted(found):
        if _negated(sentence, start, end):
            continue
        items = [ev for ev in cited if thing in _evidence_things(ev)]
        if not any(about in evidence_supports(ev) for ev in items):
            return (f"names {sentence[start:end]} for {disease}, which the evidence list does not tie to it "
                    "by the panel's evidence rules")
    words, stems = _test_names()
    known = words | {w.lower() for ev in cited for w in re.findall(r"[A-Za-z]+", f"{ev.item} {ev.value}")}
    for m in re.finditer(r"[A-Za-z]{6,}", sentence):
        word = m.group(0).lower()
        if word in known or word.removesuffix("s") in known or word.removesuffix("es") in known:
            continue
        stem = next((w for w in stems if word.startswith(w)), None)
        if stem is not None:
            return f"names {m.group(0)!r}, which is not an evidence item or test (a garbled {stem!r}?)"
    return None


@dataclass
class ConsistencyCheck:
    """The reasoning against the head's decision: reported diseases without a rationale,
    unreported diseases a sentence argues for."""

    missing: list[str] = field(default_factory=list)  # reported keys without a surviving rationale line
    argued_unreported: list[str] = field(default_factory=list)  # unreported keys argued for

    @property
    def consistent(self) -> bool:
        return not self.missing and not self.argued_unreported

    @property
    def problems(self) -> list[str]:
        return ([f"no rationale for reported {k.replace('_', ' ')}" for k in self.missing]
                + [f"argues for unreported {k.replace('_', ' ')}" for k in self.argued_unreported])


@lru_cache(maxsize=8)
def _disease_patterns(panel: Panel) -> tuple[tuple[str, re.Pattern], ...]:
    out = []
    for d in panel:
        for t in {d.key.replace("_", " "), d.name, *d.synonyms, *(x for x in (d.zh,) if x), *d.zh_synonyms}:
            out.append((d.key, term_pattern(t, any_case=len(t) > 4)))
    return tuple(out)


def check_consistency(text: str, reported: Iterable[str], panel: Panel | None = None) -> ConsistencyCheck:
    """Check a (checked) reasoning against the head's reported disease keys.

    A reported disease needs a sentence starting with its name and a colon followed by a
    rationale; a sentence naming an unreported disease (not negated, and not in the
    considered-but-absent line) argues for it.
    """
    panel = panel or load_panel()
    reported = set(reported)
    think = parse_think(text)
    sentences = split_sentences(_PARTIAL_TAG.sub("", _MARKUP.sub(" ", text if think is None else think)))
    explained: set[str] = set()
    argued: list[str] = []
    in_considered = False
    for sentence in sentences:
        m = _HEADER.match(sentence)
        if _CONSIDERED_LINE.search(sentence):
            in_considered = True
            continue
        if m is not None:
            in_considered = False
            d = panel.lookup(m.group(1))
            if d is not None and sentence[m.end():].strip(" .。"):
                explained.add(d.key)
        if in_considered:
            continue
        for key, pat in _disease_patterns(panel):
            if key in reported or key in argued:
                continue
            for hit in pat.finditer(sentence):
                if not _negated(sentence, hit.start(), hit.end()):
                    argued.append(key)
                    break
    return ConsistencyCheck(missing=[k for k in panel.keys if k in reported and k not in explained],
                            argued_unreported=argued)


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
