"""The synthetic multimodal cohort: one `PatientCase` per index, written as case folders.

`synth_case(seed, index, config)` draws a patient (diseases, demographics, smoking), then
each modality from its own random stream spawned from `SeedSequence([seed, index])`:
- the same (seed, index) always gives the same case, in any process and any order, so
  parallel workers write byte-identical cohorts;
- turning one modality off (its probability to 0) leaves every other modality unchanged.

Modalities agree with each other through the patient: the ECG runs at the presentation
heart rate of the vitals, peaked T waves follow the true potassium, and the image shows
the findings the diseases imply. Ground truth goes to `case.labels` (panel diagnoses with
ICD-10 codes, image findings with 0-999 boxes, the reference report); generator internals
(traits, cardiothoracic ratio, the ECG model's own truth) go to
`case.provenance["synthetic"]`, never into the model's inputs.

`synth_cohort(n, seed, out, config, workers)` writes `out/<case_id>/`, `index.parquet`
and `DATASHEET.md` (prevalences and co-occurrence measured on the cohort, modality
availability, the generating rules, intended use and limits). `out` must be new or empty
unless `overwrite`; the index lists every case folder in it. An interrupted run leaves the
cases finished in index order as a complete cohort and nothing else of its own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import multiprocessing as mp
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medfuse.config import YamlConfig, option
from medfuse.errors import ConfigError, InputError
from medfuse.knowledge.panel import load_panel
from medfuse.record.case import CXRImage, Demographics, Diagnosis, Labels, PatientCase
from medfuse.record.store import case_summary_row, iter_case_folders, read_case, write_case, write_index
from medfuse.synth import diseases as disease_model
from medfuse.synth.cxr import CXRRequest, render_cxr
from medfuse.synth.diseases import SynthPatient, draw_patient, icd10_code
from medfuse.synth.genomics import draw_variants
from medfuse.synth.labs import draw_physiology, report_labs
from medfuse.synth.notes import history_note, indication_note, present_symptoms
from medfuse.synth.report import write_report
from medfuse.synth.vitals import draw_vitals

GENERATOR_VERSION = 1
# Encounter dates are shifted into the future, as MIMIC does, so they can never be
# mistaken for real dates.
EPOCH = dt.datetime(2130, 1, 1)


@dataclass
class SynthConfig(YamlConfig):
    """Settings of the synthetic cohort; every field is a YAML key of `--config FILE`."""

    n: int = option(100, "Number of cases.")
    seed: int = option(0, "Master seed; the same seed gives a byte-identical cohort.")
    p_cxr: float = option(0.8, "Probability that a case has a chest radiograph.")
    p_ecg: float = option(0.85, "Probability that a case has a 12-lead ECG.")
    p_labs: float = option(0.9, "Probability that a case has laboratory results.")
    p_vitals: float = option(0.95, "Probability that a case has vital signs.")
    p_notes: float = option(0.85, "Probability that a case has a history note.")
    p_genomics_lung_cancer: float = option(0.6, "Probability that a lung-cancer case had a variant panel.")
    p_genomics_other: float = option(0.03, "Probability that any other case had a (germline) panel.")
    healthy_share: float = option(disease_model.HEALTHY_SHARE, "Share of patients drawn without any panel disease.")
    zh_share: float = option(0.2, "Share of cases whose notes, lab names and report are Chinese.")
    image_size: int = option(256, "Radiograph width and height in pixels (>= 224).")
    ecg_fs: float = option(500.0, "ECG sampling rate in Hz.")
    ecg_duration_s: float = option(10.0, "ECG length in seconds.")
    lab_missing_rate: float = option(0.05, "Probability that an ordered test has no result.")
    alt_unit_rate: float = option(0.3, "Rate of results reported in an alternative unit (0: never).")
    vitals_missing_rate: float = option(0.05, "Probability that one vital sign is missing from a set.")
    disease_rules: dict[str, dict[str, Any]] | None = option(None,
        "Replacement disease rules (see medfuse.synth.diseases.DISEASE_RULES); None: the defaults.")

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key."""
        self.require_ints("n")
        self.require_ints("seed", minimum=0)
        for f in dataclasses.fields(self):
            if f.name.startswith("p_") or f.name in ("healthy_share", "zh_share", "lab_missing_rate",
                                                     "alt_unit_rate", "vitals_missing_rate"):
                value = getattr(self, f.name)
                if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
                    raise ConfigError(f"{f.name}: must be a probability in [0, 1], got {value!r}")
        if not isinstance(self.image_size, int) or not 224 <= self.image_size <= 2048:
            raise ConfigError(f"image_size: must be an integer from 224 to 2048, got {self.image_size!r}")
        if not isinstance(self.ecg_fs, int | float) or not 100 <= self.ecg_fs <= 2000:
            raise ConfigError(f"ecg_fs: must be from 100 to 2000 Hz, got {self.ecg_fs!r}")
        if not isinstance(self.ecg_duration_s, int | float) or not 5 <= self.ecg_duration_s <= 60:
            raise ConfigError(f"ecg_duration_s: must be from 5 to 60 s, got {self.ecg_duration_s!r}")
        if self.disease_rules is not None:
            if not isinstance(self.disease_rules, dict):
                raise ConfigError("disease_rules: must be a mapping of disease -> rule")
            try:
                disease_model.validate_rules(self.rules())
            except (ValueError, TypeError) as e:
                raise ConfigError(str(e)) from None

    def rules(self) -> dict[str, dict[str, Any]]:
        """The disease rules in force: the defaults, with any given rule keys replaced."""
        merged = {k: dict(v) for k, v in disease_model.DISEASE_RULES.items()}
        for key, rule in (self.disease_rules or {}).items():
            if not isinstance(rule, dict):
                raise ConfigError(f"disease_rules.{key}: must be a mapping")
            merged.setdefault(key, {}).update(rule)
        return merged


