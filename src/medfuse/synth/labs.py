"""Synthetic laboratory results drawn from disease-conditioned distributions.

Two steps, so other modalities can agree with the labs:
1. `draw_physiology` draws the patient's true value of every catalogue test in its
   canonical unit (the ECG uses the true potassium for peaked T waves even when no
   potassium was measured);
2. `report_labs` decides which tests were ordered (in realistic panels), drops a few
   results, reports some in alternative units (glucose in mmol/L, creatinine in umol/L,
   ...) with the reference range converted to that unit, and sets the flag.

`LAB_MODELS` is the generating table (data, printed in the datasheet). Each test has a
healthy distribution (lognormal for skewed analytes, normal otherwise) and shifts per
disease or trait; the shifts are drawn per patient (mean, sd), so a disease moves a test
by a varying amount. Several diseases share a test on purpose (troponin in sepsis and
renal failure as well as CAD; natriuretic peptides in renal failure, AF and sepsis as
well as heart failure; WBC and CRP in sepsis and pneumonia), so one test alone is
ambiguous and the model has to combine evidence.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np

from medfuse.knowledge.labs import LabEntry, load_lab_catalogue
from medfuse.record.case import LabResult
from medfuse.synth.diseases import SynthPatient

# dist: "log" (median, sd of log) or "normal" (mean, sd); a median may be per sex.
# effects: disease or trait -> (mean shift, sd of shift) on the log or linear scale.
# floor / ceil: disease -> bound the value must respect for that disease (diagnostic
#   criteria the ground truth promises, e.g. HbA1c >= 6.5 % in diabetes).
# age_per_decade: shift per decade above 50 (natriuretic peptides rise with age).
# ceil: the assay's upper reporting limit. Log-scale shifts of several diseases combine
#   sub-additively (`_combine`).
# decimals: rounding in the canonical unit.
LAB_MODELS: dict[str, dict[str, Any]] = {
    "creatinine": {"dist": "log", "ceil": 15.0, "median": {"M": 0.95, "F": 0.75}, "sd": 0.16, "decimals": 2,
                   "effects": {"acute_renal_failure": (1.1, 0.35), "sepsis": (0.25, 0.2), "heart_failure": (0.2, 0.15),
                               "diabetes_mellitus": (0.1, 0.1), "hypertension": (0.08, 0.08)},
                   "floor": {"acute_renal_failure": 1.5}},
    "bun": {"dist": "log", "ceil": 200.0, "median": 14.0, "sd": 0.28, "decimals": 0,
            "effects": {"acute_renal_failure": (1.0, 0.35), "sepsis": (0.35, 0.2), "heart_failure": (0.35, 0.2)}},
    "potassium": {"dist": "normal", "median": 4.2, "sd": 0.35, "decimals": 1,
                  "effects": {"acute_renal_failure": (1.1, 0.55), "diabetes_mellitus": (0.1, 0.1)}},
    "sodium": {"dist": "normal", "median": 139.0, "sd": 2.4, "decimals": 0,
               "effects": {"heart_failure": (-3.0, 2.0), "sepsis": (-2.0, 2.5), "pneumonia": (-1.5, 1.5)}},
    "chloride": {"dist": "normal", "median": 102.0, "sd": 2.5, "decimals": 0,
                 "effects": {"acute_renal_failure": (1.5, 1.5), "sepsis": (-1.0, 2.0)}},
    "bicarbonate": {"dist": "normal", "median": 25.0, "sd": 2.0, "decimals": 0,
                    "effects": {"sepsis": (-5.0, 2.5), "acute_renal_failure": (-4.0, 2.0)}},
    "glucose": {"dist": "log", "ceil": 900.0, "median": 95.0, "sd": 0.12, "decimals": 0,
                "effects": {"diabetes_mellitus": (0.65, 0.25), "sepsis": (0.2, 0.12)}},
    "hba1c": {"dist": "normal", "median": 5.3, "sd": 0.3, "decimals": 1,
              "effects": {"diabetes_mellitus": (2.4, 1.1)}, "floor": {"diabetes_mellitus": 6.5}},
    "wbc": {"dist": "log", "ceil": 80.0, "median": 7.0, "sd": 0.22, "decimals": 1,
            "effects": {"pneumonia": (0.5, 0.25), "sepsis": (0.6, 0.45), "lung_cancer": (0.1, 0.1)}},
    "hemoglobin": {"dist": "normal", "median": {"M": 14.6, "F": 13.1}, "sd": 1.1, "decimals": 1,
                   "effects": {"acute_renal_failure": (-1.4, 0.8), "lung_cancer": (-1.2, 0.8), "sepsis": (-1.0, 0.8)}},
    "platelets": {"dist": "log", "median": 250.0, "sd": 0.22, "decimals": 0,
                  "effects": {"sepsis": (-0.5, 0.35)}},
    "troponin_t": {"dist": "log", "ceil": 25.0, "median": 0.004, "sd": 0.4, "decimals": 3,
                   "effects": {"cad_acute": (3.2, 0.8), "coronary_artery_disease": (0.3, 0.3), "sepsis": (1.3, 0.6),
                               "acute_renal_failure": (1.3, 0.5), "heart_failure": (0.9, 0.5)}},
    "troponin_i": {"dist": "log", "ceil": 50.0, "median": 0.01, "sd": 0.4, "decimals": 2,
                   "effects": {"cad_acute": (3.2, 0.8), "coronary_artery_disease": (0.3, 0.3), "sepsis": (1.3, 0.6),
                               "acute_renal_failure": (1.2, 0.5), "heart_failure": (0.9, 0.5)}},
    "nt_probnp": {"dist": "log", "ceil": 35000.0, "median": 55.0, "sd": 0.6, "decimals": 0, "age_per_decade": 0.25,
                  "effects": {"heart_failure": (2.9, 0.7), "acute_renal_failure": (1.6, 0.6), "atrial_fibrillation": (1.0, 0.4),
                              "sepsis": (1.0, 0.5), "coronary_artery_disease": (0.4, 0.3)}},
    "bnp": {"dist": "log", "ceil": 5000.0, "median": 25.0, "sd": 0.6, "decimals": 0, "age_per_decade": 0.2,
            "effects": {"heart_failure": (2.6, 0.7), "acute_renal_failure": (1.3, 0.6), "atrial_fibrillation": (0.9, 0.4),
                        "sepsis": (0.8, 0.5), "coronary_artery_disease": (0.3, 0.3)}},
    "lactate": {"dist": "log", "ceil": 20.0, "median": 1.1, "sd": 0.28, "decimals": 1,
                "effects": {"sepsis": (1.1, 0.4), "heart_failure": (0.1, 0.1)}, "floor": {"sepsis": 2.1}},
    "crp": {"dist": "log", "ceil": 350.0, "median": 2.5, "sd": 0.8, "decimals": 1,
            "effects": {"pneumonia": (2.9, 0.6), "sepsis": (3.1, 0.6), "lung_cancer": (1.0, 0.6),
                        "coronary_artery_disease": (0.3, 0.3)}},
    "procalcitonin": {"dist": "log", "ceil": 100.0, "median": 0.05, "sd": 0.5, "decimals": 2,
                      "effects": {"sepsis": (3.2, 0.9), "pneumonia": (1.5, 0.8), "acute_renal_failure": (0.7, 0.4)}},
    "ldl": {"dist": "log", "median": 112.0, "sd": 0.25, "decimals": 0,
            "effects": {"coronary_artery_disease": (0.15, 0.2), "diabetes_mellitus": (0.05, 0.1)}},
    "albumin": {"dist": "normal", "median": 4.1, "sd": 0.33, "decimals": 1,
                "effects": {"sepsis": (-0.9, 0.35), "lung_cancer": (-0.5, 0.3), "acute_renal_failure": (-0.3, 0.2),
                            "heart_failure": (-0.2, 0.2)}},
    "bilirubin": {"dist": "log", "ceil": 30.0, "median": 0.6, "sd": 0.4, "decimals": 1, "effects": {"sepsis": (0.5, 0.4)}},
    "alt": {"dist": "log", "ceil": 3000.0, "median": 22.0, "sd": 0.4, "decimals": 0,
            "effects": {"sepsis": (0.5, 0.4), "heart_failure": (0.2, 0.2)}},
    "ast": {"dist": "log", "ceil": 3000.0, "median": 24.0, "sd": 0.35, "decimals": 0,
            "effects": {"sepsis": (0.5, 0.4), "cad_acute": (0.6, 0.4)}},
    "inr": {"dist": "log", "ceil": 8.0, "median": 1.0, "sd": 0.06, "decimals": 1,
            "effects": {"sepsis": (0.2, 0.1), "atrial_fibrillation": (0.45, 0.3)}},
}

# Tests are ordered in panels, as in a hospital: probability per panel, independent of
# the diagnoses so that missingness alone does not give the answer away.
LAB_PANELS: dict[str, tuple[float, tuple[str, ...]]] = {
    "basic metabolic": (0.92, ("sodium", "potassium", "chloride", "bicarbonate", "bun", "creatinine", "glucose")),
    "blood count": (0.88, ("wbc", "hemoglobin", "platelets")),
    "cardiac": (0.6, ("troponin", "natriuretic")),
    "lactate": (0.45, ("lactate",)),
    "inflammation": (0.5, ("crp", "procalcitonin")),
    "hba1c": (0.5, ("hba1c",)),
    "lipids": (0.35, ("ldl",)),
    "liver": (0.45, ("albumin", "bilirubin", "alt", "ast")),
    "coagulation": (0.4, ("inr",)),
}

# Other units a laboratory may report in, with the probability of each (scaled by
# `SynthConfig.alt_unit_rate` / 0.3).
ALT_UNITS: dict[str, dict[str, float]] = {
    "glucose": {"mmol/L": 0.3},
    "creatinine": {"umol/L": 0.3},
    "bun": {"mmol/L": 0.1},
    "hba1c": {"mmol/mol": 0.15},
    "wbc": {"10*9/L": 0.3},
    "hemoglobin": {"g/L": 0.2},
    "platelets": {"10*9/L": 0.3},
    "troponin_t": {"ng/L": 0.4},
    "troponin_i": {"ng/L": 0.3},
    "nt_probnp": {"pmol/L": 0.05},
    "potassium": {"mmol/L": 0.3},
    "sodium": {"mmol/L": 0.3},
    "crp": {"mg/dL": 0.2},
    "bilirubin": {"umol/L": 0.2},
}
DEFAULT_ALT_UNIT_RATE = 0.3


def draw_physiology(rng: np.random.Generator, patient: SynthPatient) -> dict[str, float]:
    """The patient's true value of every modelled test, in the catalogue's canonical unit."""
    states = set(patient.diseases)
    if patient.traits.get("cad_acute"):
        states.add("cad_acute")
    values: dict[str, float] = {}
    for key, model in LAB_MODELS.items():
        median = model["median"]
        if isinstance(median, dict):
            median = median[patient.sex]
        shifts = []
        for state, (mean, sd) in model.get("effects", {}).items():
            z = rng.standard_normal()  # drawn whether or not the state is present: stable streams
            if state in states:
                shifts.append(mean + sd * z)
        shift = _combine(shifts) if model["dist"] == "log" else sum(shifts)
        shift += model.get("age_per_decade", 0.0) * (patient.age - 50) / 10.0
        noise = model["sd"] * rng.standard_normal()
        if model["dist"] == "log":
            value = math.exp(math.log(median) + shift + noise)
        else:
            value = median + shift + noise
        for state, bound in model.get("floor", {}).items():
            if state in states and value < bound:
                # Above the diagnostic bound by a small random margin, not piled on it.
                value = bound * (1.0 + abs(rng.normal(0.0, 0.05)))
        ceiling = model.get("ceil")
        if ceiling is not None and value > ceiling:
            value = ceiling * (1.0 - abs(rng.normal(0.0, 0.05)))  # assays top out; keep values varied
        values[key] = max(value, 0.0)
    return values


def _combine(shifts: list[float]) -> float:
    """Several causes raise a log-scale test less than the product of their effects: the
    largest shift counts fully, the others at 40 % (so four diseases do not push NT-proBNP
    past any assay's range)."""
    if not shifts:
        return 0.0
    up = sorted((x for x in shifts if x > 0), reverse=True)
    down = sorted(x for x in shifts if x <= 0)
    total = 0.0
    for group in (up, down):
        if group:
            total += group[0] + 0.4 * sum(group[1:])
    return total


def _round(value: float, decimals: int) -> float:
    return float(round(value, decimals))


def _flag(entry: LabEntry, canonical: float, low: float | None, high: float | None, value: float) -> str:
    crit_lo, crit_hi = entry.critical
    if crit_hi is not None and canonical >= crit_hi:
        return "HH"
    if crit_lo is not None and canonical <= crit_lo:
        return "LL"
    if high is not None and value > high:
        return "H"
    if low is not None and value < low:
        return "L"
    return "N"


def _local_name(rng: np.random.Generator, entry: LabEntry, lang: str) -> str:
    if lang == "zh" and entry.zh and rng.random() < 0.7:
        return entry.zh
    # Mostly the catalogue name, sometimes a local spelling, as different sites use.
    names = [entry.name] * 4 + [s for s in entry.synonyms if len(s) > 2]
    return str(names[int(rng.integers(len(names)))])


def report_labs(
    rng: np.random.Generator,
    physiology: dict[str, float],
    time: dt.datetime,
    *,
    lang: str = "en",
    missing_rate: float = 0.05,
    alt_unit_rate: float = DEFAULT_ALT_UNIT_RATE,
) -> list[LabResult]:
    """The results a laboratory reports for this patient: panels ordered, units, flags."""
    catalogue = load_lab_catalogue()
    ordered: list[str] = []
    for prob, members in LAB_PANELS.values():
        if rng.random() < prob:
            ordered.extend(members)
    # One troponin assay and one natriuretic peptide per hospital, as in practice.
    assay_t = rng.random() < 0.5
    assay_nt = rng.random() < 0.5
    tests = []
    for m in ordered:
        if m == "troponin":
            tests.append("troponin_t" if assay_t else "troponin_i")
        elif m == "natriuretic":
            tests.append("nt_probnp" if assay_nt else "bnp")
        else:
            tests.append(m)

    unit_scale = alt_unit_rate / DEFAULT_ALT_UNIT_RATE if DEFAULT_ALT_UNIT_RATE else 0.0
    results: list[LabResult] = []
    for key in tests:
        u = rng.random(4)
        if u[0] < missing_rate:
            continue  # ordered but not resulted (haemolysed, lost, cancelled)
        entry = catalogue.get(key)
        model = LAB_MODELS[key]
        canonical = _round(physiology[key], model["decimals"])
        unit, factor, offset = entry.unit, 1.0, 0.0
        alt = ALT_UNITS.get(key, {})
        cum = 0.0
        for alt_unit, p in alt.items():
            cum += p * unit_scale
            if u[1] < cum:
                unit = alt_unit
                factor, offset = entry.units[alt_unit]
                break
        lo, hi = entry.ref
        if factor != 1.0 or offset != 0.0:
            # value_canonical = value * factor + offset, so invert for the reported unit.
            decimals = max(0, model["decimals"] - int(math.floor(math.log10(abs(1.0 / factor)))))
            value = _round((canonical - offset) / factor, min(decimals, 3))
            ref_lo = None if lo is None else _round((lo - offset) / factor, 2)
            ref_hi = None if hi is None else _round((hi - offset) / factor, 2)
        else:
            value, ref_lo, ref_hi = canonical, lo, hi
        minutes = int(30 + 240 * u[2])
        results.append(
            LabResult(
                name=_local_name(rng, entry, lang),
                loinc=entry.loinc[0],
                code=entry.key,
                value=value,
                unit=unit,
                ref_low=ref_lo,
                ref_high=ref_hi,
                time=time + dt.timedelta(minutes=minutes),
                flag=_flag(entry, value * factor + offset, ref_lo, ref_hi, value),
            )
        )
    results.sort(key=lambda r: (r.time, r.code or ""))
    return results
