"""Instruction data (`medfuse tasks`): what a trainer and a reviewer rely on.

One small synthetic cohort (12 cases, every case with an image, most with an ECG, some
Chinese reports) is built once per module; the tests read the rows of that build.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from medfuse.errors import InputError, MedfuseError
from medfuse.formats import has_valid_format, parse_answer_set, parse_boxes
from medfuse.interpret.case import interpret_case
from medfuse.knowledge.panel import load_panel
from medfuse.model.diagnosis import build_prompt
from medfuse.record.case import Diagnosis, Labels, LabResult, PatientCase, VitalSigns
from medfuse.record.store import read_case
from medfuse.synth.cohort import SynthConfig, synth_cohort
from medfuse.tasks import (
    COLUMNS,
    LANGS,
    META_FILE,
    TASKS,
    build_case_samples,
    build_tasks,
    gold_disease_keys,
    load_tasks,
    read_medtvt_qa,
    rows_to_dataset,
    save_tasks,
    tasks_metadata,
)
from medfuse.tasks import templates as T

PLACEHOLDER = {"ecg_qa": "<ecg>", "labs_qa": "<labs>", "vitals_qa": "<vitals>", "cxr_qa": "<cxr>",
               "region_to_text": "<cxr>", "text_to_region": "<cxr>", "grounded_report": "<cxr>", "report": "<cxr>"}
# A number as written in text; digits glued to ASCII letters ('V3', 'A1c', 'p.G12C') are names,
# not values. Digits next to Chinese characters DO count (no '2期' may slip through).
NUMBER = re.compile(r"(?<![A-Za-z0-9_.])\d+(?:\.\d+)?")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tasks") / "cohort"
    synth_cohort(n=12, seed=1, out=out, config=SynthConfig(p_cxr=1.0, p_ecg=0.7, zh_share=0.3), workers=1,
                 progress=False)
    return out


@pytest.fixture(scope="module")
def cases(cohort) -> dict[str, tuple[PatientCase, list]]:
    """case_dir -> (case, evidence), read independently of the builder."""
    out = {}
    for folder in sorted(p for p in cohort.iterdir() if (p / "case.json").is_file()):
        case = read_case(folder)
        out[folder.name] = (case, interpret_case(case))
    return out


@pytest.fixture(scope="module")
def rows(cohort) -> list[dict]:
    return build_tasks(cohort, seed=0).to_list()


@pytest.fixture(scope="module")
def panel():
    return load_panel()


def _target(row: dict) -> str:
    assert row["messages"][-1]["role"] == "assistant"
    return row["messages"][-1]["content"]


def _user(row: dict) -> str:
    return next(m["content"] for m in row["messages"] if m["role"] == "user")


def _gold_boxes(row: dict) -> list[tuple[str, list[int]]]:
    return [(b["label"], b["box"]) for b in json.loads(row["gold_boxes"])]


def _flat(parsed: list[tuple[str, list[list[int]]]]) -> list[tuple[str, list[int]]]:
    return [(label, box) for label, boxes in parsed for box in boxes]


# ---------------------------------------------------------------------------- the contract

def test_rows_follow_the_column_contract(rows, cohort, cases, panel):
    assert rows and all(tuple(r) == COLUMNS for r in rows)
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    for r in rows:
        assert r["task"] in TASKS and r["lang"] in LANGS and r["source"] == "medfuse"
        assert r["id"].startswith(f"{r['case_id']}:{r['task']}:{r['lang']}:")
        assert (cohort / r["case_dir"] / "case.json").is_file()
        roles = [m["role"] for m in r["messages"]]
        assert roles[-2:] == ["user", "assistant"] and set(roles) <= {"system", "user", "assistant"}
        assert all(m["content"].strip() for m in r["messages"])
        json.loads(r["gold_boxes"])
        # The gold disease set rides on every row of the case (the Jaccard reward reads it).
        case, _ = cases[r["case_dir"]]
        assert r["answer_diseases"] == gold_disease_keys(case, panel)
    assert any(r["answer_diseases"] for r in rows) and any(not r["answer_diseases"] for r in rows)


def test_same_seed_gives_identical_rows(cohort, rows):
    again = build_tasks(cohort, seed=0)
    assert again.to_list() == rows
    other = build_tasks(cohort, seed=1, tasks=["labs_qa", "diagnosis"]).to_list()
    same_ids = {r["id"]: r for r in rows}
    # A sample depends on (seed, case, task, language) only: a subset build with another seed
    # has the same ids, and the seed changes some phrasings.
    assert all(r["id"] in same_ids for r in other)
    assert any(r["messages"] != same_ids[r["id"]]["messages"] for r in other)
    meta = tasks_metadata(again)
    assert meta["cohort_root"] == str(cohort.resolve()) and meta["panel"] == "medfuse-default"
    assert meta["seed"] == 0 and meta["langs"] == ["en", "zh"] and meta["n_cases"] == 12
    assert sum(sum(c.values()) for c in meta["counts"].values()) == len(rows)


def test_every_task_type_in_both_languages_with_varied_phrasings(rows):
    by_task: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by_task.setdefault((r["task"], r["lang"]), []).append(r)
    assert {t for t, _ in by_task} == set(TASKS)
    for task in TASKS:
        for lang in LANGS:
            assert by_task.get((task, lang)), (task, lang)
            if task == "diagnosis":
                continue
            # Which template each user prompt was written from (its first paragraph).
            questions = [*T.QUESTIONS[task][lang], *T.QUESTIONS.get(f"{task}:values", {}).get(lang, ())]
            assert len(questions) >= 3
            patterns = [re.compile(re.sub(r"\\\{\w+\\\}", ".+?", re.escape(q)), re.DOTALL) for q in questions]
            used = set()
            for r in by_task[(task, lang)]:
                first = _user(r).split("\n\n")[0]
                matches = [i for i, p in enumerate(patterns) if p.fullmatch(first)]
                assert matches, (task, lang, first)
                used.add(matches[0])
                assert PLACEHOLDER[task] in _user(r)
                if task == "report":
                    assert "<clue>" in _user(r)
            assert len(used) >= 3, (task, lang, used)
    # Chinese samples speak Chinese (their disease names come from the panel's zh names).
    zh_diag = [_target(r) for r in rows if r["task"] == "diagnosis" and r["lang"] == "zh" and r["answer_diseases"]]
    assert zh_diag and all(re.search(r"[\u4e00-\u9fff]", parse_answer_set(t)[0]) for t in zh_diag)


# ---------------------------------------------------------------------------- diagnosis

def test_diagnosis_targets_are_valid_and_parse_back_to_the_gold_set(rows, cases, panel):
    diag = [r for r in rows if r["task"] == "diagnosis"]
    assert len(diag) == 2 * len(cases)  # every case is labelled
    for r in diag:
        text = _target(r)
        assert has_valid_format(text), text
        names = parse_answer_set(text, panel)
        assert [panel.lookup(n).key for n in names] == r["answer_diseases"]
        if not r["answer_diseases"]:
            assert "<answer>none</answer>" in text
        case, _ = cases[r["case_dir"]]
        # Boxes are the finding head's job: the prompt gives the labelled ones, the target
        # only names the findings (no box reward on diagnosis rows).
        assert parse_boxes(text) == [] and _gold_boxes(r) == []
        boxed = {f.label: f.boxes for f in case.labels.findings if f.boxes}
        if case.cxr and boxed:
            in_prompt = {(label, tuple(b)) for label, b in _flat(parse_boxes(_user(r)))}
            assert in_prompt == {(label, tuple(b)) for label, boxes in boxed.items() for b in boxes}


def test_diagnosis_prompts_are_the_decision_conditioned_inference_prompt(rows, cases, panel):
    """Training reads what `diagnose` writes: the case word for word, the gold set stated as the
    head's decision, and the explain task; the target explains exactly that set, citing listed ids."""
    from medfuse.model.prompt import _TEXT, HeadDecision

    for r in (r for r in rows if r["task"] == "diagnosis"):
        case, evidence = cases[r["case_dir"]]
        lang = r["lang"]
        groups = [*case.modalities(), "clues"]
        boxed = {}
        for f in case.labels.findings:
            if f.boxes:
                boxed.setdefault(f.label, []).extend(b for b in f.boxes if b not in boxed.get(f.label, []))
        user = _user(r)
        decision_line = next(p for p in user.split("\n\n") if p.startswith(_TEXT[lang]["decision"]))
        reported = [d.key for d in panel if re.search(rf"{re.escape(d.display(lang))} 0\.\d\d", decision_line.split(
            _TEXT[lang]["considered"])[0])]
        assert sorted(reported) == sorted(r["answer_diseases"]), decision_line
        system, expected = build_prompt(case, evidence, panel, lang, token_groups=groups,
                                        findings=list(boxed.items()) if case.cxr else None,
                                        decision=HeadDecision(reported=(), considered=()))
        # Everything but the decision line is the inference prompt's text.
        head = _TEXT[lang]["decision"]
        strip = lambda text, head=head: [p for p in text.split("\n\n") if not p.startswith(head)]
        assert (r["messages"][0]["content"], strip(user)) == (system, strip(expected))
        assert _TEXT[lang]["explain_task"] in user
        n_listed = len(re.findall(r"^\[E\d+\]", user, re.MULTILINE))
        cited = [int(k) for k in re.findall(r"E(\d+)", " ".join(re.findall(r"\[E[\d, E]+\]", _target(r))))]
        assert all(1 <= k <= n_listed for k in cited)


