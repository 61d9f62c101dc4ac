"""Instruction data from a cohort: `build_tasks(cohort) -> datasets.Dataset`, `save_tasks`.

One row per sample, with the columns of `COLUMNS` (a contract the trainer and the rewards
depend on):

- ``id`` ``f"{case_id}:{task}:{lang}:{k}"``, unique; ``case_id``; ``case_dir`` (the case
  folder relative to the cohort root, which is recorded in the dataset's metadata);
  ``task`` (one of `TASKS`); ``lang`` (``en`` | ``zh``);
- ``messages``: system, user, assistant (``{"role", "content"}``); the assistant message is
  the target;
- ``answer_diseases``: panel keys of the case's gold diagnoses, on every row of the case
  (the Jaccard reward reads them);
- ``gold_boxes``: JSON list of ``{"label", "box": [x1, y1, x2, y2]}`` (0-999 grid): the
  boxes this row's target states (``"[]"`` when it states none);
- ``source``: ``"medfuse"`` (``"medtvt-qa"`` for rows read by `read_medtvt_qa`).

What the targets say comes from the case only: the interpreters' `Evidence` (cited in the
canonical 'item value unit (reading) [source]' form), the labelled findings and boxes, the
labelled report and the gold diagnoses. A target never states a number that is not one of
those (the templates hold no digits). Per-modality questions come in two families: asked
from the fused tokens alone (qualitative answers, no values) or with the modality's
measurements listed in the prompt (answers cite the values), so the model never learns to
state a value its input does not show.

The diagnosis task uses the exact prompt of `medfuse diagnose` (`build_prompt`) for most
samples, so training matches inference. Its target is the chain of evidence inside
``<think>`` and the answer set, in the strict format (nothing after ``</answer>``). Image
findings are localised by the model's finding head, not by the language model: the
prompt lists them as ``<ref>label</ref><box>[[...]]</box>`` (the labelled ones here, the
head's at inference) and the target names them. The region tasks train the language
model on boxes.

Every sample's phrasing is drawn by a `random.Random` seeded with
``(seed, case_id, task, lang, k)``, so a sample does not depend on which other cases or
tasks are built, and the same seed gives identical rows.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medfuse.errors import ConfigError, InputError
from medfuse.formats import format_answer, format_box, has_cjk
from medfuse.knowledge.evidence_support import finding_supports, supported_diseases
from medfuse.knowledge.panel import Panel, load_panel
from medfuse.record.case import MODALITIES, Finding, PatientCase
from medfuse.record.evidence import Evidence
from medfuse.tasks import templates as T

if TYPE_CHECKING:
    from datasets import Dataset, Features

__all__ = [
    "COLUMNS",
    "LANGS",
    "META_FILE",
    "TASKS",
    "build_case_samples",
    "build_tasks",
    "check_choices",
    "check_out_dir",
    "gold_disease_keys",
    "load_tasks",
    "rows_to_dataset",
    "save_tasks",
    "supported_diseases",
    "task_features",
    "tasks_metadata",
]

TASKS: tuple[str, ...] = ("ecg_qa", "labs_qa", "vitals_qa", "cxr_qa", "diagnosis", "region_to_text",
                          "text_to_region", "grounded_report", "report")
LANGS: tuple[str, ...] = ("en", "zh")
COLUMNS: tuple[str, ...] = ("id", "case_id", "case_dir", "task", "lang", "messages", "answer_diseases",
                            "gold_boxes", "source")
SOURCE = "medfuse"
# Written beside the dataset files by `save_tasks` (cohort root, seed, languages, counts).
META_FILE = "medfuse_tasks.json"
META_FORMAT = "medfuse-tasks"


def task_features() -> Features:
    """The `datasets.Features` of a task dataset (the column contract, with types)."""
    from datasets import Features, Value

    return Features({
        "id": Value("string"),
        "case_id": Value("string"),
        "case_dir": Value("string"),
        "task": Value("string"),
        "lang": Value("string"),
        "messages": [{"role": Value("string"), "content": Value("string")}],
        "answer_diseases": [Value("string")],
        "gold_boxes": Value("string"),
        "source": Value("string"),
    })


# ---------------------------------------------------------------------------- evidence -> diseases
# Which evidence supports which disease is domain knowledge: `medfuse.knowledge.evidence_support`.


def gold_disease_keys(case: PatientCase, panel: Panel) -> list[str]:
    """Panel keys of the case's labelled diagnoses, in panel order ([] without labels).

    A diagnosis is matched by name (synonyms and Chinese names included), else by its
    ICD-10 / ICD-9 code, so a cohort labelled against another panel still maps.
    """
    if case.labels is None:
        return []
    keys: set[str] = set()
    for d in case.labels.diagnoses:
        disease = panel.lookup(d.name) if d.in_panel else None
        if disease is None and d.icd10:
            disease = panel.match_icd(d.icd10, 10)
        if disease is None and d.icd9:
            disease = panel.match_icd(d.icd9, 9)
        if disease is not None:
            keys.add(disease.key)
    return [k for k in panel.keys if k in keys]


# ---------------------------------------------------------------------------- describing evidence

def _value_text(ev: Evidence) -> str:
    """The value part of `Evidence.cite()` ('4.18 mg/dL (high)'), formatted the same way."""
    cite = ev.cite()
    body = cite.removesuffix(f" [{ev.source}]")
    return body[len(ev.item):].strip()


def _short_cite(ev: Evidence) -> str:
    """`Evidence.cite()` without its source: 'creatinine 4.18 mg/dL (high)'."""
    cite = ev.cite()
    return cite.removesuffix(f" [{ev.source}]")


def _lab_name(item: str, lang: str) -> str:
    from medfuse.knowledge.labs import load_lab_catalogue

    try:
        entry = load_lab_catalogue().get(item)
    except KeyError:
        return item
    return (entry.zh or entry.name) if lang == "zh" else entry.name


def _item_name(ev: Evidence, lang: str) -> str:
    if ev.modality == "labs":
        return _lab_name(ev.item, lang)
    if ev.modality == "cxr":
        return T.finding_name(ev.item, lang)
    return _name_in(T.ITEM_NAMES.get(ev.item, (ev.item, ev.item)), lang)


def _lead_finding(ev: Evidence) -> tuple[str, str] | None:
    """(finding, lead) for ECG items named '<finding> <lead>', else None."""
    if ev.modality != "ecg":
        return None
    for label in T.ECG_LEAD_FINDINGS:
        if ev.item.startswith(label + " "):
            return label, ev.item[len(label) + 1:]
    return None


def _reading(ev: Evidence, lang: str) -> str:
    """A qualitative, number-free description: 'Creatinine (high)' / '肌酐（偏高）'."""
    if ev.modality == "cxr":
        return _item_name(ev, lang)
    if ev.modality == "genomics":
        return _genomics_reading(ev, lang)
    name, word = _item_name(ev, lang), T.interpretation(ev.interpretation, lang)
    return f"{name} ({word})" if lang == "en" else f"{name}（{word}）"


def _name_in(names: tuple[str, str], lang: str) -> str:
    return names[1] if lang == "zh" else names[0]


def _group_readings(items: Sequence[Evidence], lang: str) -> list[str]:
    """Number-free descriptions without repeats, ECG lead findings grouped where the first
    of them stood: 'ST elevation (I, aVL, V3)' / 'ST段抬高（I、aVL、V3）'."""
    sep = T.ANSWER[lang]["list_sep"]
    entries: list[str | tuple[str]] = []  # a description, or (lead finding,) for a group
    leads: dict[str, list[str]] = {}
    for ev in items:
        lead = _lead_finding(ev)
        if lead is not None:
            label, name = lead
            if label not in leads:
                leads[label] = []
                entries.append((label,))
            leads[label].append(name)
        elif (text := _reading(ev, lang)) not in entries:
            entries.append(text)
    out = []
    for entry in entries:
        if isinstance(entry, str):
            out.append(entry)
            continue
        label = entry[0]
        shown = _name_in(T.ITEM_NAMES.get(label, (label, label)), lang)
        joined = sep.join(leads[label])
        out.append(f"{shown} ({joined})" if lang == "en" else f"{shown}（{joined}）")
    return out


def _genomics_reading(ev: Evidence, lang: str) -> str:
    word = T.interpretation(ev.interpretation, lang)
    value = f" {ev.value}" if isinstance(ev.value, str) and ev.value else ""
    return f"{ev.item}{value} ({word})" if lang == "en" else f"{ev.item}{value}（{word}）"


def _disease_list(keys: Iterable[str], panel: Panel, lang: str, joiner: str) -> str:
    return joiner.join(panel.by_key(k).display(lang) for k in keys)


def _suggests(items: Iterable[Evidence], panel: Panel, lang: str) -> str | None:
    keys: set[str] = set()
    for ev in items:
        keys |= supported_diseases(ev)
    ordered = [k for k in panel.keys if k in keys]
    if not ordered:
        return None
    a = T.ANSWER[lang]
    joiner = a["or"] if len(ordered) == 2 else a["list_sep"]
    return a["suggests"].format(diseases=_disease_list(ordered, panel, lang, joiner))


# ---------------------------------------------------------------------------- per-case context

@dataclass
class _Case:
    """What every task builder of one case needs, computed once."""

    case: PatientCase
    case_dir: str
    evidence: list[Evidence]
    panel: Panel
    gold: list[str]
    seed: int
    # Labelled findings grouped by label: label -> boxes (empty for unlocalised findings).
    findings: dict[str, list[list[int]]] = field(default_factory=dict)

    @property
    def annotated(self) -> bool:
        return self.case.labels is not None

    @property
    def boxed(self) -> dict[str, list[list[int]]]:
        """Findings with boxes, on cases that have an image (the boxes need one)."""
        if not self.case.cxr:
            return {}
        return {label: boxes for label, boxes in self.findings.items() if boxes}

    def of(self, modality: str) -> list[Evidence]:
        return [ev for ev in self.evidence if ev.modality == modality]

    def rng(self, task: str, lang: str, k: int = 0) -> random.Random:
        # String seeds are hashed with SHA-512 by `random.Random`: stable across processes
        # and Python versions, unlike hash().
        return random.Random(f"{self.seed}:{self.case.case_id}:{task}:{lang}:{k}")


def _group_findings(findings: Iterable[Finding]) -> dict[str, list[list[int]]]:
    grouped: dict[str, list[list[int]]] = {}
    for f in findings:
        boxes = grouped.setdefault(f.label, [])
        for b in f.boxes:
            if list(b) not in boxes:
                boxes.append([int(v) for v in b])
    return grouped


def _boxes_json(groups: dict[str, list[list[int]]]) -> str:
    return json.dumps([{"label": label, "box": box} for label, boxes in groups.items() for box in boxes])


# ---------------------------------------------------------------------------- message helpers

def _messages(system: str | None, user: str, assistant: str) -> list[dict[str, str]]:
    msgs = [] if system is None else [{"role": "system", "content": system}]
    return [*msgs, {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _question(rng: random.Random, task: str, lang: str, with_values_family: bool) -> tuple[str, bool]:
    """A question of `task` (plain or ':values' family), and whether it lists measurements."""
    plain = T.QUESTIONS[task][lang]
    valued = T.QUESTIONS.get(f"{task}:values", {}).get(lang, ()) if with_values_family else ()
    i = rng.randrange(len(plain) + len(valued))
    return (plain[i], False) if i < len(plain) else (valued[i - len(plain)], True)


def _measurements(items: Sequence[Evidence], lang: str) -> str:
    return f"{T.MEASUREMENTS[lang]}:\n" + "\n".join(f"- {ev.cite()}" for ev in items)


def _join_sentences(parts: Iterable[str], lang: str) -> str:
    return (" " if lang == "en" else "").join(p for p in parts if p)


# ---------------------------------------------------------------------------- per-modality QA

def _ecg_answer(items: list[Evidence], panel: Panel, lang: str, values: bool) -> str:
    a = T.ANSWER[lang]
    by_item = {ev.item: ev for ev in items}
    parts: list[str] = []
    rhythm = by_item.get("rhythm")
    if rhythm is not None:
        parts.append(a["rhythm"].format(rhythm=T.interpretation(rhythm.interpretation, lang)))
    rate = by_item.get("heart_rate")
    if rate is not None:
        reading = _value_text(rate) if values else T.interpretation(rate.interpretation, lang)
        parts.append(a["rate"].format(reading=reading))
    intervals = [ev for ev in items if ev.unit == "ms" or ev.item == "P waves"]
    if intervals:
        shown = [_short_cite(ev) if values else _reading(ev, lang) for ev in intervals]
        parts.append(a["intervals"].format(items=a["list_sep"].join(shown)))
    lead_items = [ev for ev in items if _lead_finding(ev) is not None]
    if lead_items:
        shown = [_short_cite(ev) for ev in lead_items] if values else _group_readings(lead_items, lang)
        parts.append(a["st_t"].format(items=(a["sep"] if values else a["list_sep"]).join(shown)))
    elif "ST segment" in by_item:  # the reader measured ST in every lead and found no deviation
        parts.append(a["st_t_normal"])
    lvh = [ev for ev in items if ev.item.startswith(("Sokolow", "Cornell"))]
    met = [ev for ev in lvh if ev.abnormal]
    if values and lvh:
        parts.append(a["voltage"].format(items=a["list_sep"].join(_short_cite(ev) for ev in lvh)))
    elif met:
        parts.append(a["lvh"].format(items=a["list_sep"].join(_item_name(ev, lang) for ev in met)))
    quality = by_item.get("signal quality")
    if quality is not None:
        parts.append(a["quality"].format(reading=T.interpretation(quality.interpretation, lang)))
    abnormal = [ev for ev in items if ev.abnormal]
    if rhythm is not None and rhythm.interpretation == "unreadable":
        parts.append(a["unreadable"])  # nothing else was measured: claim nothing else
    elif not abnormal:
        parts.append(a["all_normal"])
    else:
        suggestion = _suggests(abnormal, panel, lang)
        if suggestion:
            parts.append(suggestion)
    return _join_sentences(parts, lang)


def _labs_answer(items: list[Evidence], panel: Panel, lang: str, values: bool) -> str:
    a = T.ANSWER[lang]
    abnormal = [ev for ev in items if ev.abnormal]
    if not abnormal:
        return a["labs_normal"]
    shown = [ev.cite() for ev in abnormal] if values else [_reading(ev, lang) for ev in abnormal]
    parts = [a["abnormal"].format(items=(a["sep"] if values else a["list_sep"]).join(shown))]
    suggestion = _suggests(abnormal, panel, lang)
    if suggestion:
        parts.append(suggestion)
    return _join_sentences(parts, lang)


def _screen_text(ev: Evidence, lang: str, values: bool) -> str:
    """A SIRS / qSOFA screen with the criteria it met and those it could not assess."""
    a = T.ANSWER[lang]

    def criteria(names: list[str]) -> str:
        return a["list_sep"].join(_name_in(T.ITEM_NAMES.get(c, (c, c)), lang) for c in names)

    extra = []
    if ev.detail.get("met"):
        extra.append(a["criteria_met"].format(items=criteria(ev.detail["met"])))
    if ev.detail.get("missing"):
        extra.append(a["criteria_missing"].format(items=criteria(ev.detail["missing"])))
    head = ev.cite() if values else a["screen"].format(name=ev.item, reading=T.interpretation(ev.interpretation, lang))
    if not extra:
        return head
    return f"{head} ({'; '.join(extra)})" if lang == "en" else f"{head}（{'；'.join(extra)}）"


def _vitals_answer(items: list[Evidence], panel: Panel, lang: str, values: bool) -> str:
    a = T.ANSWER[lang]
    screens = [ev for ev in items if ev.item in ("SIRS", "qSOFA")]
    readings = [ev for ev in items if ev not in screens]
    abnormal = [ev for ev in readings if ev.abnormal]
    parts: list[str] = []
    if abnormal:
        shown = [ev.cite() for ev in abnormal] if values else _group_readings(abnormal, lang)
        parts.append(a["abnormal"].format(items=(a["sep"] if values else a["list_sep"]).join(shown)))
    else:
        parts.append(a["all_normal"])
    if screens:
        end = "." if lang == "en" else "。"
        parts.append(a["sep"].join(_screen_text(ev, lang, values) for ev in screens) + end)
    suggestion = _suggests([*abnormal, *screens], panel, lang)
    if suggestion:
        parts.append(suggestion)
    return _join_sentences(parts, lang)


_QA_MODALITY = {"ecg_qa": "ecg", "labs_qa": "labs", "vitals_qa": "vitals"}
_QA_ANSWER = {"ecg_qa": _ecg_answer, "labs_qa": _labs_answer, "vitals_qa": _vitals_answer}


def _physiology_qa(ctx: _Case, task: str, lang: str) -> list[tuple[list[dict[str, str]], dict]]:
    items = ctx.of(_QA_MODALITY[task])
    if not items:
        return []
    rng = ctx.rng(task, lang)
    question, values = _question(rng, task, lang, with_values_family=True)
    user = f"{question}\n\n{_measurements(items, lang)}" if values else question
    answer = _QA_ANSWER[task](items, ctx.panel, lang, values)
    return [(_messages(rng.choice(T.SYSTEM[lang]), user, answer), {})]


def _finding_phrase(label: str, boxes: list[list[int]], lang: str, with_box: bool) -> str:
    """'Consolidation (left mid zone)' / '左中肺野实变', optionally followed by its box."""
    name = T.finding_name(label, lang)
    where = T.location(label, boxes, lang)
    box = format_box(label, boxes) if with_box and boxes else ""
    if lang == "zh":
        return f"{where or ''}{name}{box}"
    text = name[:1].upper() + name[1:]
    text = f"{text} {box}" if box else text
    return f"{text} ({where})" if where else text


def _cxr_qa(ctx: _Case, lang: str) -> list[tuple[list[dict[str, str]], dict]]:
    labels = ctx.case.labels
    if not ctx.case.cxr or labels is None or not (ctx.findings or labels.report):
        return []  # an unannotated image has no known answer
    rng = ctx.rng("cxr_qa", lang)
    question, _ = _question(rng, "cxr_qa", lang, with_values_family=False)
    a = T.ANSWER[lang]
    if ctx.findings:
        shown = [_finding_phrase(label, boxes, lang, with_box=False) for label, boxes in ctx.findings.items()]
        answer = a["findings"].format(items=a["sep"].join(shown))
    else:
        answer = a["no_findings"]
    return [(_messages(rng.choice(T.SYSTEM[lang]), question, answer), {})]


# ---------------------------------------------------------------------------- diagnosis

def _token_groups(case: PatientCase) -> list[str]:
    """The fused-token groups of a case as `MedFuse.fuse` reports them: the present
    modalities, then the clue tokens (which exist whenever any modality does)."""
    present = [m for m in MODALITIES if m in case.modalities()]
    return [*present, "clues"] if present else []


def _diagnose_task_text(lang: str) -> str | None:
    """The task paragraph of the diagnose prompt, which the prompt variants replace."""
    try:
        from medfuse.model.diagnosis import (
            _TEXT,  # the inference prompt's own text: one source of truth
        )
    except ImportError:  # pragma: no cover - the diagnose module renamed it; variants are skipped
        return None
    return _TEXT.get(lang, {}).get("task")


def _training_decision(ctx: _Case, rng: random.Random):
    """The head decision a diagnosis sample's prompt states: the gold set (teacher forcing).

    Probabilities are drawn on the side of the threshold the decision is on (the head's
    calibrated values are not known when the data are built); the considered diseases
    are up to two others that some abnormal evidence supports (the confusable ones).
    """
    from medfuse.model.prompt import HeadDecision

    reported = sorted(((k, round(rng.uniform(0.55, 0.99), 2)) for k in ctx.gold), key=lambda x: -x[1])
    confusable = [k for k in ctx.panel.keys if k not in ctx.gold
                  and any(k in supported_diseases(ev) for ev in ctx.evidence if ev.abnormal)]
    considered = sorted(((k, round(rng.uniform(0.1, 0.45), 2)) for k in confusable[:2]), key=lambda x: -x[1])
    return HeadDecision(reported=tuple(reported), considered=tuple(considered))


def _diagnosis_prompt(ctx: _Case, lang: str, rng: random.Random, decision=None) -> tuple[str, str]:
    from medfuse.model.diagnosis import build_prompt

    # The labelled findings stand in for the finding head's (teacher forcing): at inference
    # `diagnose` puts the trained head's findings on the same line.
    findings = list(ctx.boxed.items()) if ctx.case.cxr and ctx.annotated else None
    system, user = build_prompt(ctx.case, ctx.evidence, ctx.panel, lang, token_groups=_token_groups(ctx.case),
                                findings=findings, decision=decision)
    if decision is not None or rng.random() < T.EXACT_DIAGNOSIS_PROMPT_P:
        # A decision-conditioned prompt is always the inference prompt: the decoder's
        # scaffold (`reasoning_plan`) follows that task text.
        return system, user
    alt_system, alt_task = rng.choice(T.DIAGNOSIS_VARIANTS[lang])
    task_text = _diagnose_task_text(lang)
    if not task_text or task_text not in user:
        return system, user
    return alt_system, user.replace(task_text, alt_task, 1)


def _diagnosis_target(ctx: _Case, lang: str, decision) -> str:
    """The reasoning `diagnose`'s constrained decoder scaffolds, written from the gold set.

    One line per reported disease: its header ("Heart failure:"), the readings the panel
    ties to it (or a sentence saying no listed item shows it), then "Evidence: [E2, E5]."
    with the first `MAX_CITED_IDS` ids of those items in the prompt's numbered evidence;
    then the considered-but-absent line; then the answer, which is the reported set.
    """
    from medfuse.model.prompt import _TEXT as _PROMPT_TEXT
    from medfuse.model.prompt import (
        MAX_CITED_IDS,
        format_considered,
        numbered_evidence,
        rationale_header,
        supporting_ids,
    )

    t = T.THINK[lang]
    panel = ctx.panel
    numbered = numbered_evidence(ctx.evidence)
    lines: list[str] = []
    for key, _ in decision.reported:
        ids = supporting_ids(numbered, key)
        support = [numbered[k - 1] for k in ids if numbered[k - 1].modality != "cxr"]
        names = _group_readings(support, lang)
        names += [T.finding_name(label, lang) for label in ctx.findings if key in finding_supports(label)]
        header = rationale_header(key, panel, lang)
        if names:
            line = t["rationale"].format(header=header, items=t["list_sep"].join(names))
        else:
            line = t["rationale_unsupported"].format(header=header)
        if ids:
            # The citation sentence `diagnose`'s decoder opens ("Evidence: [E"); the ids are the model's to write.
            shown = ", E".join(str(k) for k in ids[:MAX_CITED_IDS])
            line += _PROMPT_TEXT[lang]["cite_opener"] + shown + "]" + _PROMPT_TEXT[lang]["cite_close"]
        lines.append(line)
    considered = format_considered(decision, panel, lang)
    if considered:
        lines.append(considered)
    answer = format_answer(panel.by_key(k).display(lang) for k in ctx.gold)  # panel order, as `diagnose` writes it
    return f"<think>{chr(10).join(lines)}</think>{answer}"


def _diagnosis(ctx: _Case, lang: str) -> list[tuple[list[dict[str, str]], dict]]:
    if not ctx.annotated:
        return []  # no gold answer
    rng = ctx.rng("diagnosis", lang)
    decision = _training_decision(ctx, rng)
    system, user = _diagnosis_prompt(ctx, lang, rng, decision)
    return [(_messages(system, user, _diagnosis_target(ctx, lang, decision)), {})]


# ---------------------------------------------------------------------------- region tasks

def _region_to_text(ctx: _Case, lang: str) -> list[tuple[list[dict[str, str]], dict]]:
    out = []
    for k, (label, boxes) in enumerate(ctx.boxed.items()):
        rng = ctx.rng("region_to_text", lang, k)
        question, _ = _question(rng, "region_to_text", lang, with_values_family=False)
        user = question.format(region=format_box(T.REGION_REF[lang], boxes))
        out.append((_messages(rng.choice(T.SYSTEM[lang]), user, T.finding_name(label, lang)), {}))
    return out


def _text_to_region(ctx: _Case, lang: str) -> list[tuple[list[dict[str, str]], dict]]:
    out = []
    for k, (label, boxes) in enumerate(ctx.boxed.items()):
        rng = ctx.rng("text_to_region", lang, k)
        question, _ = _question(rng, "text_to_region", lang, with_values_family=False)
        user = question.format(label=label, label_zh=T.finding_name(label, "zh"))
        out.append((_messages(rng.choice(T.SYSTEM[lang]), user, format_box(label, boxes)), {label: boxes}))
    return out


# ---------------------------------------------------------------------------- reports

_SECTION_BREAK = re.compile(r"\n\s*(?:IMPRESSION\s*:|印象\s*[:：])", re.IGNORECASE)
_MARKUP = re.compile(r"<ref>.*?</ref><box>.*?</box>", re.DOTALL)
_NEGATION = re.compile(r"\b(?:no|without|negative for)\b|未见|无", re.IGNORECASE)
_SENTENCE_START = re.compile(r"[.!?。！？；;]\s*")


def _text_lang(text: str) -> str:
    return "zh" if has_cjk(text) else "en"


def _templated_report(ctx: _Case, lang: str, with_boxes: bool) -> str:
    """A FINDINGS/IMPRESSION report that states the labelled findings and nothing else."""
    r = T.REPORT[lang]
    end = r["sentence_end"]
    if ctx.findings:
        found = r["join"].join(_finding_phrase(label, boxes, lang, with_boxes) + end
                               for label, boxes in ctx.findings.items())
        names = [T.finding_name(label, lang) for label in ctx.findings]
        impression = (T.ANSWER[lang]["list_sep"] if lang == "zh" else "; ").join(names)
        impression = (impression[:1].upper() + impression[1:] if lang == "en" else impression) + end
    else:
        found, impression = r["normal_findings"], r["normal_impression"]
    return f"{r['findings']}{found}\n{r['impression']}{impression}"


def _insert_box(text: str, label: str, boxes: list[list[int]]) -> str | None:
    # Only the first affirmative mention is grounded: the same finding named again (or
    # negated: "no pleural effusion") must not carry the box.
    """`text` with the box put right after the first affirmative mention of `label`, or None."""
    terms = T.FINDING_MENTIONS.get(label, ()) + (label,)
    masked = [m.span() for m in _MARKUP.finditer(text)]
    best: tuple[int, int] | None = None
    for term in terms:
        for m in re.finditer(re.escape(term), text, flags=re.IGNORECASE):
            if any(a <= m.start() < b for a, b in masked):
                continue
            starts = [s.end() for s in _SENTENCE_START.finditer(text, 0, m.start())]
            sentence_start = starts[-1] if starts else 0
            if _NEGATION.search(text[sentence_start:m.start()]):
                continue
            if best is None or m.start() < best[0]:
                best = (m.start(), m.end())
            break
    if best is None:
        return None
    space = "" if has_cjk(text[best[0]:best[1]]) else " "  # English words are spaced, Chinese are not
    return text[: best[1]] + space + format_box(label, boxes) + text[best[1]:]


def _grounded_report_text(ctx: _Case, lang: str) -> str:
    report = ctx.case.labels.report if ctx.case.labels else None
    if not report or _text_lang(report) != lang:
        return _templated_report(ctx, lang, with_boxes=True)
    split = _SECTION_BREAK.search(report)
    findings, rest = (report[: split.start()], report[split.start():]) if split else (report, "")
    missing: list[str] = []
    for label, boxes in ctx.boxed.items():
        grounded = _insert_box(findings, label, boxes)
        if grounded is None:
            missing.append(label)
        else:
            findings = grounded
    if missing:  # the report does not mention it in words: state it, grounded, at the end of the findings
        end = T.REPORT[lang]["sentence_end"]
        extra = T.REPORT[lang]["join"].join(_finding_phrase(label, ctx.boxed[label], lang, True) + end
                                            for label in missing)
        findings = findings.rstrip() + (" " if lang == "en" else "") + extra
    return findings + rest


def _grounded_report(ctx: _Case, lang: str) -> list[tuple[list[dict[str, str]], dict]]:
    boxes = ctx.boxed
    if not boxes:
        return []
    rng = ctx.rng("grounded_report", lang)
    question, _ = _question(rng, "grounded_report", lang, with_values_family=False)
    return [(_messages(rng.choice(T.SYSTEM[lang]), question, _grounded_report_text(ctx, lang)), boxes)]


def _report(ctx: _Case, lang: str) -> list[tuple[list[dict[str, str]], dict]]:
    labels = ctx.case.labels
    if not ctx.case.cxr or labels is None or not (labels.report or ctx.findings):
        return []
    report = labels.report
    text = report.strip() if report and _text_lang(report) == lang else _templated_report(ctx, lang, with_boxes=False)
    rng = ctx.rng("report", lang)
    question, _ = _question(rng, "report", lang, with_values_family=False)
    return [(_messages(rng.choice(T.SYSTEM[lang]), question, text), {})]


_BUILDERS = {
    "ecg_qa": lambda ctx, lang: _physiology_qa(ctx, "ecg_qa", lang),
    "labs_qa": lambda ctx, lang: _physiology_qa(ctx, "labs_qa", lang),
    "vitals_qa": lambda ctx, lang: _physiology_qa(ctx, "vitals_qa", lang),
    "cxr_qa": _cxr_qa,
    "diagnosis": _diagnosis,
    "region_to_text": _region_to_text,
    "text_to_region": _text_to_region,
    "grounded_report": _grounded_report,
    "report": _report,
}


# ---------------------------------------------------------------------------- building

def check_choices(langs: Sequence[str], tasks: Sequence[str] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(languages, tasks) de-duplicated in order; ConfigError naming an unknown one."""
    langs = tuple(dict.fromkeys(langs))
    for lang in langs:
        if lang not in LANGS:
            raise ConfigError(f"lang: unknown language '{lang}' (choose from {', '.join(LANGS)})")
    if not langs:
        raise ConfigError("lang: give at least one language")
    chosen = TASKS if tasks is None else tuple(dict.fromkeys(tasks))
    for task in chosen:
        if task not in TASKS:
            raise ConfigError(f"task: unknown task '{task}' (choose from {', '.join(TASKS)})")
    if not chosen:
        raise ConfigError("task: give at least one task")
    return langs, chosen


