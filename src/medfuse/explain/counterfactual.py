"""Counterfactuals: the smallest change of one (or two) labs or vital signs that flips the
disease head's decision for a disease.

Search (in the model's input space, all candidates of all items in one batched pass):
1. every observed lab and vital sign gets a grid of candidate values over its search
   range, evenly spaced in the model's normalised units (labs: log1p z-scores, so a grid
   over BNP spans 10 to 10,000 pg/mL evenly in log; vitals: z-scores);
2. per disease, the candidate that flips the decision with the smallest |change| in those
   units wins; bisection between it and the nearest non-flipping value narrows it down;
   the value is then rounded to two significant figures, away from the original (a
   clinician reads "80 pg/mL", not "79.37");
3. where no single item flips the decision, pairs of the three items that moved the
   probability most are searched on a grid.

Every proposal is then validated: the case is modified (the result the model reads gets
the new value, in the catalogue's unit) and re-run through `MedFuse.fuse`, the full
fusion path (`valid`: the decision flips there too), and each value is checked against
its plausible range (`plausible`).

Ranges. Labs: plausible is [0, plausible_max] of the lab catalogue (the largest value a
living patient can have); the search runs from the catalogue's critical low (0 where
there is none) to plausible_max. Vitals: `VITAL_RANGES` below, values seen in living
adults at presentation; they enclose every band `medfuse.interpret.vitals` reads (fever
>= 38 Cel, tachycardia > 100 /min, tachypnoea > 20 /min, hypoxaemia < 92 %, hypertensive
crisis >= 180/120 mm[Hg]); the search stays inside them and keeps systolic above
diastolic pressure. A value the case already has outside its range may only move into it.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medfuse.explain.features import CalibratedHead, CaseFeatures, Item, repeat_batch
from medfuse.explain.schema import Counterfactual, ItemChange
from medfuse.knowledge.labs import LabCatalogue, lab_entries, normalise_unit
from medfuse.model.assembly import MedFuse
from medfuse.model.inputs import FeatureStats
from medfuse.record.case import VITAL_FIELDS, PatientCase

# Plausible vital signs of a living adult at presentation (search range and plausibility).
VITAL_RANGES: dict[str, tuple[float, float]] = {
    "heart_rate": (30.0, 200.0), "sbp": (60.0, 240.0), "dbp": (30.0, 140.0),
    "temperature": (34.0, 42.0), "spo2": (70.0, 100.0), "resp_rate": (6.0, 45.0),
}
# `medfuse.model.inputs` clips normalised values here; candidates beyond it all look alike.
_Z_CLIP = 8.0


@dataclass
class _Axis:
    """One changeable item: its slot in the model input and its candidate values."""

    item: Item
    slot: tuple[str, int]  # ("labs", catalogue index) or ("vitals", field index)
    v0: float
    z0: float
    values: np.ndarray  # (n,) candidate values
    z: np.ndarray  # (n,) their normalised values
    plausible: tuple[float, float]
    search: tuple[float, float]
    mean: float
    std: float
    log: bool  # labs: z of log1p(value)

    def z_of(self, value: float | np.ndarray) -> np.ndarray:
        v = np.log1p(np.maximum(value, 0.0)) if self.log else np.asarray(value, dtype=np.float64)
        return np.clip((v - self.mean) / self.std, -_Z_CLIP, _Z_CLIP)

    def value_of(self, z: float) -> float:
        v = self.mean + z * self.std
        return float(np.clip(np.expm1(v) if self.log else v, *self.search))


def lab_plausible_range(catalogue: LabCatalogue, key: str) -> tuple[float, float]:
    """[0, plausible_max] of a catalogue entry (inf where the catalogue gives no maximum)."""
    entry = catalogue.get(key)
    return 0.0, float(entry.plausible_max) if entry.plausible_max is not None else math.inf


def _axes(features: CaseFeatures, stats: FeatureStats, catalogue: LabCatalogue, n_grid: int) -> list[_Axis]:
    axes = []
    lab_slot = {k: i for i, k in enumerate(features.lab_keys)}
    vitals = {it.key: it.value for it in features.items if it.modality == "vitals" and it.value is not None}
    for it in features.items:
        if it.modality == "labs" and it.value is not None:
            i = lab_slot[it.key]
            entry = catalogue.get(it.key)
            plausible = lab_plausible_range(catalogue, it.key)
            low = entry.critical[0] if entry.critical[0] is not None else 0.0
            high = plausible[1] if math.isfinite(plausible[1]) else max(it.value, 1.0) * 100
            axis = _Axis(it, ("labs", i), it.value, 0.0, np.empty(0), np.empty(0), plausible, (low, high),
                         stats.lab_mean[i], stats.lab_std[i], True)
        elif it.modality == "vitals" and it.value is not None:
            j = VITAL_FIELDS.index(it.key)
            lo, hi = VITAL_RANGES[it.key]
            # Candidates stay inside the plausible range (a reading outside it may only move
            # into it), and a blood pressure keeps systolic above diastolic.
            s_lo, s_hi = lo, hi
            if it.key == "sbp" and "dbp" in vitals:
                s_lo = max(lo, vitals["dbp"] + 1)
            if it.key == "dbp" and "sbp" in vitals:
                s_hi = min(hi, vitals["sbp"] - 1)
            if s_lo >= s_hi:
                continue
            axis = _Axis(it, ("vitals", j), it.value, 0.0, np.empty(0), np.empty(0), (lo, hi), (s_lo, s_hi),
                         stats.vital_mean[j], stats.vital_std[j], False)
        else:
            continue
        axis.z0 = float(axis.z_of(axis.v0))
        z_lo, z_hi = axis.z_of(axis.search[0]), axis.z_of(axis.search[1])
        zs = np.linspace(z_lo, z_hi, n_grid)
        zs = zs[np.abs(zs - axis.z0) > 1e-6]  # the unchanged value is no candidate
        axis.values = np.array([axis.value_of(z) for z in zs])
        axis.z = axis.z_of(axis.values)
        axes.append(axis)
    return axes


def _rows(features: CaseFeatures, settings: Sequence[Sequence[tuple[_Axis, float]]]) -> dict[str, torch.Tensor]:
    """One batch row per setting: the case with each (axis, z) of the setting applied."""
    batch = repeat_batch(features.batch, len(settings))
    for r, setting in enumerate(settings):
        for axis, z in setting:
            name, i = axis.slot
            batch[name][r, i, 0] = float(z)
    return batch


def _flips(p: np.ndarray, threshold: float, goal: str) -> np.ndarray:
    return p < threshold if goal == "absent" else p >= threshold


@dataclass
class Proposal:
    """A counterfactual found in the model's input space, before validation."""

    disease: int
    goal: str
    changes: list[tuple[_Axis, float]]  # (axis, proposed value)

    @property
    def distance(self) -> float:
        return float(sum(abs(float(a.z_of(v)) - a.z0) for a, v in self.changes))


