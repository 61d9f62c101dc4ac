"""The words a reasoning sentence uses to name what it claims, for the faithfulness check.

`medfuse.model.faithfulness` reads a generated reasoning sentence by sentence; this module
holds what it reads with: the vocabularies (modalities, lab tests beyond the catalogue's
names, vital signs, ECG measurements and per-lead findings, image findings, what a
"normal" claim is about), the ECG lead parser (`V4-V6` -> V4, V5, V6) and the clause
splitter that scopes a number or a lead list to the test named beside it.

Everything here is lexical and knows nothing of a case; English and Chinese forms sit
side by side.
"""

from __future__ import annotations

import re
from functools import lru_cache

from medfuse.knowledge.labs import load_lab_catalogue

__all__ = [
    "ECG_LEAD_FINDING_TERMS",
    "FINDING_TERMS",
    "KNOWN_GENES",
    "LAY_LAB_TERMS",
    "MODALITY_TERMS",
    "VITAL_TERMS",
    "Mention",
    "clause_index",
    "ecg_lead_finding_terms",
    "ecg_terms",
    "finding_mentions",
    "finding_terms",
    "lab_terms",
    "lead_mentions",
    "mentions",
    "modality_terms",
    "scope_terms",
    "term_pattern",
    "vital_terms",
]

Mention = tuple[int, int, str]  # (start, end, key) of a term in a sentence

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

# Everyday names of catalogue tests that the catalogue's synonyms (names seen in lab
# systems) do not carry: a model writes "blood sugar of 263" as a person would.
LAY_LAB_TERMS: dict[str, tuple[str, ...]] = {
    "glucose": ("blood sugar", "sugar level", "blood sugars", "sugar"),
    "wbc": ("white count", "white cell count", "white cells", "white blood cell", "leukocyte count", "leucocytes",
            "leucocyte count", "白细胞计数"),
    "platelets": ("platelet", "platelet level", "血小板计数"),
    "hemoglobin": ("haemoglobin level", "hemoglobin level"),
    "hba1c": ("haemoglobin A1c", "glycated haemoglobin", "A1C"),
    "crp": ("C reactive protein",),
    "bun": ("blood urea",),
    "potassium": ("blood potassium", "血钾"),
    "sodium": ("blood sodium", "血钠"),
}

# Terms that bind a following number to a vital sign (keys: the vitals evidence items).
VITAL_TERMS: dict[str, tuple[str, ...]] = {
    "heart_rate": ("heart rate", "heart_rate", "pulse", "pulse rate", "HR", "心率", "脉搏"),
    "blood_pressure": ("blood pressure", "blood_pressure", "BP", "systolic", "diastolic", "血压"),
    "temperature": ("temperature", "temp", "fever", "febrile", "pyrexia", "体温", "发热"),
    "spo2": ("SpO2", "spo2", "oxygen saturation", "saturation", "血氧"),
    "resp_rate": ("respiratory rate", "resp_rate", "respiration rate", "breathing rate", "呼吸频率", "呼吸"),
    # Screening scores (SIRS, qSOFA) are vitals evidence whose value is the criteria met.
    "SIRS": ("SIRS",),
    "qSOFA": ("qSOFA",),
}

# ECG measurement words -> substrings of the ECG evidence items they refer to.
ECG_TERMS: dict[str, tuple[str, ...]] = {
    "PR interval": ("PR interval", "PR", "PR间期"),
    "QRS duration": ("QRS duration", "QRS", "QRS时限"),
    "QTc": ("QTc",),
    "QT": ("QT interval", "QT", "QT间期"),
    "ST": ("ST elevation", "ST depression", "ST deviation", "ST segment"),
    "Sokolow": ("Sokolow",),
    "Cornell": ("Cornell",),
    "P waves": ("P waves", "P wave", "P波"),
}

