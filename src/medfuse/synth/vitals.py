"""Synthetic vital signs drawn from disease-conditioned distributions.

`VITAL_MODELS` is the generating table (data, printed in the datasheet): a healthy mean
and spread, an age slope, and per-disease (or trait) shifts drawn per patient. Shared
confounders are deliberate: fever in pneumonia and sepsis, tachycardia in sepsis,
pneumonia and atrial fibrillation, low SpO2 in pneumonia and decompensated heart failure,
high blood pressure in hypertension but low in sepsis (a septic hypertensive patient can
present normotensive).

The presentation heart rate is drawn once (`draw_heart_rate`) so the ECG can be
generated at the same rate; later sets drift back toward normal, as under treatment.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

from medfuse.record.case import VitalSigns
from medfuse.synth.diseases import SynthPatient

# mean, sd: healthy adult at age 50; age_slope: change per year of age above 50;
# effects: state -> (mean shift, sd of shift); lo/hi: physiological clip; decimals.
VITAL_MODELS: dict[str, dict[str, Any]] = {
    "heart_rate": {"mean": 73.0, "sd": 9.0, "age_slope": -0.08, "lo": 35, "hi": 190, "decimals": 0,
                   "effects": {"sepsis": (28.0, 10.0), "pneumonia": (14.0, 8.0), "atrial_fibrillation": (18.0, 16.0),
                               "hf_decompensated": (8.0, 8.0), "cad_acute": (6.0, 8.0), "acute_renal_failure": (3.0, 5.0)}},
    "sbp": {"mean": 121.0, "sd": 11.0, "age_slope": 0.45, "lo": 60, "hi": 240, "decimals": 0,
            "effects": {"hypertension": (24.0, 12.0), "sepsis": (-28.0, 14.0), "hf_decompensated": (-4.0, 14.0),
                        "acute_renal_failure": (4.0, 8.0)}},
    "dbp": {"mean": 76.0, "sd": 7.0, "age_slope": 0.05, "lo": 30, "hi": 140, "decimals": 0,
            "effects": {"hypertension": (13.0, 7.0), "sepsis": (-16.0, 8.0), "hf_decompensated": (-2.0, 8.0)}},
    "temperature": {"mean": 36.8, "sd": 0.28, "age_slope": -0.004, "lo": 33.5, "hi": 41.5, "decimals": 1,
                    "effects": {"pneumonia": (1.3, 0.6), "sepsis": (1.5, 0.9)}},
    "spo2": {"mean": 97.6, "sd": 1.1, "age_slope": -0.03, "lo": 70, "hi": 100, "decimals": 0,
             "effects": {"pneumonia": (-5.0, 3.0), "hf_decompensated": (-4.0, 2.5), "sepsis": (-2.0, 2.0),
                         "lung_cancer": (-1.5, 1.5)}},
    "resp_rate": {"mean": 15.0, "sd": 2.0, "age_slope": 0.02, "lo": 8, "hi": 45, "decimals": 0,
                  "effects": {"pneumonia": (6.0, 3.0), "sepsis": (7.0, 3.5), "hf_decompensated": (5.0, 3.0)}},
}

# Share of patients whose sepsis presents with hypothermia rather than fever.
SEPSIS_HYPOTHERMIA = 0.12


def patient_states(patient: SynthPatient) -> set[str]:
    """Diseases plus the traits that act like states in the generating tables."""
    states = set(patient.diseases)
    if patient.traits.get("cad_acute"):
        states.add("cad_acute")
    if patient.traits.get("hf_decompensated"):
        states.add("hf_decompensated")
    return states


def _baseline(rng: np.random.Generator, patient: SynthPatient) -> tuple[dict[str, float], dict[str, float]]:
    """Healthy part and disease part of each vital sign at presentation."""
    states = patient_states(patient)
    healthy: dict[str, float] = {}
    disease: dict[str, float] = {}
    for name, m in VITAL_MODELS.items():
        healthy[name] = m["mean"] + m["age_slope"] * (patient.age - 50) + m["sd"] * rng.standard_normal()
        shift = 0.0
        for state, (mean, sd) in m["effects"].items():
            z = rng.standard_normal()
            if state in states:
                shift += mean + sd * z
        disease[name] = shift
    if "sepsis" in states and rng.random() < SEPSIS_HYPOTHERMIA:
        disease["temperature"] = -abs(disease["temperature"])
    return healthy, disease


def draw_vitals(
    rng: np.random.Generator,
    patient: SynthPatient,
    time: dt.datetime,
    *,
    missing_rate: float = 0.05,
) -> tuple[list[VitalSigns], float]:
    """One to three sets of vital signs and the true presentation heart rate (/min)."""
    healthy, disease = _baseline(rng, patient)
    n_sets = int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2]))
    sets: list[VitalSigns] = []
    presentation_hr = float(np.clip(healthy["heart_rate"] + disease["heart_rate"], 35, 190))
    for k in range(n_sets):
        fields: dict[str, float | None] = {}
        recovery = 1.0 - 0.2 * k  # treatment pulls the abnormal part back over hours
        for name, m in VITAL_MODELS.items():
            value = healthy[name] + recovery * disease[name]
            if k:
                value += 0.5 * m["sd"] * rng.standard_normal()
            value = float(np.clip(value, m["lo"], m["hi"]))
            fields[name] = round(value, m["decimals"]) if m["decimals"] else float(round(value))
            if rng.random() < missing_rate:
                fields[name] = None
        if fields["sbp"] is not None and fields["dbp"] is not None and fields["dbp"] >= fields["sbp"] - 15:
            fields["dbp"] = float(fields["sbp"] - 15)
        sets.append(VitalSigns(time=time + dt.timedelta(minutes=5 + 180 * k), **fields))
    return sets, presentation_hr