# ---------------------------------------------------------------- one case

# Independent random streams per part of the case (the order is part of the format:
# changing it changes every cohort).
_STREAMS = ("patient", "presence", "cxr", "ecg", "labs", "vitals", "notes", "genomics", "labels")


def _streams(seed_or_rng: int | np.random.Generator, index: int) -> dict[str, np.random.Generator]:
    if isinstance(seed_or_rng, np.random.Generator):
        children = seed_or_rng.spawn(len(_STREAMS))
    else:
        ss = np.random.SeedSequence([int(seed_or_rng), int(index)])
        children = [np.random.default_rng(s) for s in ss.spawn(len(_STREAMS))]
    return dict(zip(_STREAMS, children, strict=True))


def case_id_for(index: int) -> str:
    """The case id of the index-th synthetic case ('synth-000042')."""
    return f"synth-{index:06d}"


def cxr_request(rng: np.random.Generator, patient: SynthPatient) -> CXRRequest:
    """Which findings the radiograph shows, given the diseases (see the datasheet rules)."""
    d = patient.diseases
    u = rng.random(12)
    req = CXRRequest()
    if "pneumonia" in d and u[0] < 0.85:
        req.consolidation = "right" if u[1] < 0.55 else "left"
    if "heart_failure" in d:
        req.cardiomegaly = bool(u[2] < 0.7)
        if u[3] < 0.45:
            req.effusion = ("right", "left") if u[4] < 0.5 else (("right",) if u[4] < 0.8 else ("left",))
        req.edema = bool(u[5] < (0.6 if patient.traits.get("hf_decompensated") else 0.1))
    if "acute_renal_failure" in d:
        req.edema = req.edema or bool(u[6] < 0.15)
        if not req.effusion and u[7] < 0.1:
            req.effusion = ("right", "left")
    if "lung_cancer" in d and u[8] < 0.9:
        req.nodule_cm = float(np.clip(rng.lognormal(math.log(2.6), 0.45), 0.8, 7.0))
        req.nodule_side = "right" if u[9] < 0.6 else "left"
        if not req.effusion and u[10] < 0.1:
            req.effusion = (req.nodule_side,)
    if req.nodule_cm is None and u[11] < 0.03:
        # An incidental benign granuloma: a nodule that is not cancer.
        req.nodule_cm = float(rng.uniform(0.8, 1.5))
        req.nodule_side = "right" if rng.random() < 0.5 else "left"
    if not req.cardiomegaly and not d & {"heart_failure"} and rng.random() < 0.04:
        req.cardiomegaly = True  # enlarged heart without heart failure (athlete, valve disease)
    return req


