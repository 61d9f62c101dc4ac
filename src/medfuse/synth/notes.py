"""Synthetic history and indication notes in English or Chinese.

A note is assembled from facts, each written with one of several phrasings:
- presenting symptoms drawn per disease (`SYMPTOMS`), so a disease is often but not
  always mentioned indirectly, plus background symptoms anyone may have (a cough from a
  cold), so no symptom alone names a disease;
- negated symptoms the patient does not have ("denies fever", "no chest pain", "无胸痛");
- past history of chronic panel diseases, sometimes by name or abbreviation, sometimes only
  through a drug (metformin, apixaban);
- distractors: unrelated history, family history of panel diseases ("father had an MI"),
  "rule out pneumonia" requests for patients who do not have it, negated history;
- smoking history with pack-years.
The wording never states the encounter's acute diagnoses outright; the chronic history
may, as real admission notes do.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
import yaml

from medfuse.record.case import Note
from medfuse.synth.diseases import SynthPatient

# symptom key -> (probability given the disease) per disease; a symptom may serve several.
SYMPTOMS: dict[str, dict[str, float]] = {
    "pneumonia": {"cough": 0.75, "sputum": 0.5, "fever": 0.6, "dyspnoea": 0.4, "pleuritic_pain": 0.2},
    "sepsis": {"fever": 0.6, "chills": 0.4, "confusion": 0.3, "malaise": 0.4},
    "heart_failure": {"exertional_dyspnoea": 0.65, "orthopnoea": 0.4, "leg_swelling": 0.5, "weight_gain": 0.2},
    "coronary_artery_disease": {"exertional_chest_pain": 0.55},
    "atrial_fibrillation": {"palpitations": 0.5, "dizziness": 0.2},
    "acute_renal_failure": {"oliguria": 0.45, "nausea": 0.2, "leg_swelling": 0.15},
    "diabetes_mellitus": {"polyuria": 0.25, "thirst": 0.2},
    "lung_cancer": {"haemoptysis": 0.3, "weight_loss": 0.4, "chronic_cough": 0.4},
    "hypertension": {"headache": 0.12},
}
ACUTE_CAD_SYMPTOMS = {"crushing_chest_pain": 0.85, "diaphoresis": 0.4}
SEPSIS_SOURCE_SYMPTOMS = {"urinary": "dysuria", "abdominal": "abdominal_pain", "skin": "red_leg"}
# Symptoms anyone may have (a cold, deconditioning): they make every symptom ambiguous.
BACKGROUND_SYMPTOMS = {"cough": 0.12, "dyspnoea": 0.07, "fever": 0.04, "palpitations": 0.04, "leg_swelling": 0.04,
                       "headache": 0.06, "exertional_chest_pain": 0.03}
MINOR_COMPLAINTS = ("back_pain", "fall", "checkup", "medication_review", "rash", "knee_pain")


@lru_cache(maxsize=2)
def symptom_phrases(lang: str) -> dict[str, tuple[str, ...]]:
    """Symptom key -> the phrasings a note in `lang` ('en' or 'zh') draws from; the
    wording lives in the data file `data/symptom_phrases.yaml`, both languages side by side."""
    text = resources.files("medfuse.synth").joinpath("data").joinpath("symptom_phrases.yaml").read_text("utf-8")
    return {key: tuple(by_lang[lang]) for key, by_lang in yaml.safe_load(text)["symptoms"].items()}


# Symptoms that are commonly asked about and negated when absent.
NEGATABLE = ("fever", "cough", "exertional_chest_pain", "dyspnoea", "palpitations", "leg_swelling", "haemoptysis",
             "oliguria", "headache", "chills")
_NEG_EN = ("no {s}", "denies {s}", "negative for {s}", "{S} denied", "without {s}")
_NEG_ZH = ("无{s}", "否认{s}", "未诉{s}")

# Chronic history a note may name. Each: (by name, en) (by name, zh) (drug that implies it).
HISTORY: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "hypertension": (("hypertension", "HTN", "high blood pressure"), ("高血压", "高血压病"), ("amlodipine", "lisinopril")),
    "diabetes_mellitus": (("type 2 diabetes", "T2DM", "diabetes mellitus"), ("2型糖尿病", "糖尿病"), ("metformin", "insulin glargine")),
    "coronary_artery_disease": (("coronary artery disease", "CAD", "ischaemic heart disease"), ("冠心病",), ("aspirin and atorvastatin",)),
    "atrial_fibrillation": (("atrial fibrillation", "AF", "paroxysmal AF"), ("房颤", "心房颤动"), ("apixaban", "warfarin")),
    "heart_failure": (("heart failure", "CHF", "HFrEF"), ("心力衰竭", "慢性心衰"), ("furosemide", "sacubitril/valsartan")),
}
HISTORY_MENTION_P = 0.45
DRUG_MENTION_P = 0.3

_UNRELATED_EN = ("hypothyroidism", "gastro-oesophageal reflux", "osteoarthritis", "gout", "benign prostatic hyperplasia",
                 "an appendectomy in childhood", "cataract surgery", "asthma in childhood", "migraine")
_UNRELATED_ZH = ("甲状腺功能减退", "胃食管反流", "骨关节炎", "痛风", "前列腺增生", "阑尾切除术后", "白内障手术史")
_FAMILY_EN = ("father had a myocardial infarction at 60", "mother has type 2 diabetes", "brother with hypertension",
              "father died of lung cancer", "sister has atrial fibrillation")
_FAMILY_ZH = ("父亲60岁时患心肌梗死", "母亲患糖尿病", "兄长患高血压", "父亲死于肺癌")
_DRUG_DISTRACTORS = ("levothyroxine", "omeprazole", "paracetamol as needed", "vitamin D")


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _join_en(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def present_symptoms(rng: np.random.Generator, patient: SynthPatient) -> list[str]:
    """Symptom keys this patient reports, in a stable order."""
    chosen: list[str] = []
    table: list[tuple[str, float]] = []
    for disease in sorted(patient.diseases):
        table.extend(SYMPTOMS.get(disease, {}).items())
    if patient.traits.get("cad_acute"):
        table.extend(ACUTE_CAD_SYMPTOMS.items())
    source = patient.traits.get("sepsis_source")
    if source in SEPSIS_SOURCE_SYMPTOMS:
        table.append((SEPSIS_SOURCE_SYMPTOMS[source], 0.7))
    table.extend(BACKGROUND_SYMPTOMS.items())
    for key, p in table:
        if rng.random() < p and key not in chosen:
            chosen.append(key)
    if not chosen:
        chosen.append(_pick(rng, MINOR_COMPLAINTS))
    return chosen


def _smoking_text(rng: np.random.Generator, patient: SynthPatient, lang: str) -> str:
    py = int(patient.pack_years)
    if lang == "zh":
        if patient.smoking == "never":
            return _pick(rng, ("否认吸烟史", "不吸烟"))
        if patient.smoking == "former":
            return _pick(rng, (f"既往吸烟{py}包年，已戒烟{int(rng.integers(1, 20))}年", f"吸烟史{py}包年，已戒烟"))
        return _pick(rng, (f"吸烟{py}包年，目前仍吸烟", f"现吸烟，吸烟史{py}包年"))
    if patient.smoking == "never":
        return _pick(rng, ("Never smoker.", "Denies tobacco use.", "Non-smoker."))
    if patient.smoking == "former":
        years = int(rng.integers(1, 20))
        return _pick(rng, (f"Former smoker, {py} pack-years, quit {years} years ago.", f"Ex-smoker ({py} pack-years).",
                           f"Smoked {py} pack-years, stopped {years} years ago."))
    return _pick(rng, (f"Current smoker, {py} pack-years.", f"Smokes; {py} pack-year history.",
                       f"Active smoker with a {py} pack-year history."))


def _background(rng: np.random.Generator, patient: SynthPatient, lang: str, drugs: list[str]) -> list[str]:
    """The history note's closing sentences: a denied and an unrelated past history, the
    drugs, smoking and family history. Both languages make the same random draws in the
    same order, so a cohort's English and Chinese notes state the same facts."""
    zh = lang == "zh"
    parts: list[str] = []
    unrelated = [d for d in HISTORY if d not in patient.diseases]
    if unrelated and rng.random() < 0.35:
        name = _pick(rng, HISTORY[_pick(rng, unrelated)][1 if zh else 0])
        parts.append(f"否认{name}病史。" if zh else f"No history of {name}.")
    if rng.random() < 0.3:
        parts.append(f"既往{_pick(rng, _UNRELATED_ZH)}。" if zh else f"Also has {_pick(rng, _UNRELATED_EN)}.")
    if drugs:
        if zh:
            parts.append("长期服用" + "、".join(drugs) + "。")
        else:
            parts.append(_pick(rng, ("Medications: ", "Takes ", "Current drugs: ")) + ", ".join(drugs) + ".")
    parts.append(_smoking_text(rng, patient, lang) + ("。" if zh else ""))
    if rng.random() < 0.25:
        parts.append(f"家族史：{_pick(rng, _FAMILY_ZH)}。" if zh else f"Family history: {_pick(rng, _FAMILY_EN)}.")
    return parts


