"""Multi-label diagnosis on a medfuse cohort (a folder of case folders + index.parquet).

Gold is `case.labels.disease_names()` (panel diseases); cases without labels are skipped.
Text models see a plain-text rendering of the case's inputs (demographics, vitals, labs
with units, reference ranges and flags, ECG recording facts, notes, variants) built
here, never the labels; image-capable models also get the case's chest X-rays, and a
medfuse checkpoint reads the case folder itself (`metadata["case_dir"]`).

Splits are the cohort's patient-level splits (`medfuse.record.store.patient_split`).
"""

from __future__ import annotations

from pathlib import Path

from medfuse.errors import InputError
from medfuse.eval.benchmarks.base import Benchmark, register
from medfuse.knowledge.panel import load_panel
from medfuse.record.case import PatientCase
from medfuse.record.store import CASE_FILE, iter_case_folders, patient_split, read_case, read_index

DIAGNOSIS_QUESTION = "Which of the candidate diseases does this patient have?"


def case_to_text(case: PatientCase) -> str:
    """The case's inputs as short lines of text (no labels, no identifiers)."""
    lines: list[str] = []
    d = case.demographics
    if d.age is not None or d.sex:
        sex = {"F": "female", "M": "male", "O": "other sex", "U": None}.get(d.sex or "U")
        lines.append("Patient: " + ", ".join(x for x in (f"{d.age:g} years" if d.age is not None else None, sex) if x))
    v = case.first_vitals()
    if v is not None:
        parts = []
        for label, value, unit in (
            ("heart rate", v.heart_rate, "/min"), ("systolic BP", v.sbp, "mm[Hg]"), ("diastolic BP", v.dbp, "mm[Hg]"),
            ("temperature", v.temperature, "Cel"), ("SpO2", v.spo2, "%"), ("respiratory rate", v.resp_rate, "/min"),
        ):
            if value is not None:
                parts.append(f"{label} {value:g} {unit}")
        if parts:
            lines.append("Vital signs: " + "; ".join(parts))
    if case.labs:
        lines.append("Laboratory results:")
        for r in case.labs:
            if r.value is not None:
                value = f"{r.censored or ''}{r.value:g}"
            else:
                value = r.value_text or "?"
            rng = ""
            if r.ref_low is not None or r.ref_high is not None:
                lo = "" if r.ref_low is None else f"{r.ref_low:g}"
                hi = "" if r.ref_high is None else f"{r.ref_high:g}"
                rng = f" (reference {lo}-{hi})"
            flag = f" [{r.flag}]" if r.flag and r.flag != "N" else ""
            lines.append(f"- {r.name}: {value} {r.unit or ''}{rng}{flag}".replace("  ", " "))
    if case.ecg is not None:
        e = case.ecg
        dur = f", {e.duration_s:.1f} s" if e.duration_s is not None else ""
        lines.append(f"ECG: {len(e.leads)} leads ({', '.join(e.leads)}), {e.fs:g} Hz{dur}")
        for key, value in sorted(e.annotations.items()):
            if isinstance(value, (str, int, float)):
                lines.append(f"- ECG {key}: {value}")
    if case.cxr:
        lines.append(f"Chest X-ray: {len(case.cxr)} image(s) attached")
    for n in case.notes:
        lines.append(f"Note ({n.type}): {' '.join(n.text.split())}")
    for g in case.genomics:
        vaf = f", VAF {g.vaf:.2f}" if g.vaf is not None else ""
        lines.append(f"Variant: {g.gene} {g.hgvs or ''}{vaf}".rstrip())
    return "\n".join(lines) if lines else "No clinical data recorded."


def cohort_folders(path: Path, split: str | None) -> list[Path]:
    """Case folders of a cohort (or the one case folder given), restricted to a split."""
    if (path / CASE_FILE).is_file():
        return [path]
    if not path.is_dir():
        raise InputError(path, "not a cohort folder")
    folders = list(iter_case_folders(path))
    if not folders:
        raise InputError(path, "no case folders (case.json) in this cohort")
    if split in (None, "all"):
        return folders
    index = patient_split(read_index(path))
    keep = set(index.loc[index["split"] == split, "folder"])
    return [f for f in folders if f.name in keep]


@register
class MedfuseCohortDiagnosis(Benchmark):
    name = "medfuse-cohort"
    task_type = "diagnosis"
    description = "Multi-label diagnosis on a medfuse cohort (gold = labelled panel diseases)"
    default_split = "test"
    splits = ("train", "val", "test")

    def _load(self, path: Path, split: str | None, lang: str | None):
        panel = load_panel()
        for folder in cohort_folders(path, split):
            case = read_case(folder, load_bulk=False)
            if case.labels is None:
                self.skip("case has no labels")
                continue
            images = [str((folder / img.file).resolve()) for img in case.cxr if img.file and (folder / img.file).is_file()]
            note_langs = {n.lang for n in case.notes}
            yield self.item(
                id=case.case_id,
                answer_type="label_set",
                question=DIAGNOSIS_QUESTION,
                context=case_to_text(case),
                candidates=panel.names,
                images=images,
                gold=case.labels.disease_names(),
                lang="zh" if note_langs == {"zh"} else "en",
                metadata={"case_dir": str(folder.resolve()), "modalities": case.modalities()},
            )
