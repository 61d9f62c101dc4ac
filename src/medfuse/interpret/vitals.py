"""Vital-sign interpretation: per-reading flags, hypertension stage, SIRS and qSOFA.

Each reading of each `VitalSigns` set becomes an `Evidence` citing 'vitals[i]'
(temperature, heart rate, respiratory rate, SpO2, blood pressure with its ACC/AHA 2017
stage). The two sepsis screens combine the worst value of each sign over all sets of the
encounter, as SIRS is usually scored (worst value in the first day), plus the white cell
count from the labs for SIRS. A criterion whose input is missing is reported as missing,
and a screen that missing inputs could still tip either way reads 'indeterminate'
instead of 'negative'. qSOFA's altered mentation is never in the structured vitals, so it
is always reported as unavailable.

Thresholds:
- fever: temperature >= 38.0 Cel; hypothermia < 35.0; 35-36 'low' (a SIRS criterion).
- heart rate: tachycardia > 100 /min, bradycardia < 60 /min.
- respiratory rate: tachypnoea > 20 /min, bradypnoea < 12 /min.
- SpO2: hypoxaemia < 92 %.
- SIRS (ACCP/SCCM 1992): temperature > 38 or < 36; HR > 90; RR > 20; WBC > 12 or < 4
  (10*3/uL); positive with >= 2.
- qSOFA (Sepsis-3, 2016): RR >= 22; SBP <= 100; altered mentation; positive with >= 2.
- Blood pressure (ACC/AHA 2017): normal < 120/< 80; elevated 120-129/< 80; stage 1
  130-139 or 80-89; stage 2 >= 140 or >= 90; hypertensive crisis >= 180 or >= 120 (the
  higher of the systolic and diastolic categories wins). One reading is not a diagnosis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from medfuse.record.case import PatientCase, VitalSigns
from medfuse.record.evidence import Evidence

# ---------------------------------------------------------------- single readings


def temperature_reading(celsius: float) -> str:
    """'fever', 'hypothermia', 'low' or 'normal' for a body temperature in Cel.

    >>> temperature_reading(38.4), temperature_reading(37.0), temperature_reading(35.6), temperature_reading(34.2)
    ('fever', 'normal', 'low', 'hypothermia')
    """
    if celsius >= 38.0:
        return "fever"
    if celsius < 35.0:
        return "hypothermia"
    if celsius < 36.0:
        return "low"
    return "normal"


def _band_reading(value: float, low: float, high: float, *, below: str, above: str) -> str:
    # Rates are abnormal strictly outside their band: a limit itself is normal.
    if value > high:
        return above
    if value < low:
        return below
    return "normal"


def heart_rate_reading(bpm: float) -> str:
    """'tachycardia' (> 100 /min), 'bradycardia' (< 60 /min) or 'normal'.

    >>> heart_rate_reading(112), heart_rate_reading(72), heart_rate_reading(48)
    ('tachycardia', 'normal', 'bradycardia')
    """
    return _band_reading(bpm, 60, 100, below="bradycardia", above="tachycardia")


def resp_rate_reading(per_min: float) -> str:
    """'tachypnoea' (> 20 /min), 'bradypnoea' (< 12 /min) or 'normal'.

    >>> resp_rate_reading(24), resp_rate_reading(16), resp_rate_reading(8)
    ('tachypnoea', 'normal', 'bradypnoea')
    """
    return _band_reading(per_min, 12, 20, below="bradypnoea", above="tachypnoea")


def spo2_reading(percent: float) -> str:
    """'hypoxaemia' below 92 %, else 'normal'.

    >>> spo2_reading(88), spo2_reading(92), spo2_reading(98)
    ('hypoxaemia', 'normal', 'normal')
    """
    return "hypoxaemia" if percent < 92 else "normal"


BP_STAGES = ("normal", "elevated", "stage 1 hypertension", "stage 2 hypertension", "hypertensive crisis")


def hypertension_stage(sbp: float | None, dbp: float | None) -> str | None:
    """ACC/AHA 2017 blood-pressure category of one reading (None if both are missing).

    The higher of the systolic and the diastolic category wins; 'elevated' is defined by
    the systolic pressure alone (with a diastolic below 80).

    >>> hypertension_stage(118, 76)
    'normal'
    >>> hypertension_stage(124, 78)
    'elevated'
    >>> hypertension_stage(128, 84)
    'stage 1 hypertension'
    >>> hypertension_stage(152, 88)
    'stage 2 hypertension'
    >>> hypertension_stage(186, 100)
    'hypertensive crisis'
    >>> hypertension_stage(None, 92)
    'stage 2 hypertension'
    """
    if sbp is None and dbp is None:
        return None
    levels = []
    if sbp is not None:
        levels.append(4 if sbp >= 180 else 3 if sbp >= 140 else 2 if sbp >= 130 else 1 if sbp >= 120 else 0)
    if dbp is not None:
        levels.append(4 if dbp >= 120 else 3 if dbp >= 90 else 2 if dbp >= 80 else 0)
    return BP_STAGES[max(levels)]


# ---------------------------------------------------------------- screens


@dataclass(frozen=True)
class Screen:
    """The result of a criteria count: how many were met, and which could not be assessed."""

    name: str
    met: tuple[str, ...]
    not_met: tuple[str, ...]
    missing: tuple[str, ...]
    threshold: int = 2

    @property
    def score(self) -> int:
        return len(self.met)

    @property
    def reading(self) -> str:
        """'positive' (>= threshold met), 'negative' (cannot reach it even if every missing
        criterion were met) or 'indeterminate'."""
        if self.score >= self.threshold:
            return "positive"
        if self.score + len(self.missing) < self.threshold:
            return "negative"
        return "indeterminate"


def sirs_screen(temperature: float | None, heart_rate: float | None, resp_rate: float | None,
                wbc: float | None) -> Screen:
    """SIRS criteria: temperature > 38 or < 36 Cel, HR > 90, RR > 20, WBC > 12 or < 4 (10*3/uL).

    Values are the worst of the window (pass the extreme that meets a criterion if any).

    >>> s = sirs_screen(38.6, 104, 18, None)
    >>> s.reading, s.met, s.missing
    ('positive', ('temperature', 'heart_rate'), ('wbc',))
    >>> sirs_screen(37.0, 80, None, None).reading   # 0 met, 2 missing: could still reach 2
    'indeterminate'
    >>> sirs_screen(37.0, 80, 16, 7.5).reading
    'negative'
    """
    checks: list[tuple[str, float | None, Callable[[float], bool]]] = [
        ("temperature", temperature, lambda t: t > 38.0 or t < 36.0),
        ("heart_rate", heart_rate, lambda hr: hr > 90),
        ("resp_rate", resp_rate, lambda rr: rr > 20),
        ("wbc", wbc, lambda w: w > 12.0 or w < 4.0),
    ]
    return _screen("SIRS", checks)


def qsofa_screen(resp_rate: float | None, sbp: float | None, altered_mentation: bool | None = None) -> Screen:
    """qSOFA: RR >= 22, SBP <= 100, altered mentation (GCS < 15); positive with >= 2.

    >>> s = qsofa_screen(24, 96)
    >>> s.reading, s.score, s.missing
    ('positive', 2, ('altered_mentation',))
    >>> qsofa_screen(24, 120).reading      # 1 met, mentation unknown: could be 2
    'indeterminate'
    >>> qsofa_screen(18, 120).reading
    'negative'
    """
    checks: list[tuple[str, float | None, Callable[[float], bool]]] = [
        ("resp_rate", resp_rate, lambda rr: rr >= 22),
        ("sbp", sbp, lambda s: s <= 100),
        ("altered_mentation", None if altered_mentation is None else float(altered_mentation), lambda m: m > 0),
    ]
    return _screen("qSOFA", checks)


def _screen(name: str, checks: list[tuple[str, float | None, Callable[[float], bool]]]) -> Screen:
    met, not_met, missing = [], [], []
    for criterion, value, rule in checks:
        if value is None:
            missing.append(criterion)
        elif rule(value):
            met.append(criterion)
        else:
            not_met.append(criterion)
    return Screen(name=name, met=tuple(met), not_met=tuple(not_met), missing=tuple(missing))


# ---------------------------------------------------------------- the case reader

_READERS: dict[str, tuple[str, str, Callable[[float], str]]] = {
    # field: (evidence item, UCUM unit, reading function)
    "temperature": ("temperature", "Cel", temperature_reading),
    "heart_rate": ("heart_rate", "/min", heart_rate_reading),
    "resp_rate": ("resp_rate", "/min", resp_rate_reading),
    "spo2": ("spo2", "%", spo2_reading),
}


def _reading_evidence(vitals: VitalSigns, index: int) -> list[Evidence]:
    out: list[Evidence] = []
    source = f"vitals[{index}]"
    time = {"time": vitals.time.isoformat()} if vitals.time else {}
    for field, (item, unit, read) in _READERS.items():
        value = getattr(vitals, field)
        if value is None:
            continue
        reading = read(float(value))
        out.append(Evidence(modality="vitals", item=item, value=float(value), unit=unit, interpretation=reading,
                            abnormal=reading != "normal", source=source, detail=dict(time)))
    stage = hypertension_stage(vitals.sbp, vitals.dbp)
    if stage is not None:
        bp = f"{_num(vitals.sbp)}/{_num(vitals.dbp)}"
        out.append(Evidence(
            modality="vitals", item="blood_pressure", value=bp, unit="mm[Hg]", interpretation=stage,
            # Stage 1 and above is abnormal; 'elevated' is a risk category, not hypertension.
            abnormal=BP_STAGES.index(stage) >= 2, source=source,
            detail={"sbp": vitals.sbp, "dbp": vitals.dbp, "guideline": "ACC/AHA 2017",
                    "note": "one reading; hypertension is diagnosed on repeated measurements", **time},
        ))
    return out


def _num(x: float | None) -> str:
    return "?" if x is None else f"{x:g}"


def _extreme(case: PatientCase, field: str, worst: Callable[[float], float]) -> tuple[float | None, str | None]:
    """The value of `field` furthest from normal over all vitals sets, and its source."""
    best: tuple[float, float, str] | None = None
    for i, v in enumerate(case.vitals):
        x = getattr(v, field)
        if x is not None and (best is None or worst(x) > best[0]):
            best = (worst(x), float(x), f"vitals[{i}]")
    return (None, None) if best is None else (best[1], best[2])


def _wbc(case: PatientCase) -> tuple[float | None, str | None]:
    """The most deviant white-cell count (10*3/uL) among the case's labs, with its source."""
    from medfuse.knowledge.labs import lab_entries

    best: tuple[float, float, str] | None = None
    for i, (r, entry) in enumerate(zip(case.labs, lab_entries(case), strict=True)):
        if entry is None or entry.key != "wbc" or r.value is None or r.censored or not entry.knows_unit(r.unit):
            continue
        value = entry.to_canonical(r.value, r.unit)
        score = max(value - 12.0, 4.0 - value)  # distance beyond the SIRS limits
        if best is None or score > best[0]:
            best = (score, value, f"labs[{i}]")
    return (None, None) if best is None else (best[1], best[2])