def ecg_conditions(rng: np.random.Generator, patient: SynthPatient, heart_rate: float, potassium: float) -> frozenset[str]:
    """ECG patterns implied by the patient's diseases, heart rate and true potassium."""
    d = patient.diseases
    u = rng.random(10)
    cond: set[str] = set()
    af = "atrial_fibrillation" in d
    if af:
        cond.add("atrial_fibrillation")
    elif heart_rate > 100:
        cond.add("sinus_tachycardia")
    elif heart_rate < 60:
        cond.add("sinus_bradycardia")
    if "coronary_artery_disease" in d:
        if patient.traits.get("cad_acute"):
            cond.add("st_elevation" if u[0] < 0.55 else "st_depression")
            if u[1] < 0.5:
                cond.add("t_inversion")
        else:
            if u[2] < 0.4:
                cond.add("q_waves")
            if u[3] < 0.3:
                cond.add("t_inversion")
            if u[4] < 0.1:
                cond.add("st_depression")
    if "sepsis" in d and u[5] < 0.1 and "st_elevation" not in cond:
        cond.add("st_depression")  # demand ischaemia: an ECG confounder of CAD
    if potassium >= 5.8 and u[6] < 0.85 or 5.5 <= potassium < 5.8 and u[6] < 0.4:
        cond.add("peaked_t")
    if ("hypertension" in d and u[7] < 0.3) or ("heart_failure" in d and u[8] < 0.45):
        cond.add("lvh")
    if not d and u[9] < 0.03:
        cond.add("t_inversion")  # a non-specific T-wave change in a healthy person
    if "peaked_t" in cond and "t_inversion" in cond:
        cond.discard("t_inversion")  # the generator cannot invert a peaked T
    return frozenset(cond)


def synth_case(seed_or_rng: int | np.random.Generator, index: int, config: SynthConfig | None = None) -> PatientCase:
    """The index-th case of the cohort with this seed (or from this generator)."""
    from medfuse.synth.ecg import synth_ecg

    config = config or SynthConfig()
    rng = _streams(seed_or_rng, index)
    patient = draw_patient(rng["patient"], healthy_share=config.healthy_share, rules=config.rules())
    pr = rng["presence"]
    presence_u = pr.random(7)
    when = EPOCH + dt.timedelta(days=int(pr.integers(0, 3650)), minutes=int(pr.integers(0, 24 * 60)))
    lang = "zh" if presence_u[0] < config.zh_share else "en"
    has = {
        "cxr": presence_u[1] < config.p_cxr,
        "ecg": presence_u[2] < config.p_ecg,
        "labs": presence_u[3] < config.p_labs,
        "vitals": presence_u[4] < config.p_vitals,
        "notes": presence_u[5] < config.p_notes,
        "genomics": presence_u[6] < (config.p_genomics_lung_cancer if patient.has("lung_cancer") else config.p_genomics_other),
    }

    # The patient's physiology exists whether or not it was measured.
    physiology = draw_physiology(rng["labs"], patient)
    vitals, heart_rate = draw_vitals(rng["vitals"], patient, when, missing_rate=config.vitals_missing_rate)

    case_id = case_id_for(index)
    synthetic: dict[str, Any] = {
        "generator_version": GENERATOR_VERSION,
        "seed": None if isinstance(seed_or_rng, np.random.Generator) else int(seed_or_rng),
        "index": int(index),
        "smoking": patient.smoking,
        "pack_years": patient.pack_years,
        "traits": patient.traits,
        "heart_rate": round(heart_rate, 1),
        "potassium": round(physiology["potassium"], 2),
    }
    case = PatientCase(case_id=case_id, patient_id=case_id, time=when,
                       demographics=Demographics(age=float(patient.age), sex=patient.sex))

    findings = []
    report = None
    if has["cxr"]:
        req = cxr_request(rng["cxr"], patient)
        drawing = render_cxr(rng["cxr"], req, size=config.image_size)
        case.cxr = [CXRImage(pixels=drawing.pixels, view="PA", source="synthetic")]
        findings = drawing.findings
        synthetic["ctr"] = round(drawing.ctr, 3)
        report = write_report(rng["labels"], findings, ctr=drawing.ctr, lang=lang)
    if has["ecg"]:
        conditions = ecg_conditions(rng["ecg"], patient, heart_rate, physiology["potassium"])
        ecg = synth_ecg(rng["ecg"], conditions=conditions, heart_rate=heart_rate, age=patient.age,
                        fs=config.ecg_fs, duration_s=config.ecg_duration_s)
        # The model's own truth is ground truth, not a machine statement a reader may use.
        synthetic["ecg"] = ecg.annotations.pop("synthetic", {})
        synthetic["ecg"]["conditions"] = sorted(conditions)
        case.ecg = ecg
    if has["labs"]:
        case.labs = report_labs(rng["labs"], physiology, when, lang=lang, missing_rate=config.lab_missing_rate,
                                alt_unit_rate=config.alt_unit_rate)
    if has["vitals"]:
        case.vitals = vitals
    if has["notes"]:
        symptoms = present_symptoms(rng["notes"], patient)
        notes = [history_note(rng["notes"], patient, lang, symptoms)]
        if rng["notes"].random() < 0.6:
            notes.append(indication_note(rng["notes"], patient, lang, symptoms))
        case.notes = notes
    if has["genomics"]:
        case.genomics = draw_variants(rng["genomics"], patient)

    panel = load_panel()
    diagnoses = [
        Diagnosis(name=d.name, icd10=icd10_code(rng["labels"], d.key, patient))
        for d in panel.diseases if d.key in patient.diseases
    ]
    case.labels = Labels(diagnoses=diagnoses, findings=findings, report=report,
                         source_codes=[f"ICD10:{x.icd10.replace('.', '')}" for x in diagnoses])
    case.provenance = {"importer": "synth", "synthetic": synthetic}
    return case