# Per-lead ECG findings: the label of the reader's evidence items ('T inversion V5') ->
# the ways a sentence names it.
ECG_LEAD_FINDING_TERMS: dict[str, tuple[str, ...]] = {
    "ST elevation": ("ST elevation", "ST elevations", "ST-elevation", "ST segment elevation", "ST-segment elevation",
                     "elevated ST", "STE", "ST段抬高", "ST抬高"),
    "ST depression": ("ST depression", "ST depressions", "ST-depression", "ST segment depression",
                      "ST-segment depression", "depressed ST", "ST段压低", "ST压低"),
    "T inversion": ("T inversion", "T inversions", "T-wave inversion", "T-wave inversions", "T wave inversion",
                    "T wave inversions", "inverted T", "inverted T waves", "inverted T-waves", "TWI", "T波倒置"),
    "tall T wave": ("tall T", "tall T wave", "tall T waves", "tall T-waves", "peaked T", "peaked T waves",
                    "peaked T-waves", "hyperacute T", "hyperacute T waves", "T波高尖"),
    "pathological Q wave": ("Q wave", "Q waves", "Q-wave", "Q-waves", "pathological Q", "pathological Q waves",
                            "pathologic Q waves", "病理性Q波", "Q波"),
}

# Chest image findings: canonical label -> the ways a sentence names it. A case's own
# labels ('Effusion', 'Edema' in public datasets) are matched to these by any of the names.
FINDING_TERMS: dict[str, tuple[str, ...]] = {
    "consolidation": ("consolidation", "consolidations", "airspace opacity", "airspace opacities",
                      "air-space opacity", "实变影", "实变"),
    "pleural effusion": ("pleural effusion", "pleural effusions", "effusion", "effusions", "胸腔积液", "积液"),
    "cardiomegaly": ("cardiomegaly", "enlarged heart", "enlarged cardiac silhouette", "heart is enlarged",
                     "心脏增大", "心影增大"),
    "pulmonary edema": ("pulmonary edema", "pulmonary oedema", "interstitial edema", "interstitial oedema",
                        "edema", "oedema", "Kerley B lines", "肺水肿"),
    "nodule": ("nodule", "nodules", "pulmonary nodule", "lung nodule", "结节影", "结节"),
    "mass": ("mass", "masses", "lung mass", "pulmonary mass", "肿块影", "肿块"),
    "atelectasis": ("atelectasis", "肺不张"),
    "pneumothorax": ("pneumothorax", "气胸"),
    "infiltration": ("infiltrate", "infiltrates", "infiltration", "浸润"),
}
# Words before a finding word that make it a bedside or body finding, not an image one
# ("ankle edema", "body mass index", "left ventricular mass").
_NOT_AN_IMAGE_FINDING = re.compile(r"(?:peripheral|leg|legs|ankle|pedal|pitting|extremity|limb|facial|body|muscle|"
                                   r"ventricular|LV|bone|fat|lean)[\s-]*$", re.IGNORECASE)

# What a "normal" / "no abnormality" claim is about, besides named tests: a modality
# ("labs are normal"), or everything ("no measured item is abnormal").
MODALITY_SCOPE_TERMS: dict[str, tuple[str, ...]] = {
    "labs": ("labs", "lab results", "lab values", "lab tests", "laboratory", "laboratory results", "laboratory tests",
             "blood tests", "bloods", "blood work", "bloodwork", "化验", "化验结果", "检验", "检验结果", "实验室检查"),
    "vitals": ("vital signs", "vitals", "observations", "生命体征"),
    "ecg": (*MODALITY_TERMS["ecg"], "tracing"),
    "cxr": (*MODALITY_TERMS["cxr"], "lungs", "lung fields", "imaging", "影像"),
    "genomics": MODALITY_TERMS["genomics"],
}
GENERIC_SCOPE_TERMS: tuple[str, ...] = (
    "measured item", "measured items", "item", "items", "result", "results", "reading", "readings", "value", "values",
    "measurement", "measurements", "parameter", "parameters", "finding", "findings", "test", "tests", "everything",
    "data", "测量项目", "读数", "结果", "项目", "各项", "指标",
)
# ECG items that a normal claim may name: the rhythm ("normal sinus rhythm"), the
# intervals together ("ECG intervals are normal").
ECG_SCOPE_TERMS: dict[str, tuple[str, ...]] = {"rhythm": ("rhythm", "sinus rhythm", "节律", "窦性心律"),
                                               "intervals": ("intervals", "ECG intervals", "各间期")}