def test_diagnosis_answers_in_its_language_whatever_the_language_of_the_notes(rows, cases):
    from medfuse.formats import parse_think, text_language

    ask = {"en": "The notes quoted above are in Chinese; write the reasoning and the answer in English.",
           "zh": "上面引用的病历为英文；请用中文书写推理和答案。"}
    crossed = Counter()
    for r in (r for r in rows if r["task"] == "diagnosis"):
        case, _ = cases[r["case_dir"]]
        notes_in = {text_language(n.text) for n in case.notes}
        user = _user(r)
        if notes_in - {r["lang"]}:
            # A note in the other language is quoted and the answer language asked for, in
            # the exact prompt and in every variant alike.
            assert user.endswith(ask[r["lang"]]) and ("quoted as source" in user or "原文" in user), r["id"]
            crossed[r["lang"]] += 1
        else:
            assert not user.endswith(ask[r["lang"]]), r["id"]
        assert text_language(parse_think(_target(r))) == r["lang"], r["id"]
    assert crossed["en"] >= 2 and crossed["zh"] >= 2, crossed


# ---------------------------------------------------------------------------- faithfulness

def test_every_number_in_a_target_comes_from_the_case(rows, cases):
    allowed: dict[str, set[str]] = {}
    for case_dir, (case, evidence) in cases.items():
        text = " ".join(ev.cite() for ev in evidence)
        # Ground truth that is not evidence: labelled boxes and the labelled report.
        text += " " + " ".join(str(v) for f in case.labels.findings for b in f.boxes for v in b)
        text += " " + (case.labels.report or "")
        allowed[case_dir] = set(NUMBER.findall(text))
    checked = 0
    for r in rows:
        numbers = NUMBER.findall(_target(r))
        checked += len(numbers)
        stray = [n for n in numbers if n not in allowed[r["case_dir"]]]
        assert not stray, (r["id"], stray, _target(r))
    assert checked > 500  # the check bit: targets do state many values