# ---------------------------------------------------------------- the cohort

def _case_stats(case: PatientCase) -> dict[str, Any]:
    """What the datasheet counts about one case (no bulk data)."""
    return {
        "row": case_summary_row(case, case.case_id),
        "diseases": [d.name for d in case.labels.diagnoses] if case.labels else [],
        "findings": [f.label for f in case.labels.findings] if case.labels else [],
        "modalities": case.modalities(),
        "lang": case.notes[0].lang if case.notes else None,
        "alt_units": sum(1 for r in case.labs if r.code and r.unit and r.unit != _canonical_unit(r.code)),
        "n_labs": len(case.labs),
        "ecg_conditions": case.provenance.get("synthetic", {}).get("ecg", {}).get("conditions", []),
        "driver": any(v.consequence in ("gene_fusion", "inframe_deletion") or v.hgvs in ("p.L858R", "p.G12C")
                      for v in case.genomics),
        "age": case.demographics.age,
        "sex": case.demographics.sex,
    }


def _canonical_unit(code: str) -> str | None:
    from medfuse.knowledge.labs import load_lab_catalogue

    try:
        return load_lab_catalogue().get(code).unit
    except KeyError:
        return None


def _generate_and_write(args: tuple[int, int, SynthConfig, str]) -> dict[str, Any]:
    seed, index, config, out = args
    case = synth_case(seed, index, config)
    write_case(case, Path(out) / case.case_id)
    return _case_stats(case)


class SynthInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped `synth_cohort`. The cases complete before it (indices 0 to
    `summary["n"] - 1`) are kept, indexed and described in DATASHEET.md, the same files
    `n=summary["n"]` writes; `summary` is None when no case was complete."""

    def __init__(self, summary: dict[str, Any] | None, requested: int):
        super().__init__()
        self.summary = summary
        self.requested = requested


def synth_cohort(
    n: int | None = None,
    seed: int | None = None,
    out: str | Path = "synth_cohort",
    config: SynthConfig | None = None,
    workers: int = 1,
    progress: bool = True,
    on_case: Callable[[int], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Generate `n` cases with `seed` into `out`, write the index and DATASHEET.md.

    `n` and `seed` override the config's. `out` must be new or empty unless `overwrite`;
    with it, case folders of the same ids are replaced and every other case folder stays
    (the index lists every case folder in `out`, the datasheet this run's cases).
    Returns a summary: counts, prevalences, modality availability, seconds and cases per
    second.

    Interrupted (Ctrl-C) or failed, it leaves a complete cohort of the cases finished in
    index order, exactly what `n=<that count>` writes, and removes the rest of what it
    wrote (temporary folders included); Ctrl-C then raises `SynthInterrupted`.
    """
    config = dataclasses.replace(config or SynthConfig(), **{k: v for k, v in (("n", n), ("seed", seed)) if v is not None})
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "output exists and is not a folder")
    if workers < 1:
        raise ConfigError(f"workers: must be at least 1, got {workers}")
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise InputError(out, "output folder is not empty (use --overwrite to add to it and replace cases of the same id)")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    earlier = {f.name for f in iter_case_folders(out)}  # case folders that are not this run's to remove
    start = time.perf_counter()
    stats: list[dict[str, Any]] = []
    try:
        _generate(config, out, workers, progress, on_case, stats)
    except BaseException as e:
        summary = _keep_complete_cases(out, config, stats, earlier, created)
        if isinstance(e, KeyboardInterrupt):
            raise SynthInterrupted(summary, config.n) from None
        raise
    seconds = time.perf_counter() - start
    summary = _write_index_and_datasheet(out, config, stats)
    summary["seconds"] = round(seconds, 3)
    summary["cases_per_s"] = round(config.n / seconds, 2) if seconds > 0 else None
    summary["workers"] = workers
    summary["out"] = str(out)
    return summary