# --------------------------------------------------------------------------- patterns


def term_pattern(term: str, any_case: bool = False) -> re.Pattern:
    """A regex for one term: word-bounded for Latin text, case-sensitive for short
    abbreviations ("HR", "BP", "Na") so that ordinary words do not match them."""
    escaped = re.escape(term)
    if re.search(r"[\u4e00-\u9fff]", term):  # Chinese: no word boundaries
        return re.compile(escaped)
    flags = re.IGNORECASE if any_case or not (len(term) <= 3 or term.isupper()) else 0
    return re.compile(rf"(?<![\w-]){escaped}(?![\w])", flags)


def _keyed(table: dict[str, tuple[str, ...]], any_case: bool = False) -> tuple[tuple[str, re.Pattern], ...]:
    return tuple((key, term_pattern(t, any_case)) for key, terms in table.items() for t in terms)


@lru_cache(maxsize=1)
def lab_terms() -> tuple[tuple[str, re.Pattern], ...]:
    """(catalogue key, pattern) for every name, synonym, key and Chinese name of the
    catalogue, plus the everyday names of `LAY_LAB_TERMS`."""
    out: list[tuple[str, re.Pattern]] = []
    for entry in load_lab_catalogue():
        terms = {entry.name, *entry.synonyms, *(x for x in (entry.zh,) if x), *LAY_LAB_TERMS.get(entry.key, ())}
        for t in terms:
            # Single letters ("K") and lower-case short forms ("cr", "co2") match ordinary text.
            if len(t) < 2 or (len(t) <= 3 and t.islower()):
                continue
            out.append((entry.key, term_pattern(t)))
        # The key is the evidence item as the prompt cites it ("bun 23 mg/dL (high)"); a
        # short one is matched as written, lower case, like an abbreviation.
        out.append((entry.key, re.compile(rf"(?<![\w-]){re.escape(entry.key)}(?![\w])")))
        if "_" in entry.key:
            out.append((entry.key, term_pattern(entry.key.replace("_", " "))))
    # Generic names that cover two catalogue entries.
    out.append(("troponin", term_pattern("troponin")))
    out.append(("troponin", term_pattern("肌钙蛋白")))
    return tuple(out)


@lru_cache(maxsize=1)
def vital_terms() -> tuple[tuple[str, re.Pattern], ...]:
    return _keyed(VITAL_TERMS)


@lru_cache(maxsize=1)
def ecg_terms() -> tuple[tuple[str, re.Pattern], ...]:
    return _keyed(ECG_TERMS)


@lru_cache(maxsize=1)
def ecg_lead_finding_terms() -> tuple[tuple[str, re.Pattern], ...]:
    return _keyed(ECG_LEAD_FINDING_TERMS)


@lru_cache(maxsize=1)
def modality_terms() -> tuple[tuple[str, re.Pattern], ...]:
    return _keyed(MODALITY_TERMS, any_case=True)


@lru_cache(maxsize=1)
def finding_terms() -> tuple[tuple[str, re.Pattern], ...]:
    return _keyed(FINDING_TERMS, any_case=True)


@lru_cache(maxsize=1)
def scope_terms() -> tuple[tuple[str, re.Pattern], ...]:
    """Terms a normality claim can be about: 'modality:<m>', 'ecg:rhythm' and 'all' keys."""
    out = [(f"modality:{m}", term_pattern(t, any_case=True)) for m, terms in MODALITY_SCOPE_TERMS.items() for t in terms]
    out += [(f"ecg:{k}", term_pattern(t, any_case=True)) for k, terms in ECG_SCOPE_TERMS.items() for t in terms]
    out += [("all", term_pattern(t, any_case=True)) for t in GENERIC_SCOPE_TERMS]
    return tuple(out)