def search(head: CalibratedHead, features: CaseFeatures, stats: FeatureStats, catalogue: LabCatalogue,
           targets: Sequence[int], thresholds: np.ndarray, goals: Sequence[str], *, n_grid: int = 12,
           bisect_rounds: int = 2, pair_items: int = 3, pair_grid: int = 5) -> dict[int, Proposal]:
    """Per target disease, the smallest one- or two-item change that flips its decision (None where none does)."""
    axes = _axes(features, stats, catalogue, n_grid)
    if not axes or not targets:
        return {}
    grid = [(a, float(z)) for a in axes for z in a.z]
    p = head.probabilities(_rows(features, [[g] for g in grid]))  # (n_grid_rows, D)
    base = head.probabilities(features.batch)[0]  # (D,)
    found: dict[int, tuple[_Axis, float, float]] = {}  # disease -> (axis, z flip, z no flip)
    for d, goal in zip(targets, goals, strict=True):
        ok = _flips(p[:, d], thresholds[d], goal)
        if not ok.any():
            continue
        dist = np.array([abs(z - a.z0) for a, z in grid])
        best = int(np.argmin(np.where(ok, dist, np.inf)))
        axis, z_flip = grid[best]
        # The nearest grid value on the same side that does not flip (or the original).
        inner = [z for (a, z), f in zip(grid, ok, strict=True)
                 if a is axis and not f and (z - axis.z0) * (z_flip - axis.z0) > 0 and abs(z - axis.z0) < abs(z_flip - axis.z0)]
        z_in = max(inner, key=lambda z: abs(z - axis.z0)) if inner else axis.z0
        found[d] = (axis, z_flip, z_in)
    for _ in range(bisect_rounds):
        if not found:
            break
        settings, owners = [], []
        for d, (axis, z_out, z_in) in found.items():
            for z in np.linspace(z_in, z_out, 5)[1:-1]:
                settings.append([(axis, float(z))])
                owners.append(d)
        pp = head.probabilities(_rows(features, settings))
        for d in list(found):
            axis, z_out, z_in = found[d]
            goal = goals[list(targets).index(d)]
            zs = [s[0][1] for s, o in zip(settings, owners, strict=True) if o == d]
            flips = [bool(_flips(np.array(pp[i, d]), thresholds[d], goal)) for i, o in enumerate(owners) if o == d]
            for z, f in zip(zs, flips, strict=True):  # ordered from z_in towards z_out
                if f:
                    z_out = z
                    break
                z_in = z
            found[d] = (axis, z_out, z_in)
    out = {d: Proposal(d, goals[list(targets).index(d)], [(axis, _round_away(axis, axis.value_of(z_out)))])
           for d, (axis, z_out, _) in found.items()}
    missing = [(d, g) for d, g in zip(targets, goals, strict=True) if d not in out]
    if missing and len(axes) > 1:
        out.update(_pairs(head, features, grid, p, base, missing, thresholds, pair_items, pair_grid))
    return out