def test_qa_answers_state_values_only_when_the_prompt_lists_them(rows):
    for r in rows:
        if r["task"] not in ("ecg_qa", "labs_qa", "vitals_qa"):
            continue
        user = _user(r)
        listed = "\nMeasurements:\n" in user or "\n测量值:\n" in user
        decimals = re.findall(r"(?<![A-Za-z0-9_.])\d+\.\d+", _target(r))
        if not listed:
            assert not decimals, (r["id"], _target(r))
        else:
            assert all(d in user for d in decimals)


# ---------------------------------------------------------------------------- regions and reports

def test_region_targets_parse_back_to_the_gold_boxes(rows, cases):
    seen = Counter()
    for r in rows:
        case, _ = cases[r["case_dir"]]
        gold = {f.label: f.boxes for f in case.labels.findings if f.boxes}
        if r["task"] == "text_to_region":
            (label, boxes), = parse_boxes(_target(r))
            assert gold[label] == boxes and _flat([(label, boxes)]) == _gold_boxes(r)
            assert f"<ref>{label}</ref>" in _user(r)
        elif r["task"] == "region_to_text":
            (_, boxes), = parse_boxes(_user(r))
            label = next(lbl for lbl, b in gold.items() if b == boxes)
            assert _target(r) == T.finding_name(label, r["lang"])
        elif r["task"] == "grounded_report":
            assert sorted(_flat(parse_boxes(_target(r)))) == sorted(_gold_boxes(r))
            assert sorted(_gold_boxes(r)) == sorted((lbl, b) for lbl, bs in gold.items() for b in bs)
        else:
            continue
        seen[r["task"]] += 1
    assert min(seen.values()) >= 8