def _screen_evidence(screen: Screen, values: dict[str, tuple[float | None, str | None]],
                     units: dict[str, str]) -> Evidence:
    used = {k: v for k, v in values.items() if v[0] is not None}
    sources = sorted({src for _, src in used.values() if src}, key=lambda s: (not s.startswith("vitals"), len(s), s))
    detail = {
        "met": list(screen.met),
        "not_met": list(screen.not_met),
        "missing": list(screen.missing),
        "threshold": screen.threshold,
        "values": {k: {"value": v, "unit": units[k], "source": s} for k, (v, s) in used.items()},
        "sources": sources,
    }
    if "altered_mentation" in screen.missing:
        detail["note"] = "mentation (GCS) is not recorded in the vital signs; criterion not assessed"
    return Evidence(modality="vitals", item=screen.name, value=float(screen.score), unit=None,
                    interpretation=screen.reading, abnormal=screen.reading == "positive",
                    source=", ".join(sources) if sources else "vitals", detail=detail)


def interpret_vitals(case: PatientCase) -> list[Evidence]:
    """Evidence from the case's vital signs: per-reading flags, BP stage, SIRS and qSOFA.

    Readings cite 'vitals[i]'. The SIRS and qSOFA items (`value` = criteria met) cite
    every set (and the WBC lab, 'labs[j]') they drew on, in `source` (comma-separated)
    and in `detail['sources']`; `detail` also lists met, unmet and missing criteria.
    A case without vital signs gives no evidence.
    """
    if not case.vitals:
        return []
    out: list[Evidence] = []
    for i, v in enumerate(case.vitals):
        out.extend(_reading_evidence(v, i))
    temperature = _extreme(case, "temperature", lambda t: max(t - 38.0, 36.0 - t))
    heart_rate = _extreme(case, "heart_rate", lambda hr: hr)
    resp_rate = _extreme(case, "resp_rate", lambda rr: rr)
    sbp = _extreme(case, "sbp", lambda s: -s)
    wbc = _wbc(case)
    sirs = sirs_screen(temperature[0], heart_rate[0], resp_rate[0], wbc[0])
    qsofa = qsofa_screen(resp_rate[0], sbp[0])
    out.append(_screen_evidence(sirs, {"temperature": temperature, "heart_rate": heart_rate,
                                       "resp_rate": resp_rate, "wbc": wbc},
                                {"temperature": "Cel", "heart_rate": "/min", "resp_rate": "/min", "wbc": "10*3/uL"}))
    out.append(_screen_evidence(qsofa, {"resp_rate": resp_rate, "sbp": sbp},
                                {"resp_rate": "/min", "sbp": "mm[Hg]"}))
    return out


__all__ = [
    "BP_STAGES",
    "Screen",
    "heart_rate_reading",
    "hypertension_stage",
    "interpret_vitals",
    "qsofa_screen",
    "resp_rate_reading",
    "sirs_screen",
    "spo2_reading",
    "temperature_reading",
]