def _pairs(head: CalibratedHead, features: CaseFeatures, grid: list[tuple[_Axis, float]], p: np.ndarray,
           base: np.ndarray, missing: Sequence[tuple[int, str]], thresholds: np.ndarray, n_items: int,
           n_values: int) -> dict[int, Proposal]:
    """Two-item changes for the diseases no single item flips, on a grid of the most helpful items."""
    settings, owners = [], []
    for d, goal in missing:
        gain = (base[d] - p[:, d]) if goal == "absent" else (p[:, d] - base[d])  # (n_grid_rows,) towards the goal
        best_of: dict[int, int] = {}
        for r, (a, _) in enumerate(grid):
            if id(a) not in best_of or gain[r] > gain[best_of[id(a)]]:
                best_of[id(a)] = r
        ranked = sorted(best_of.values(), key=lambda r: -gain[r])[:n_items]
        sides = []
        for r in ranked:
            axis, z_best = grid[r]
            same_side = sorted((z for a, z in grid if a is axis and (z - axis.z0) * (z_best - axis.z0) > 0),
                               key=lambda z: abs(z - axis.z0))
            sides.append((axis, same_side[:n_values]))
        for (a1, zs1), (a2, zs2) in itertools.combinations(sides, 2):
            for z1, z2 in itertools.product(zs1, zs2):
                if not _bp_consistent([(a1, z1), (a2, z2)]):
                    continue
                settings.append([(a1, z1), (a2, z2)])
                owners.append(d)
    if not settings:
        return {}
    pp = head.probabilities(_rows(features, settings))
    out: dict[int, Proposal] = {}
    for d, goal in missing:
        best, best_dist = None, math.inf
        for i, (s, o) in enumerate(zip(settings, owners, strict=True)):
            if o != d or not _flips(np.array(pp[i, d]), thresholds[d], goal):
                continue
            dist = sum(abs(z - a.z0) for a, z in s)
            if dist < best_dist:
                best, best_dist = s, dist
        if best is not None:
            out[d] = Proposal(d, goal, [(a, _round_away(a, a.value_of(z))) for a, z in best])
    return out


def _bp_consistent(setting: Sequence[tuple[_Axis, float]]) -> bool:
    """False when a two-item setting changes both blood pressures to systolic <= diastolic."""
    bp = {a.item.key: a.value_of(z) for a, z in setting if a.item.key in ("sbp", "dbp")}
    return len(bp) < 2 or bp["sbp"] > bp["dbp"]


def _round_away(axis: _Axis, value: float) -> float:
    """`value` at two significant figures (vitals: whole units, temperature 0.1), rounded away
    from the original so the rounding never undoes the change."""
    if axis.item.modality == "vitals":
        step = 0.1 if axis.item.key == "temperature" else 1.0
    elif value == 0:
        return 0.0
    else:
        step = 10.0 ** (math.floor(math.log10(abs(value))) - 1)
    r = (math.ceil(value / step - 1e-9) if value > axis.v0 else math.floor(value / step + 1e-9)) * step
    r = float(np.clip(r, *axis.search))
    return float(f"{r:.10g}")


