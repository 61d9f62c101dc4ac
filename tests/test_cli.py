"""The `medfuse` command as a user runs it: one-line errors, exit codes, `show`."""

from __future__ import annotations

import re

import subprocess
import sys

from PIL import Image

from medfuse.cli import main
from medfuse.record import write_case

from test_record import full_case


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medfuse", *args], capture_output=True, text=True, timeout=120)


def test_show_summarises_a_case(tmp_path, capsys):
    write_case(full_case(), tmp_path / "case-001")
    assert main(["show", str(tmp_path / "case-001")]) == 0
    out = capsys.readouterr().out
    assert "modalities: cxr, ecg, labs, vitals, notes, genomics" in out
    assert "12 lead(s)" in out and "500 Hz, 10.0 s" in out
    assert " H Creatinine: 2.4 mg/dL (ref 0.5-1.2)" in out
    assert "labels: pneumonia, sepsis" in out


def test_bad_input_is_one_line_no_traceback(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "case.json").write_text("{oops")
    r = run("show", str(tmp_path / "broken"))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "broken" in r.stderr and "invalid JSON" in r.stderr


def test_usage_errors_exit_2_without_traceback():
    for args in (("import", "fhir"), ("no-such-verb",)):
        r = run(*args)
        assert r.returncode == 2, args
        assert "Traceback" not in r.stderr


def _leaf_commands(group, path=()):
    """(verb words, click command) for every command of the app, groups walked down."""
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield from _leaf_commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_usage_errors_are_one_line_for_every_verb(capsys):
    import typer

    from medfuse.cli.app import app

    verbs = list(_leaf_commands(typer.main.get_command(app)))
    assert len(verbs) >= 20
    for words, _ in verbs:
        assert main([*words, "--no-such-option"]) == 2, words
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("medfuse: error: "), (words, err)
        # click says "No such option: --x", newer typer "No such option '--x'"
        assert re.search(r"No such option:? '?--no-such-option", err) and " ".join(words) in err and "╭" not in err
    for args, problem in [(["import", "fhir"], "Missing argument"),
                          (["synth", "--n", "abc", "--out", "x"], "Invalid value for '--n'"),
                          (["no-such-verb"], "No such command 'no-such-verb'")]:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("medfuse: error: ") and problem in err, (args, err)


def test_help_is_printed_as_before(capsys):
    from typer.testing import CliRunner

    from medfuse.cli.app import app

    for words in (["synth"], ["import", "dicom"], []):
        assert main([*words, "--help"]) == 0
        assert capsys.readouterr().out == CliRunner().invoke(app, [*words, "--help"]).output


def test_an_output_overlapping_its_input_is_refused(tmp_path, capsys):
    cohort = tmp_path / "cohort"
    write_case(full_case(), cohort / "case-001")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for args, problem in [
        (["diagnose", str(cohort), "--out", str(cohort / "results.jsonl"), "--model", str(tmp_path / "m")],
         "--out lies inside the input"),
        (["diagnose", str(cohort / "case-001" / "case.json"), "--out", str(cohort / "case-001" / "case.json")],
         "--out is the input"),
        (["tasks", "build", str(cohort), "--out", str(cohort / "ds")], "--out lies inside the input"),
        (["tasks", "build", str(cohort), "--out", str(tmp_path), "--overwrite"], "--out holds the input"),
        (["model", "init", "--tiny", "--out", str(cohort), "--stats-from", str(cohort), "--overwrite"],
         "--out is the input"),
        (["train", "encoders", "--cohort", str(cohort), "--out", str(cohort / "ckpt")], "--out lies inside the input"),
        (["train", "sft", "--cohort", str(cohort), "--init", str(tmp_path / "enc"), "--out", str(tmp_path / "enc")],
         "--out is the input"),
        (["demo", "--out", str(tmp_path), "--model", str(tmp_path / "m")], "--out holds the input"),
    ]:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and problem in err and "Traceback" not in err, (args, err)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_import_and_eval_outputs_must_lie_apart_from_their_inputs(tmp_path, capsys):

    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("L", (16, 16), 100).save(images / "a.png")
    assert main(["import", "image", str(images), "--out", str(images / "cohort")]) == 2
    assert "lies inside the input" in capsys.readouterr().err
    assert not (images / "cohort").exists()
    data = tmp_path / "bench" / "medqa.jsonl"
    data.parent.mkdir()
    data.write_text("", encoding="utf-8")
    assert main(["eval", "run", "--model", "openai:http://127.0.0.1:9", "--benchmark", "medqa", "--data", str(data),
                 "--out", str(data.parent)]) == 2
    assert "holds the input" in capsys.readouterr().err