def mentions(sentence: str, terms: tuple[tuple[str, re.Pattern], ...]) -> list[Mention]:
    """(start, end, key) of every term occurrence, in order; a match inside a longer one is
    not a mention of its own ("Hemoglobin A1c" names HbA1c, not hemoglobin; "N末端B型利钠肽原"
    is NT-proBNP, not BNP)."""
    found = [(m.start(), m.end(), key) for key, pat in terms for m in pat.finditer(sentence)]
    found.sort(key=lambda t: (t[0], -(t[1] - t[0])))
    kept: list[Mention] = []
    for start, end, key in found:
        if any(s <= start and end <= e and (e - s) > (end - start) for s, e, _ in found):
            continue
        if (start, end) in {(s, e) for s, e, _ in kept}:
            continue  # the same words under two keys: the first table entry names it
        kept.append((start, end, key))
    return kept


def finding_mentions(sentence: str) -> list[Mention]:
    """Image-finding mentions (canonical label as key), without bedside or body uses."""
    return [(s, e, k) for s, e, k in mentions(sentence, finding_terms())
            if not _NOT_AN_IMAGE_FINDING.search(sentence[:s])]


# --------------------------------------------------------------------------- ECG leads

# One lead name, or a precordial range ("V4-V6", "V1–V3", "V4 to V6", "V4-6").
_LEAD = re.compile(r"(?<![\w])(?:V(?P<lo>\d{1,2})\s*(?:-|–|—|to|through)\s*V?(?P<hi>\d{1,2})|"
                   r"(?P<one>a[Vv][RrLlFf]|V\d{1,2}|III|II|I))(?![\w])")
# Roman limb leads are also ordinary words ("type II"); they count as leads only where
# the text is about ECG leads.
_LEAD_CONTEXT = re.compile(r"\blead|\ba[Vv][RrLlFf]\b|\bV\d|\bECG\b|\bEKG\b|导联|心电图", re.IGNORECASE)


def lead_mentions(sentence: str, ecg_context: bool = False) -> list[tuple[int, int, list[str]]]:
    """(start, end, lead names) of each lead or lead range ("V4-V6" -> V4, V5, V6).

    Leads are spelled as the ECG reader names them (I, II, III, aVR, aVL, aVF, V1-V6);
    V numbers beyond V6 are returned as written so a caller can refuse them. I, II and
    III count only when the sentence is about ECG leads (`ecg_context`, or another lead
    or the word "lead" in it).
    """
    context = ecg_context or bool(_LEAD_CONTEXT.search(sentence))
    out: list[tuple[int, int, list[str]]] = []
    for m in _LEAD.finditer(sentence):
        if m.group("lo"):
            lo, hi = int(m.group("lo")), int(m.group("hi"))
            if hi < lo or hi - lo > 11:
                continue
            out.append((m.start(), m.end(), [f"V{i}" for i in range(lo, hi + 1)]))
            continue
        name = m.group("one")
        if name in ("I", "II", "III") and not context:
            continue
        if name.lower().startswith("av"):
            name = "aV" + name[2].upper()
        out.append((m.start(), m.end(), [name]))
    return out


# --------------------------------------------------------------------------- clauses

# Clause ends inside a sentence: ';' and commas (Chinese and Latin). A comma inside a
# number ("263,000") or inside a lead list ("II, III and aVF") does not end a clause.
_CLAUSE_END = re.compile(r"[;；，]|,(?!\d{3}(?!\d))(?!\s*(?:and\s+|or\s+)?(?:a[Vv][RrLlFf]|V\d|III|II|I)(?![\w]))")


def clause_index(sentence: str) -> list[int]:
    """Start positions of the sentence's clauses (always starting with 0); a position's
    clause is the last start at or before it (`bisect`)."""
    return [0, *(m.end() for m in _CLAUSE_END.finditer(sentence))]