def history_note(rng: np.random.Generator, patient: SynthPatient, lang: str = "en",
                 symptoms: list[str] | None = None) -> Note:
    """An admission history: complaint, negatives, past history, drugs, smoking, family history.

    `symptoms` (from `present_symptoms`) lets the indication note tell the same story.
    """
    symptoms = present_symptoms(rng, patient) if symptoms is None else symptoms
    minor = all(s in MINOR_COMPLAINTS for s in symptoms)
    absent = [s for s in NEGATABLE if s not in symptoms]
    negated = [absent[i] for i in sorted(rng.choice(len(absent), size=min(len(absent), int(rng.integers(1, 4))), replace=False))]
    history = [d for d in HISTORY if d in patient.diseases and rng.random() < HISTORY_MENTION_P]
    drugs = [_pick(rng, HISTORY[d][2]) for d in HISTORY if d in patient.diseases and rng.random() < DRUG_MENTION_P]
    if rng.random() < 0.3:
        drugs.append(_pick(rng, _DRUG_DISTRACTORS))
    days = int(rng.integers(1, 10))
    sex_en = "man" if patient.sex == "M" else "woman"
    parts: list[str] = []
    if lang == "zh":
        sx = symptom_phrases("zh")
        complaint = "、".join(_pick(rng, sx[s]) for s in symptoms)
        sex_zh = "男" if patient.sex == "M" else "女"
        if minor:
            parts.append(f"患者{sex_zh}性，{patient.age}岁，因{complaint}就诊。")
        else:
            parts.append(_pick(rng, (f"患者{sex_zh}性，{patient.age}岁，因“{complaint}{days}天”入院。",
                                     f"{patient.age}岁{sex_zh}性，主诉{complaint}{days}天。")))
        if negated:
            parts.append("，".join(_pick(rng, _NEG_ZH).format(s=_pick(rng, sx[s])) for s in negated) + "。")
        if history:
            parts.append("既往" + "、".join(_pick(rng, HISTORY[d][1]) for d in history) + "病史。")
        parts += _background(rng, patient, "zh", drugs)
        text = "".join(parts)
    else:
        sx = symptom_phrases("en")
        complaint = _join_en([_pick(rng, sx[s]) for s in symptoms])
        if minor:
            parts.append(_pick(rng, (f"{patient.age}-year-old {sex_en} seen for {complaint}.",
                                     f"A {patient.age}-year-old {sex_en} attending for {complaint}.")))
        else:
            parts.append(_pick(rng, (
                f"{patient.age}-year-old {sex_en} presenting with {complaint} for {days} day{'s' if days > 1 else ''}.",
                f"{patient.age} y/o {'M' if patient.sex == 'M' else 'F'} with {days} day{'s' if days > 1 else ''} of {complaint}.",
                f"A {patient.age}-year-old {sex_en} was admitted with {complaint}.",
            )))
        if negated:
            neg = []
            for s in negated:
                phr = _pick(rng, sx[s])
                neg.append(_pick(rng, _NEG_EN).format(s=phr, S=phr[:1].upper() + phr[1:]))
            parts.append("; ".join(neg).capitalize() + ".")
        if history:
            names = [_pick(rng, HISTORY[d][0]) for d in history]
            parts.append(_pick(rng, (f"PMH: {', '.join(names)}.", f"Known {_join_en(names)}.",
                                     f"Past history of {_join_en(names)}.")))
        parts += _background(rng, patient, "en", drugs)
        text = " ".join(parts)
    return Note(text=text, type="history", lang=lang)


