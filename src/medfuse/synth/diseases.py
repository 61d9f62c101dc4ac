"""Synthetic patients: demographics, smoking, and panel diseases with comorbidity.

The generating rules are data (`DISEASE_RULES`, `HEALTHY_SHARE`, `AGE_MIX`), not code, so
the datasheet can print them and a config file can replace them. Each disease has a base
probability for a 60-year-old non-smoking woman with none of the earlier diseases, and odds
ratios for age (per decade from 60), male sex, smoking and each disease drawn before it.
Diseases are drawn in `DISEASE_ORDER`, so a later disease can depend on earlier ones
(heart failure on CAD and hypertension, AF on heart failure, sepsis on pneumonia, renal
failure on sepsis and heart failure). The rates give an inpatient-like cohort, not a
general population: prevalences are higher than in the community by design, so that every
disease has enough positives for training and evaluation.

Sources for the shapes (not the exact numbers): hospital discharge statistics for the
common comorbidity pairs (HF-AF, DM-HTN-CAD, pneumonia-sepsis-AKI) and the smoking
attributable risk of lung cancer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medfuse.knowledge.panel import load_panel

# The order in which diseases are drawn: a disease may only condition on earlier ones.
DISEASE_ORDER: tuple[str, ...] = (
    "hypertension",
    "diabetes_mellitus",
    "coronary_artery_disease",
    "heart_failure",
    "atrial_fibrillation",
    "lung_cancer",
    "pneumonia",
    "sepsis",
    "acute_renal_failure",
)

# base: probability at age 60, female, never-smoker, with no earlier disease.
# age_or: odds ratio per decade of age above (or below) 60.
# male_or, smoker_or: odds ratios for male sex and for ever-smokers.
# given: odds ratio for each earlier disease present (multiplicative on the odds).
DISEASE_RULES: dict[str, dict[str, Any]] = {
    "hypertension": {"base": 0.38, "age_or": 1.7, "male_or": 1.2, "smoker_or": 1.1, "given": {}},
    "diabetes_mellitus": {"base": 0.14, "age_or": 1.3, "male_or": 1.2, "smoker_or": 1.2,
                          "given": {"hypertension": 2.6}},
    "coronary_artery_disease": {"base": 0.06, "age_or": 1.7, "male_or": 2.0, "smoker_or": 2.0,
                                "given": {"hypertension": 2.2, "diabetes_mellitus": 2.4}},
    "heart_failure": {"base": 0.05, "age_or": 1.8, "male_or": 1.2, "smoker_or": 1.2,
                      "given": {"hypertension": 2.2, "diabetes_mellitus": 1.5, "coronary_artery_disease": 3.0}},
    "atrial_fibrillation": {"base": 0.06, "age_or": 1.9, "male_or": 1.4, "smoker_or": 1.1,
                            "given": {"hypertension": 1.6, "heart_failure": 4.0, "coronary_artery_disease": 1.4}},
    "lung_cancer": {"base": 0.02, "age_or": 1.6, "male_or": 1.3, "smoker_or": 8.0, "given": {}},
    "pneumonia": {"base": 0.11, "age_or": 1.3, "male_or": 1.2, "smoker_or": 1.6,
                  "given": {"lung_cancer": 2.0, "heart_failure": 1.5, "diabetes_mellitus": 1.3}},
    "sepsis": {"base": 0.035, "age_or": 1.3, "male_or": 1.2, "smoker_or": 1.0,
               "given": {"pneumonia": 9.0, "diabetes_mellitus": 1.6, "lung_cancer": 1.6}},
    "acute_renal_failure": {"base": 0.035, "age_or": 1.4, "male_or": 1.3, "smoker_or": 1.0,
                            "given": {"sepsis": 7.0, "heart_failure": 2.5, "diabetes_mellitus": 1.8,
                                      "hypertension": 1.6}},
}

# A share of patients is drawn disease-free on purpose (check-ups, minor complaints),
# so "none of the panel" is a common, learnable answer.
HEALTHY_SHARE = 0.15

# Age: a mixture of a younger and an older inpatient group (years); clipped to 18-95.
AGE_MIX: tuple[tuple[float, float, float], ...] = ((0.3, 42.0, 13.0), (0.7, 70.0, 11.0))  # (weight, mean, sd)
MALE_SHARE = 0.52
# Ever-smoker probability by sex, and pack-years of ever-smokers (lognormal median, sigma).
SMOKER_SHARE = {"M": 0.45, "F": 0.30}
PACK_YEARS = (22.0, 0.6)


@dataclass(frozen=True)
class SynthPatient:
    """What the generator decided about one patient before drawing any modality."""

    age: int
    sex: str  # "M" or "F"
    smoking: str  # "never", "former", "current"
    pack_years: float  # 0 for never-smokers
    diseases: frozenset[str]
    # Finer states that several modalities must agree on, e.g. "acute" CAD (an infarct,
    # troponin up, ST elevation) versus chronic stable CAD.
    traits: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def has(self, disease: str) -> bool:
        return disease in self.diseases


def _odds(p: float) -> float:
    return p / (1.0 - p)


def disease_probability(rule: dict[str, Any], age: float, sex: str, smoker: bool, present: set[str]) -> float:
    """The probability of one disease under its rule, given what was drawn before it."""
    log_odds = math.log(_odds(rule["base"]))
    log_odds += math.log(rule.get("age_or", 1.0)) * (age - 60.0) / 10.0
    if sex == "M":
        log_odds += math.log(rule.get("male_or", 1.0))
    if smoker:
        log_odds += math.log(rule.get("smoker_or", 1.0))
    for other, ratio in rule.get("given", {}).items():
        if other in present:
            log_odds += math.log(ratio)
    return 1.0 / (1.0 + math.exp(-log_odds))


def validate_rules(rules: dict[str, dict[str, Any]], order: tuple[str, ...] = DISEASE_ORDER) -> None:
    """Raise ValueError naming the bad key when rules are not usable.

    Every panel disease needs a rule, probabilities lie in (0, 1), odds ratios are > 0,
    and `given` only names diseases drawn earlier.
    """
    panel_keys = set(load_panel().keys)
    if set(order) != panel_keys:
        raise ValueError(f"disease order must list the panel diseases {sorted(panel_keys)}")
    for i, key in enumerate(order):
        if key not in rules:
            raise ValueError(f"disease_rules.{key}: missing")
        r = rules[key]
        if not 0.0 < float(r.get("base", -1)) < 1.0:
            raise ValueError(f"disease_rules.{key}.base: must lie strictly between 0 and 1")
        for k in ("age_or", "male_or", "smoker_or"):
            if float(r.get(k, 1.0)) <= 0:
                raise ValueError(f"disease_rules.{key}.{k}: an odds ratio must be > 0")
        for other, ratio in (r.get("given") or {}).items():
            if other not in order[:i]:
                raise ValueError(f"disease_rules.{key}.given.{other}: must be a disease drawn earlier")
            if float(ratio) <= 0:
                raise ValueError(f"disease_rules.{key}.given.{other}: an odds ratio must be > 0")
    unknown = set(rules) - set(order)
    if unknown:
        raise ValueError(f"disease_rules.{sorted(unknown)[0]}: not a panel disease")


def draw_patient(
    rng: np.random.Generator,
    healthy_share: float = HEALTHY_SHARE,
    rules: dict[str, dict[str, Any]] | None = None,
) -> SynthPatient:
    """Draw demographics, smoking history and a disease set for one patient."""
    rules = DISEASE_RULES if rules is None else rules
    weights = np.array([w for w, _, _ in AGE_MIX])
    comp = int(rng.choice(len(AGE_MIX), p=weights / weights.sum()))
    _, mean, sd = AGE_MIX[comp]
    age = int(np.clip(round(rng.normal(mean, sd)), 18, 95))
    sex = "M" if rng.random() < MALE_SHARE else "F"
    smoker = rng.random() < SMOKER_SHARE[sex]
    if smoker:
        smoking = "current" if rng.random() < 0.45 else "former"
        pack_years = float(np.clip(round(rng.lognormal(math.log(PACK_YEARS[0]), PACK_YEARS[1]), 0), 1, 150))
        # Young smokers cannot have smoked for more years than they have been adults.
        pack_years = float(min(pack_years, max(1.0, 2.0 * (age - 16))))
    else:
        smoking, pack_years = "never", 0.0

    present: set[str] = set()
    healthy = rng.random() < healthy_share
    # Draw the uniforms even for healthy patients so the stream stays aligned.
    u = rng.random(len(DISEASE_ORDER))
    if not healthy:
        for key, ui in zip(DISEASE_ORDER, u, strict=True):
            if ui < disease_probability(rules[key], age, sex, smoker, present):
                present.add(key)

    traits: dict[str, Any] = {}
    t = rng.random(4)
    if "coronary_artery_disease" in present:
        # About a third of CAD admissions are acute coronary syndromes (troponin, ST change).
        traits["cad_acute"] = bool(t[0] < 0.35)
    if "heart_failure" in present:
        traits["hf_decompensated"] = bool(t[1] < 0.6)
    if "diabetes_mellitus" in present:
        traits["dm_type"] = 1 if (age < 35 and t[2] < 0.5) or t[2] < 0.05 else 2
    if "sepsis" in present:
        # Sepsis without pneumonia has another source the chest film cannot show.
        traits["sepsis_source"] = "lung" if "pneumonia" in present else str(
            rng.choice(["urinary", "abdominal", "skin", "line", "unknown"])
        )
    return SynthPatient(age=age, sex=sex, smoking=smoking, pack_years=pack_years,
                        diseases=frozenset(present), traits=traits)


# ICD-10-CM codes used for the ground-truth diagnoses; every code falls inside the
# disease's panel prefixes (a test checks this with `Panel.match_icd`).
ICD10_CODES: dict[str, tuple[str, ...]] = {
    "atrial_fibrillation": ("I48.91", "I48.0", "I48.19"),
    "coronary_artery_disease": ("I25.10", "I25.119"),
    "hypertension": ("I10",),
    "acute_renal_failure": ("N17.9", "N17.0"),
    "pneumonia": ("J18.9", "J15.9", "J18.1"),
    "diabetes_mellitus": ("E11.9", "E11.65", "E11.22"),
    "sepsis": ("A41.9", "A41.51"),
    "heart_failure": ("I50.9", "I50.23", "I50.33"),
    "lung_cancer": ("C34.90", "C34.10", "C34.30"),
}
ACUTE_CAD_CODES = ("I21.4", "I21.09", "I21.19")
TYPE1_DM_CODES = ("E10.9", "E10.65")


def icd10_code(rng: np.random.Generator, disease: str, patient: SynthPatient) -> str:
    """An ICD-10-CM code for a disease, consistent with the patient's traits."""
    if disease == "coronary_artery_disease" and patient.traits.get("cad_acute"):
        options = ACUTE_CAD_CODES
    elif disease == "diabetes_mellitus" and patient.traits.get("dm_type") == 1:
        options = TYPE1_DM_CODES
    else:
        options = ICD10_CODES[disease]
    return str(options[int(rng.integers(len(options)))])