def test_reports_come_from_the_labelled_report_in_its_language(rows, cases):
    native = 0
    for r in (r for r in rows if r["task"] == "report"):
        case, _ = cases[r["case_dir"]]
        report = case.labels.report
        report_lang = "zh" if re.search(r"[\u4e00-\u9fff]", report) else "en"
        target = _target(r)
        if report_lang == r["lang"]:
            assert target == report.strip()
            native += 1
        else:  # written from the labelled findings, in the sample's language
            assert target.startswith(T.REPORT[r["lang"]]["findings"])
            for f in case.labels.findings:
                assert T.finding_name(f.label, r["lang"]).lower() in target.lower()
        assert not parse_boxes(target)
    assert native >= 12  # one per case, both languages occur natively in this cohort


# ---------------------------------------------------------------------------- special cases

def test_a_case_gets_only_the_tasks_its_data_support(panel):
    case = PatientCase(
        case_id="lab-only",
        labs=[LabResult(name="Creatinine", code="creatinine", value=3.2, unit="mg/dL"),
              LabResult(name="Glucose", code="glucose", value=92.0, unit="mg/dL")],
        vitals=[VitalSigns(heart_rate=88, sbp=118, dbp=76, temperature=36.9, resp_rate=16, spo2=98)],
    )
    unlabelled = build_case_samples(case, interpret_case(case), panel=panel)
    assert {r["task"] for r in unlabelled} == {"labs_qa", "vitals_qa"}  # no ECG, no image, no gold answer
    assert all(r["answer_diseases"] == [] and r["gold_boxes"] == "[]" for r in unlabelled)
    labelled = case.model_copy(update={"labels": Labels(diagnoses=[Diagnosis(name="acute kidney injury", icd10="N17.9")])})
    rows = build_case_samples(labelled, interpret_case(labelled), panel=panel, langs=["en"], tasks=["diagnosis"])
    (row,) = rows
    assert row["answer_diseases"] == ["acute_renal_failure"]
    text = _target(row)
    # The chain names the reading behind the answer (the prompt carries its value and source).
    assert has_valid_format(text) and "acute renal failure: supported by Creatinine (high)" in text
    assert "creatinine 3.2 mg/dL (high) [labs[0]]" in _user(row)
    assert parse_answer_set(text) == ["acute renal failure"]
    with pytest.raises(MedfuseError, match="unknown task 'ecg'"):
        build_case_samples(case, [], tasks=["ecg"])


# ---------------------------------------------------------------------------- saving

def test_save_and_load_round_trip_atomically(tmp_path, cohort):
    dataset = build_tasks(cohort, tasks=["text_to_region", "cxr_qa"], langs=["zh"])
    out = tmp_path / "data" / "tasks"
    assert save_tasks(dataset, out) == out
    loaded = load_tasks(out)
    assert loaded.to_list() == dataset.to_list() and loaded.column_names == list(COLUMNS)
    meta = json.loads((out / META_FILE).read_text(encoding="utf-8"))
    assert meta["cohort_root"] == str(cohort.resolve()) and meta["langs"] == ["zh"]
    assert set(meta["counts"]) == {"text_to_region", "cxr_qa"} and tasks_metadata(loaded) == meta
    # An existing dataset is never replaced by accident, and a replacement leaves no temporary folder.
    with pytest.raises(InputError, match="already exists"):
        save_tasks(dataset.select(range(2)), out)
    assert len(load_tasks(out)) == len(dataset)
    save_tasks(dataset.select(range(2)), out, overwrite=True)
    assert len(load_tasks(out)) == 2
    assert sorted(p.name for p in out.parent.iterdir()) == ["tasks"]
    with pytest.raises(InputError, match="not a saved task dataset"):
        load_tasks(tmp_path)