# --------------------------------------------------------------------------- validation
def apply_changes(case: PatientCase, changes: Sequence[tuple[Item, float]], catalogue: LabCatalogue) -> PatientCase:
    """A copy of `case` where each item's reading THE MODEL READS has the new value.

    Labs: the earliest result mapped to the key (the one `medfuse.model.inputs.lab_values`
    reads) gets the value in the catalogue's unit, with its flag cleared. Vitals: the
    earliest set that has the sign.
    """
    labs, vitals = list(case.labs), list(case.vitals)
    entries = lab_entries(case, catalogue) if any(it.modality == "labs" for it, _ in changes) else []
    for it, value in changes:
        if it.modality == "labs":
            i = _read_lab_index(case, entries, it.key)
            entry = catalogue.get(it.key)
            old = labs[i]
            same_unit = (normalise_unit(old.unit) or entry.unit) == entry.unit
            labs[i] = old.model_copy(update={
                "value": float(value), "unit": entry.unit, "flag": None, "censored": None, "value_text": None,
                "source_value": None, "source_unit": None,
                "ref_low": old.ref_low if same_unit else None, "ref_high": old.ref_high if same_unit else None})
        elif it.modality == "vitals":
            order = sorted(range(len(vitals)), key=lambda i: (vitals[i].time is None, vitals[i].time or dt.datetime.min))
            j = next(i for i in order if getattr(vitals[i], it.key) is not None)
            vitals[j] = vitals[j].model_copy(update={it.key: float(value)})
    return case.model_copy(update={"labs": labs, "vitals": vitals})


def _read_lab_index(case: PatientCase, entries: list, key: str) -> int:
    # The order `lab_values` reads results in: by time (untimed last), then as listed.
    order = sorted(range(len(case.labs)), key=lambda i: (case.labs[i].time is None, case.labs[i].time or dt.datetime.min, i))
    for i in order:
        r, e = case.labs[i], entries[i]
        if e is not None and e.key == key and r.value is not None and math.isfinite(r.value) \
                and e.to_canonical(r.value, r.unit) is not None:
            return i
    raise KeyError(key)


def format_value(v: float) -> str:
    """Three significant figures without an exponent: 0.042, 1.2, 38.5, 900, 12000."""
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    digits = max(0, 2 - math.floor(math.log10(abs(v))))
    s = f"{v:.{digits}f}"
    return s.rstrip("0").rstrip(".") if "." in s else s


def validate(model: MedFuse, case: PatientCase, proposals: Sequence[Proposal], probabilities: np.ndarray,
             catalogue: LabCatalogue) -> list[Counterfactual]:
    """Re-run every proposal's modified case through `MedFuse.fuse` and phrase it."""
    if not proposals:
        return []
    modified = [apply_changes(case, [(a.item, v) for a, v in pr.changes], catalogue) for pr in proposals]
    fused = model.fuse(modified)
    out = []
    for k, pr in enumerate(proposals):
        d = pr.disease
        disease = model.panel.diseases[d]
        threshold = float(fused.thresholds[d])
        after = float(fused.probabilities[k, d])
        before = float(probabilities[d])
        valid = bool(_flips(np.array(after), threshold, pr.goal))
        changes = [ItemChange(modality=a.item.modality, item=a.item.key, label=a.item.label,
                              unit=a.item.unit or "", original=a.v0, proposed=v,
                              plausible_range=a.plausible) for a, v in pr.changes]
        plausible = all(c.plausible_range[0] <= c.proposed <= c.plausible_range[1] for c in changes)
        if any(c.item == "sbp" for c in changes) or any(c.item == "dbp" for c in changes):
            plausible = plausible and _bp_ordered(modified[k])
        said = " and ".join(f"{c.label} {format_value(c.proposed)} {_unit(c.unit)}instead of {format_value(c.original)}"
                            for c in changes)
        text = f"{said}: P({disease.name}) {before:.2f} -> {after:.2f}"
        if not valid:
            text += " (the decision did not flip when re-run)"
        out.append(Counterfactual(disease=disease.key, name=disease.name, goal=pr.goal, changes=changes,
                                  probability_before=round(before, 4), probability_after=round(after, 4),
                                  threshold=round(threshold, 4), valid=valid, plausible=plausible,
                                  distance=round(pr.distance, 4), text=text))
    return out


def _unit(unit: str) -> str:
    shown = {"Cel": "°C", "mm[Hg]": "mmHg", "10*3/uL": "x10^3/uL", "{INR}": ""}.get(unit, unit)
    return f"{shown} " if shown else ""


def _bp_ordered(case: PatientCase) -> bool:
    v = case.first_vitals()
    return v is None or v.sbp is None or v.dbp is None or v.sbp > v.dbp