_INDICATION_EN = {
    "cough": "evaluate for pneumonia", "fever": "evaluate for infection", "sputum": "evaluate for pneumonia",
    "dyspnoea": "evaluate for pneumonia or effusion", "exertional_dyspnoea": "assess for heart failure",
    "orthopnoea": "assess for pulmonary oedema", "leg_swelling": "assess for fluid overload",
    "haemoptysis": "evaluate for mass", "chronic_cough": "evaluate for mass", "weight_loss": "evaluate for malignancy",
}
_INDICATION_ZH = {
    "cough": "排除肺炎", "fever": "排查感染", "sputum": "排除肺炎", "dyspnoea": "排除肺炎或胸腔积液",
    "exertional_dyspnoea": "评估心衰", "orthopnoea": "评估肺水肿", "leg_swelling": "评估容量负荷",
    "haemoptysis": "排除占位", "chronic_cough": "排除占位", "weight_loss": "排除肿瘤",
}


def indication_note(rng: np.random.Generator, patient: SynthPatient, lang: str = "en",
                    symptoms: list[str] | None = None) -> Note:
    """A short imaging/ECG request, phrased from symptoms (so 'rule out' is not a diagnosis)."""
    symptoms = present_symptoms(rng, patient) if symptoms is None else symptoms
    lead = symptoms[0]
    phrases = symptom_phrases("zh" if lang == "zh" else "en")[lead]
    if lang == "zh":
        ask = _INDICATION_ZH.get(lead, _pick(rng, ("常规检查", "入院常规", "术前检查")))
        text = _pick(rng, (f"胸片申请：{_pick(rng, phrases)}，{ask}。", f"检查指征：{_pick(rng, phrases)}。{ask}。"))
    else:
        ask = _INDICATION_EN.get(lead, _pick(rng, ("routine admission film", "pre-operative", "baseline study")))
        age_sex = f"{patient.age}{'M' if patient.sex == 'M' else 'F'}"
        text = _pick(rng, (f"INDICATION: {age_sex} with {_pick(rng, phrases)}; {ask}.",
                           f"Indication: {_pick(rng, phrases)}. Please {ask}.",
                           f"Clinical question: {ask} ({_pick(rng, phrases)})."))
    return Note(text=text, type="indication", lang=lang)