# ---------------------------------------------------------------------------- MedTVT-QA

def test_read_medtvt_qa_fixture(fixtures, panel, rows):
    from datasets import concatenate_datasets

    medtvt = read_medtvt_qa(fixtures / "medtvt_qa" / "sample.json")
    # Same features as built rows: the two sources train together.
    assert len(concatenate_datasets([rows_to_dataset(rows[:5]), medtvt])) == 8
    rows = medtvt.to_list()
    assert [r["id"] for r in rows] == ["medtvt:mtvt-0001", "medtvt:mtvt-0002", "medtvt:mtvt-0003"]
    assert all(tuple(r) == COLUMNS and r["source"] == "medtvt-qa" and r["case_dir"] == "" for r in rows)
    first, second, third = rows
    assert first["task"] == "diagnosis" and first["lang"] == "en"
    assert first["answer_diseases"] == ["atrial_fibrillation", "hypertension"]
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert "<labs>" in first["messages"][0]["content"] and "<lab>" not in first["messages"][0]["content"]
    assert second["task"] == "qa" and second["answer_diseases"] == []
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant"]
    assert third["lang"] == "zh" and third["answer_diseases"] == ["pneumonia", "sepsis"]
    assert all(r["gold_boxes"] == "[]" for r in rows)


@pytest.mark.parametrize(("content", "problem"), [
    ("{not json", "invalid JSON"),
    ('{"id": 1}', "expected a JSON list"),
    ('[{"id": "a", "conversations": [{"from": "human", "value": "hi"}]}]', "item 0: needs a user turn and an assistant turn"),
    ('[{"id": "a"}]', "item 0: no 'messages' or 'conversations'"),
])
def test_bad_medtvt_files_name_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as e:
        read_medtvt_qa(path)
    assert str(path) in str(e.value) and problem in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------- CLI

def test_cli_builds_shows_and_rejects_bad_input(tmp_path, cohort, capsys):
    from typer.testing import CliRunner

    from medfuse.cli import main
    from medfuse.cli.app import app

    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["tasks", "build", str(cohort), "--out", str(out), "--lang", "en",
                                      "--task", "diagnosis", "--task", "text_to_region", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "sample(s) from 12 case(s)" in result.output and "diagnosis" in result.output
    assert re.search(r"diagnosis\s*│\s*12\s*│\s*12", result.output)
    assert {r["lang"] for r in load_tasks(out).to_list()} == {"en"}
    shown = CliRunner().invoke(app, ["tasks", "show", str(out), "--n", "2", "--task", "diagnosis"])
    assert shown.exit_code == 0, shown.output
    assert shown.output.count("\n== ") == 2 and "[assistant]" in shown.output and "<answer>" in shown.output

    bad = [
        (["tasks", "build", str(cohort), "--out", str(tmp_path / "x"), "--task", "nope"], "unknown task 'nope'"),
        (["tasks", "build", str(cohort.parent), "--out", str(tmp_path / "x")], "not a cohort folder"),
        (["tasks", "build", str(cohort / "synth-000000"), "--out", str(tmp_path / "x")], "is a case folder"),
        (["tasks", "build", str(cohort), "--out", str(out)], "already exists"),
        (["tasks", "show", str(cohort)], "not a saved task dataset"),
    ]
    capsys.readouterr()
    for args, problem in bad:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert problem in err and err.strip().count("\n") == 0 and "Traceback" not in err, (args, err)
    assert not (tmp_path / "x").exists()  # nothing half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