def build_case_samples(case: PatientCase, evidence: list[Evidence], *, case_dir: str = "", panel: Panel | None = None,
                       langs: Sequence[str] = LANGS, seed: int = 0,
                       tasks: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The task rows of one case (already interpreted), in task then language order."""
    panel = panel or load_panel()
    langs, chosen = check_choices(langs, tasks)
    ctx = _Case(case=case, case_dir=case_dir, evidence=evidence, panel=panel, gold=gold_disease_keys(case, panel),
                seed=seed, findings=_group_findings(case.labels.findings) if case.labels else {})
    rows: list[dict[str, Any]] = []
    for task in chosen:
        for lang in langs:
            for k, (messages, boxes) in enumerate(_BUILDERS[task](ctx, lang)):
                rows.append({
                    "id": f"{case.case_id}:{task}:{lang}:{k}",
                    "case_id": case.case_id,
                    "case_dir": case_dir,
                    "task": task,
                    "lang": lang,
                    "messages": messages,
                    "answer_diseases": list(ctx.gold),
                    "gold_boxes": _boxes_json(boxes),
                    "source": SOURCE,
                })
    return rows


def _counts(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter] = {}
    for row in rows:
        counts.setdefault(row["task"], Counter())[row["lang"]] += 1
    return {task: dict(sorted(counts[task].items())) for task in TASKS if task in counts}


def build_tasks(cohort_dir: str | Path, *, langs: Sequence[str] = LANGS, seed: int = 0,
                tasks: Sequence[str] | None = None, panel: Panel | None = None, progress: bool = False) -> Dataset:
    """Instruction samples for every case of a cohort folder (see the module docstring).

    `tasks` limits the task types (default: all of `TASKS`). A case folder that cannot be
    read is skipped and counted in the metadata (`dataset.info.description`, JSON:
    cohort root, panel, seed, languages, tasks, counts per task and language).
    """
    from tqdm import tqdm

    from medfuse.interpret.case import interpret_case
    from medfuse.record.store import CASE_FILE, iter_case_folders, read_case

    langs, chosen = check_choices(langs, tasks)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed: must be a non-negative integer, got {seed!r}")
    root = Path(cohort_dir)
    if not root.is_dir():
        raise InputError(root, "no such cohort folder")
    if (root / CASE_FILE).is_file():
        raise InputError(root, "is a case folder; give the cohort folder that holds the case folders")
    folders = list(iter_case_folders(root))
    if not folders:
        raise InputError(root, "not a cohort folder (no case folders with case.json)")
    panel = panel or load_panel()
    rows: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    for folder in tqdm(folders, unit="case", desc="tasks", disable=not progress or None, file=sys.stderr):
        try:
            case = read_case(folder)
        except InputError as e:
            skipped[e.problem] += 1
            continue
        rows += build_case_samples(case, interpret_case(case), case_dir=folder.name, panel=panel, langs=langs,
                                   seed=seed, tasks=chosen)
    meta = {
        "format": META_FORMAT,
        "version": 1,
        "cohort_root": str(root.resolve()),
        "panel": panel.name,
        "seed": seed,
        "langs": list(langs),
        "tasks": list(chosen),
        "n_cases": len(folders) - sum(skipped.values()),
        "skipped_cases": dict(sorted(skipped.items())),
        "n_rows": len(rows),
        "counts": _counts(rows),
    }
    return rows_to_dataset(rows, meta)


def rows_to_dataset(rows: Sequence[dict[str, Any]], meta: dict[str, Any] | None = None) -> Dataset:
    """A `Dataset` of task rows with the contract's features (also when `rows` is empty),
    `meta` stored as JSON in `info.description`."""
    from datasets import Dataset, DatasetInfo

    features = task_features()
    # Column-wise: an empty row list still gives every column (from_list would give none).
    columns = {c: [row[c] for row in rows] for c in COLUMNS}
    info = DatasetInfo(description=json.dumps(meta) if meta is not None else "", features=features)
    return Dataset.from_dict(columns, features=features, info=info)


def tasks_metadata(dataset: Dataset) -> dict[str, Any]:
    """The build metadata stored in `dataset.info.description` ({} when there is none)."""
    try:
        meta = json.loads(dataset.info.description or "")
    except (TypeError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


# ---------------------------------------------------------------------------- saving and loading

def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_out_dir(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Raise InputError when `out_dir` exists, is not empty, and `overwrite` is off."""
    out = Path(out_dir)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise InputError(out, "already exists (use --overwrite to replace it)")
    return out


def save_tasks(dataset: Dataset, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Save with `save_to_disk` plus `medfuse_tasks.json`, atomically.

    The dataset is written to a temporary folder beside `out_dir` and renamed into place
    at the end, so an interrupted save leaves no half-written dataset. An existing
    non-empty `out_dir` is an error unless `overwrite`.
    """
    import datasets

    out = check_out_dir(out_dir, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    bars_were_on = not datasets.are_progress_bars_disabled()
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp is private (0700); a dataset is shared like any folder
        datasets.disable_progress_bars()  # our own summary says what was written
        dataset.save_to_disk(str(tmp))
        meta = tasks_metadata(dataset)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    return out


def load_tasks(path: str | Path) -> Dataset:
    """A task dataset saved by `save_tasks` (InputError if the folder is not one)."""
    from datasets import load_from_disk

    folder = Path(path)
    if not folder.is_dir():
        raise InputError(folder, "no such dataset folder")
    if not (folder / "state.json").is_file() or not (folder / "dataset_info.json").is_file():
        raise InputError(folder, "not a saved task dataset (no state.json / dataset_info.json)")
    try:
        dataset = load_from_disk(str(folder))
    except (OSError, ValueError) as e:
        raise InputError(folder, f"cannot read the dataset ({e.__class__.__name__})") from None
    missing = [c for c in COLUMNS if c not in getattr(dataset, "column_names", [])]
    if missing:
        raise InputError(folder, f"not a medfuse task dataset (missing columns: {', '.join(missing)})")
    return dataset
