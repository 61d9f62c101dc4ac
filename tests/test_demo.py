"""`medfuse demo` runs end to end offline on built-in defaults."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from sklearn.metrics import jaccard_score

from medfuse.cli import main
from medfuse.knowledge.panel import load_panel
from medfuse.record import read_case
from medfuse.record.store import iter_cohort


def test_demo_imports_samples_diagnoses_a_fresh_cohort_and_writes_the_summary(tmp_path, capsys):
    from test_model_diagnose import TINY

    torch.set_num_threads(1)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    ckpt = tmp_path / "ckpt"
    assert main(["model", "init", "--out", str(ckpt), "--config", str(cfg), "--tiny"]) == 0
    capsys.readouterr()
    out_dir = tmp_path / "demo"
    assert main(["demo", "--out", str(out_dir), "--model", str(ckpt), "--n", "4", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    # the real bundled records were imported through the real importers
    ecg_case = read_case(out_dir / "sample_cohort" / "00001_lr")
    assert ecg_case.ecg.signal.shape == (1000, 12) and ecg_case.ecg.fs == 100
    cxr_case = read_case(out_dir / "sample_cohort" / "00000001_000")
    assert cxr_case.cxr[0].pixels.shape == (512, 512)
    assert [f.label for f in cxr_case.labels.findings] == ["Cardiomegaly"]
    # a fresh synthetic cohort with its datasheet, an interpreted case, a full diagnosis
    assert (out_dir / "synth_cohort" / "DATASHEET.md").is_file()
    assert "interpreted evidence:" in out and ("[labs[" in out or "[ecg:" in out)
    assert "diagnoses:" in out and "modality weights:" in out and "report:" in out
    results = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    assert len(results) == 4 and {"diagnoses", "evidence", "findings", "modality_weights"} <= set(results[0])
    scores = json.loads((out_dir / "scores.json").read_text())
    # scores.json is the score of results.jsonl against the fresh cohort's labels,
    # recomputed here with scikit-learn (two empty sets agree: Jaccard 1).
    panel = load_panel()
    cohort = list(iter_cohort(out_dir / "synth_cohort"))
    gold = [{panel.lookup(n).name for n in c.labels.disease_names()} for c in cohort]
    pred = [{d["name"] for d in r["diagnoses"] if d["present"]} for r in results]
    names = sorted(set().union(*gold, *pred))
    multi_hot = lambda sets: [[n in s for n in names] for s in sets]  # noqa: E731
    expected = jaccard_score(multi_hot(gold), multi_hot(pred), average="samples", zero_division=1) if names else 1.0
    assert scores["n_cases"] == len(cohort) == 4
    assert scores["mean_jaccard"] == pytest.approx(expected, abs=1e-4)
    page = (out_dir / "summary.html").read_text()
    assert page.count("data:image/png;base64,") >= 2 and "scores" in page.lower()