def _generate(config: SynthConfig, out: Path, workers: int, progress: bool, on_case: Callable[[int], None] | None,
              stats: list[dict[str, Any]]) -> None:
    """Write the cases, appending each one's statistics to `stats` in index order."""
    tasks = [(config.seed, i, config, str(out)) for i in range(config.n)]
    bar = _progress(config.n, progress)
    try:
        if workers == 1:
            results: Iterable[dict[str, Any]] = map(_generate_and_write, tasks)
            for s in results:
                stats.append(s)
                bar.update(1)
                if on_case:
                    on_case(len(stats))
            return
        # fork keeps start-up cheap (no re-import per worker); results come back in
        # index order whatever the scheduling, and each case only depends on (seed, index).
        # Workers ignore Ctrl-C: the parent alone stops the run and cleans up after them.
        ctx = mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context()
        with ctx.Pool(processes=workers, initializer=_ignore_ctrl_c) as pool:
            for s in pool.imap(_generate_and_write, tasks, chunksize=max(1, min(16, config.n // (4 * workers)))):
                stats.append(s)
                bar.update(1)
                if on_case:
                    on_case(len(stats))
    finally:
        bar.close()


def _ignore_ctrl_c() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _keep_complete_cases(out: Path, config: SynthConfig, stats: list[dict[str, Any]], earlier: set[str],
                         created: bool) -> dict[str, Any] | None:
    """After an interrupted or failed run: keep the cases complete in index order (the
    first `len(stats)`), index and describe them; remove what else this run wrote.

    Workers run ahead of the cases handed back, and a worker stopped mid-write leaves
    its temporary folder (`write_case` writes `.<case_id>.<random>` and renames it), so
    both are removed here. Returns the summary of the kept cases (None if there are none).
    """
    import shutil

    ours = {case_id_for(i) for i in range(config.n)}
    for entry in out.iterdir():
        case_id = entry.name[1:].split(".", 1)[0] if entry.name.startswith(".") else None
        if case_id in ours and entry.is_dir():
            if ".old-" in entry.name and not (out / case_id).exists():
                entry.rename(out / case_id)  # stopped between write_case's two renames: the earlier case returns
            else:
                shutil.rmtree(entry, ignore_errors=True)
    for i in range(len(stats), config.n):
        folder = out / case_id_for(i)
        if folder.name not in earlier and folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
    if not stats:
        if created and not any(out.iterdir()):
            out.rmdir()
        elif earlier:
            write_index(out, _index_rows(out, {}))  # folders of the same id may have been replaced
        return None
    return _write_index_and_datasheet(out, dataclasses.replace(config, n=len(stats)), stats)


def _write_index_and_datasheet(out: Path, config: SynthConfig, stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Write index.parquet (every case folder in `out`) and DATASHEET.md (this run's
    cases, `stats`); the summary of those cases."""
    rows = _index_rows(out, {s["row"]["folder"]: s["row"] for s in stats})
    write_index(out, rows)
    summary = summarise(stats, config)
    summary["other_case_folders"] = len(rows) - len(stats)
    sheet = out / "DATASHEET.md"
    tmp = out / f".{sheet.name}.tmp"
    try:
        tmp.write_text(datasheet(summary, config), encoding="utf-8")
        tmp.replace(sheet)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return summary


def _index_rows(out: Path, known: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The index rows of every case folder in `out`: `known` rows (folder name -> row)
    for this run's cases, read from case.json for the others (imported cases, say)."""
    return [known.get(f.name) or case_summary_row(read_case(f, load_bulk=False), f.name)
            for f in iter_case_folders(out)]


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="case", desc="synth", disable=not enabled, file=sys.stderr)


def summarise(stats: Iterable[dict[str, Any]], config: SynthConfig) -> dict[str, Any]:
    """Prevalence, co-occurrence, modality and finding counts measured on the cohort."""
    stats = list(stats)
    n = len(stats)
    panel = load_panel()
    names = panel.names
    prevalence = Counter(d for s in stats for d in s["diseases"])
    n_diseases = Counter(len(s["diseases"]) for s in stats)
    co = {a: {b: sum(1 for s in stats if a in s["diseases"] and b in s["diseases"]) for b in names} for a in names}
    modality = Counter(m for s in stats for m in s["modalities"])
    findings = Counter(f for s in stats for f in s["findings"])
    langs = Counter(s["lang"] for s in stats if s["lang"])
    ecg_cond = Counter(c for s in stats for c in s["ecg_conditions"])
    labs_total = sum(s["n_labs"] for s in stats)
    ages = [s["age"] for s in stats if s["age"] is not None]
    return {
        "n": n,
        "seed": config.seed,
        "prevalence": {k: prevalence.get(k, 0) for k in names},
        "n_diseases": dict(sorted(n_diseases.items())),
        "cooccurrence": co,
        "modalities": {m: modality.get(m, 0) for m in ("cxr", "ecg", "labs", "vitals", "notes", "genomics")},
        "findings": dict(sorted(findings.items())),
        "languages": dict(sorted(langs.items())),
        "ecg_conditions": dict(sorted(ecg_cond.items())),
        "lab_results": labs_total,
        "lab_results_alt_unit": sum(s["alt_units"] for s in stats),
        "lung_cancer_with_driver": sum(1 for s in stats if s["driver"] and "lung cancer" in s["diseases"]),
        "age_median": float(np.median(ages)) if ages else None,
        "male_share": round(sum(1 for s in stats if s["sex"] == "M") / n, 3) if n else None,
    }


def _pct(k: int, n: int) -> str:
    return f"{k} ({100.0 * k / n:.1f} %)" if n else "0"


def datasheet(summary: dict[str, Any], config: SynthConfig) -> str:
    """The DATASHEET.md text: everything measured on the cohort plus the generating rules.

    Deterministic for a given cohort (no dates, timings or paths), so it is part of the
    byte-identical output.
    """
    from medfuse.synth import labs as lab_model
    from medfuse.synth import vitals as vital_model

    n = summary["n"]
    names = list(summary["prevalence"])
    lines = [
        "# Datasheet: medfuse synthetic multimodal cohort",
        "",
        f"Generated by `medfuse synth` (generator version {GENERATOR_VERSION}) with seed {summary['seed']}: "
        f"{n} cases, one encounter per synthetic patient. Every value is simulated; no real patient "
        "contributed data. The same seed and configuration reproduce this cohort byte for byte.",
        *([
            "",
            f"The folder also holds {summary['other_case_folders']} case folder(s) this run did not write "
            "(imported, or from an earlier run): index.parquet lists them, this datasheet does not count them.",
        ] if summary.get("other_case_folders") else []),
        "",
        "## Intended use",
        "",
        "- Developing, testing and demonstrating multimodal pipelines offline (import, interpretation, "
        "instruction data, training loops, evaluation harnesses) with known ground truth.",
        "- Unit and regression tests: the answer for every case is known and reproducible.",
        "- Not for estimating clinical performance, prevalence or any medical fact; not for clinical use.",
        "",
        "## Measured on this cohort",
        "",
        f"Median age {summary['age_median']:g} years; {100 * (summary['male_share'] or 0):.1f} % male.",
        "",
        "| disease | cases |",
        "|---|---|",
        *[f"| {k} | {_pct(v, n)} |" for k, v in summary["prevalence"].items()],
        "",
        "Number of panel diseases per case: "
        + ", ".join(f"{k}: {_pct(v, n)}" for k, v in summary["n_diseases"].items()) + ".",
        "",
        "Co-occurrence (cases with both; the diagonal is the prevalence count):",
        "",
        "| | " + " | ".join(_abbrev(x) for x in names) + " |",
        "|---" * (len(names) + 1) + "|",
        *[f"| {_abbrev(a)} | " + " | ".join(str(summary["cooccurrence"][a][b]) for b in names) + " |" for a in names],
        "",
        "Comorbidity lift, P(B | A) against P(B | not A), for the pairs the rules couple:",
        "",
        "| A | B | P(B given A) | P(B given not A) |",
        "|---|---|---|---|",
        *_lift_rows(summary),
        "",
        "Modality availability:",
        "",
        "| modality | cases |",
        "|---|---|",
        *[f"| {m} | {_pct(v, n)} |" for m, v in summary["modalities"].items()],
        "",
        "Image findings (cases with the finding; boxes on the 0-999 grid): "
        + (", ".join(f"{k} {v}" for k, v in summary["findings"].items()) or "none") + ".",
        "",
        "ECG patterns drawn: " + (", ".join(f"{k} {v}" for k, v in summary["ecg_conditions"].items()) or "none") + ".",
        "",
        f"Lab results: {summary['lab_results']}, of which {summary['lab_results_alt_unit']} in an alternative unit. "
        f"Note languages: " + (", ".join(f"{k} {v}" for k, v in summary["languages"].items()) or "none") + ". "
        f"Lung-cancer cases with an actionable driver variant: {summary['lung_cancer_with_driver']}.",
        "",
        "## Configuration",
        "",
        "| key | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in config.as_dict().items() if k != "disease_rules"],
        f"| disease_rules | {'custom (below)' if config.disease_rules else 'defaults (below)'} |",
        "",
        "## Generating rules",
        "",
        "### Diseases",
        "",
        f"A share of {config.healthy_share:g} of patients is drawn without any panel disease. For the others, "
        "diseases are drawn in the order below; each has a base probability (age 60, female, never-smoker, no "
        "earlier disease) and odds ratios per decade of age, for male sex, for ever-smoking and for each "
        "earlier disease present.",
        "",
        "| disease | base | OR/decade | OR male | OR smoker | OR given earlier disease |",
        "|---|---|---|---|---|---|",
        *[
            f"| {k} | {r['base']:g} | {r.get('age_or', 1):g} | {r.get('male_or', 1):g} | {r.get('smoker_or', 1):g} | "
            + (", ".join(f"{g} {v:g}" for g, v in (r.get("given") or {}).items()) or "-") + " |"
            for k, r in ((k, config.rules()[k]) for k in disease_model.DISEASE_ORDER)
        ],
        "",
        "Ages: a mixture of "
        + " and ".join(f"N({m:g}, {s:g}) with weight {w:g}" for w, m, s in disease_model.AGE_MIX)
        + f", clipped to 18-95; {100 * disease_model.MALE_SHARE:g} % male; ever-smokers "
        f"{disease_model.SMOKER_SHARE['M']:g} (men) / {disease_model.SMOKER_SHARE['F']:g} (women) with lognormal "
        f"pack-years (median {disease_model.PACK_YEARS[0]:g}). About a third of CAD cases are acute coronary "
        "syndromes (troponin rise, ST change); 60 % of heart-failure cases are decompensated.",
        "",
        "### Chest radiograph",
        "",
        "- pneumonia: consolidation in one lung (85 %); sepsis from another source shows nothing;",
        "- heart failure: cardiomegaly (cardiothoracic ratio 0.53-0.66; 70 %), pleural effusion (45 %), "
        "pulmonary edema (60 % if decompensated, else 10 %);",
        "- acute renal failure: pulmonary edema (15 %), bilateral effusion (10 %);",
        "- lung cancer: nodule (< 3 cm) or mass (>= 3 cm; 90 %), malignant effusion (10 %);",
        "- confounders: a benign granuloma nodule (3 % of other cases) and cardiomegaly without heart failure (4 %).",
        "- Every image varies in exposure, window, gamma, patient size, thickness, rotation (sd 2.5 deg), "
        "position, inspiration, blur and quantum noise.",
        "",
        "### ECG (12 leads, model in `medfuse.synth.ecg`)",
        "",
        "Heart rate = the presentation heart rate of the vital signs; AF -> atrial fibrillation; otherwise a "
        "rate > 100 -> sinus tachycardia, < 60 -> sinus bradycardia. Acute CAD: ST elevation (55 %) or "
        "depression, T inversion (50 %); chronic CAD: Q waves (40 %), T inversion (30 %), ST depression (10 %). "
        "True potassium >= 5.8 mmol/L -> peaked T (85 %; 40 % from 5.5). Hypertension -> LVH (30 %); heart "
        "failure -> LVH (45 %). Sepsis -> ST depression (10 %, demand ischaemia). Healthy -> non-specific T "
        "inversion (3 %). Noise (baseline wander, mains, EMG) at a random level.",
        "",
        "### Laboratory results",
        "",
        "Panels ordered independently of the diagnoses: "
        + "; ".join(f"{k} {p:g}" for k, (p, _) in lab_model.LAB_PANELS.items())
        + f". Each ordered test is missing with probability {config.lab_missing_rate:g}. Values: healthy "
        "distribution (log-normal or normal) plus per-patient shifts per disease (mean, sd; log scale for "
        "log-normal tests, where several shifts combine sub-additively: the largest plus 40 % of the others; "
        "values stop at the assay's upper reporting limit):",
        "",
        "| test | healthy | shifts |",
        "|---|---|---|",
        *[
            f"| {k} | {m['dist']} {m['median'] if not isinstance(m['median'], dict) else '/'.join(f'{s} {v:g}' for s, v in m['median'].items())}"
            f" (sd {m['sd']:g}) | " + ", ".join(f"{s} {a:+g}±{b:g}" for s, (a, b) in m.get("effects", {}).items())
            + ("; " + ", ".join(f"{s} >= {v:g}" for s, v in m["floor"].items()) if m.get("floor") else "") + " |"
            for k, m in lab_model.LAB_MODELS.items()
        ],
        "",
        "Alternative units (probability at alt_unit_rate 0.3): "
        + "; ".join(f"{k} " + ", ".join(f"{u} {p:g}" for u, p in us.items()) for k, us in lab_model.ALT_UNITS.items())
        + ". Reference ranges are the catalogue's, converted to the reported unit; flags follow them.",
        "",
        "### Vital signs",
        "",
        "| sign | healthy at 50 y | shifts |",
        "|---|---|---|",
        *[
            f"| {k} | {m['mean']:g} (sd {m['sd']:g}, {m['age_slope']:+g}/year) | "
            + ", ".join(f"{s} {a:+g}±{b:g}" for s, (a, b) in m["effects"].items()) + " |"
            for k, m in vital_model.VITAL_MODELS.items()
        ],
        "",
        f"One to three sets; later sets drift back toward normal. Each sign is missing with probability "
        f"{config.vitals_missing_rate:g}. {100 * vital_model.SEPSIS_HYPOTHERMIA:g} % of septic patients are hypothermic.",
        "",
        "### Notes and genomics",
        "",
        "History notes list symptoms drawn per disease, 1-3 negated symptoms, chronic history named (45 %) or "
        "implied by a drug (30 %), unrelated history, negated history and family history as distractors, and "
        "smoking with pack-years; 60 % of noted cases also have an imaging indication phrased from symptoms. "
        "Lung-cancer panels carry EGFR p.L858R / exon 19 deletion (more often in never-smokers), KRAS p.G12C "
        "(more often in smokers) or an EML4::ALK fusion at tumour-purity VAF; every panel reports 1-3 common "
        "benign variants.",
        "",
        "## Limits",
        "",
        "- Caricatures, not physiology: images are procedural drawings, ECGs a beat-template model; a model "
        "trained only here will not transfer to real data without adaptation.",
        "- Prevalences are those of an inpatient-like mix chosen for learnability, not of any population.",
        "- One encounter per patient; no time course beyond a few hours of vital signs.",
        "- Diseases interact only through the listed rules; real comorbidity is richer. Text is templated.",
        "- Demographic effects are limited to age, sex and smoking; no ethnicity, no socio-economic factors.",
        "",
    ]
    return "\n".join(lines)


_ABBREV = {
    "atrial fibrillation": "AF", "coronary artery disease": "CAD", "hypertension": "HTN", "acute renal failure": "ARF",
    "pneumonia": "PNA", "diabetes mellitus": "DM", "sepsis": "SEP", "heart failure": "HF", "lung cancer": "LC",
}


def _abbrev(name: str) -> str:
    return _ABBREV.get(name, name)


_COUPLED = (("heart failure", "atrial fibrillation"), ("pneumonia", "sepsis"), ("sepsis", "acute renal failure"),
            ("diabetes mellitus", "hypertension"), ("diabetes mellitus", "coronary artery disease"),
            ("hypertension", "coronary artery disease"))


def _lift_rows(summary: dict[str, Any]) -> list[str]:
    n = summary["n"]
    rows = []
    for a, b in _COUPLED:
        na = summary["prevalence"].get(a, 0)
        both = summary["cooccurrence"][a][b]
        nb = summary["prevalence"].get(b, 0)
        p_given = both / na if na else float("nan")
        p_not = (nb - both) / (n - na) if n - na else float("nan")
        rows.append(f"| {a} | {b} | {p_given:.2f} | {p_not:.2f} |")
    return rows
