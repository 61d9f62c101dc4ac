"""`medfuse explain`: attributions, ablation, counterfactuals, faithfulness, HTML and the CLI,
on the shipped checkpoint (disease head only, no generation) and fresh synthetic cases."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from medfuse.cli import main
from medfuse.explain import (
    deletion_insertion,
    explain_case,
    explanation_html_fragment,
    render_html,
)
from medfuse.explain.counterfactual import (
    VITAL_RANGES,
    apply_changes,
    lab_plausible_range,
)
from medfuse.explain.explanation import without_modality
from medfuse.explain.features import Item
from medfuse.knowledge.labs import load_lab_catalogue
from medfuse.model import MedFuse
from medfuse.model.locate import shipped_checkpoint
from medfuse.record import write_case
from medfuse.record.case import Note
from medfuse.synth.cohort import SynthConfig, synth_case

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SECRET = "PATIENT-7731-SECRET"


@pytest.fixture(scope="module")
def model() -> MedFuse:
    return MedFuse.load(shipped_checkpoint())


@pytest.fixture(scope="module")
def case():
    # A case the shipped head reports several diseases for (heart failure among them).
    c = synth_case(7, 0, SynthConfig())
    notes = [*c.notes, Note(text=f"Seen by Dr Smith for patient {SECRET}.", type="history")]
    return c.model_copy(update={"patient_id": SECRET, "notes": notes})


@pytest.fixture(scope="module")
def explanation(model, case):
    return explain_case(model, case)


def test_attributions_are_complete_per_modality(model, explanation):
    assert explanation.explained and len(explanation.attributions) == len(explanation.explained)
    for a in explanation.attributions:
        for m, p_base in a.modality_baselines.items():
            total = sum(it.attribution for it in a.items if it.modality == m)
            # captum's delta is exactly sum(attributions) - (P - P_baseline) ...
            assert total - (a.probability - p_base) == pytest.approx(a.convergence_delta[m], abs=2e-3)
            # ... and it is small: the attributions account for the change.
            assert abs(a.convergence_delta[m]) < 0.15, (a.disease, m, a.convergence_delta[m])
        assert set(a.modality_baselines) == {"ecg", "labs", "vitals"}


def test_one_item_modalities_score_their_exact_removal(model, case, explanation):
    # The radiograph and the notes are occluded as a whole: their score is the drop in P
    # when the case is re-fused without them, which the ablation measures independently.
    ablation = {row.modality: row for row in explanation.ablation}
    for a in explanation.attributions:
        for it in a.items:
            if it.modality in ("cxr", "notes"):
                assert it.attribution == pytest.approx(-ablation[it.modality].change[a.disease], abs=2e-3)


def test_ablation_equals_refusing_without_the_modality(model, case, explanation):
    assert {row.modality for row in explanation.ablation} == set(case.modalities()) == set(explanation.modalities_present)
    base = model.fuse([case]).probabilities[0]
    for row in explanation.ablation:
        empty = {"ecg": None}.get(row.modality, [])
        alone = model.fuse([case.model_copy(update={row.modality: empty})]).probabilities[0]
        for j, d in enumerate(model.panel.keys):
            assert row.probabilities[d] == pytest.approx(alone[j], abs=1e-4)
            assert row.change[d] == pytest.approx(alone[j] - base[j], abs=1e-4)
    assert without_modality(case, "ecg").ecg is None and without_modality(case, "labs").cxr == case.cxr


def test_saliency_maps_cover_the_image_and_the_recorded_leads(explanation, case):
    for a in explanation.attributions:
        grid = np.asarray(a.image_saliency.grid)
        assert grid.ndim == 2 and grid.shape[0] == grid.shape[1] >= 4 and np.abs(grid).max() > 0
        sal = a.ecg_saliency
        assert sal.leads == [it.item for it in a.items if it.modality == "ecg"] or \
            set(sal.leads) == {it.item for it in a.items if it.modality == "ecg"}
        assert len(sal.scores) == len(sal.leads) and all(len(r) == 10 for r in sal.scores)
        # Segment scores of a lead sum to that lead's attribution.
        lead_attr = {it.item: it.attribution for it in a.items if it.modality == "ecg"}
        for lead, row in zip(sal.leads, sal.scores, strict=True):
            assert sum(row) == pytest.approx(lead_attr[lead], abs=1e-4)


def test_counterfactuals_flip_the_decision_and_stay_plausible(model, case, explanation):
    catalogue = load_lab_catalogue()
    assert explanation.counterfactuals, "no counterfactual found for a case with several reported diseases"
    hf = [cf for cf in explanation.counterfactuals if cf.disease == "heart_failure"]
    assert hf and "instead of" in hf[0].text and "P(heart failure)" in hf[0].text
    for cf in explanation.counterfactuals:
        changes = [(Item(c.modality, c.item, c.label, c.original, c.unit), c.proposed) for c in cf.changes]
        modified = apply_changes(case, changes, catalogue)
        j = model.panel.keys.index(cf.disease)
        fused = model.fuse([modified])
        p, thr = fused.probabilities[0, j], fused.thresholds[j]
        was_present = next(d.present for d in explanation.diseases if d.disease == cf.disease)
        assert cf.valid == bool((p < thr) if was_present else (p >= thr))
        assert cf.probability_after == pytest.approx(p, abs=1e-3)
        for c in cf.changes:
            low, high = lab_plausible_range(catalogue, c.item) if c.modality == "labs" else VITAL_RANGES[c.item]
            assert low <= c.proposed <= high and c.proposed != c.original
    valid = [cf.valid for cf in explanation.counterfactuals]
    assert sum(valid) / len(valid) >= 0.75


def test_explanation_json_has_no_patient_identifiers(explanation):
    text = explanation.model_dump_json()
    assert SECRET not in text and "Smith" not in text
    data = json.loads(text)
    assert data["case_id"] == "synth-000000" and "patient_id" not in data


def test_html_page_and_fragment(explanation, case):
    page = render_html(explanation, case)
    fragment = explanation_html_fragment(explanation, case)
    assert page.startswith("<!DOCTYPE html>") and "<head>" in page and fragment in page
    assert "<html" not in fragment and "<head" not in fragment
    assert fragment.count("data:image/png;base64,") >= 2  # radiograph overlay and ECG strip
    assert "Modality ablation" in fragment and "instead of" in fragment
    assert SECRET not in page


def test_deletion_in_attribution_order_beats_random(model):
    cases = [synth_case(9, i, SynthConfig()) for i in (0, 2)]
    explanations = [explain_case(model, c, counterfactuals=False) for c in cases]
    report = deletion_insertion(model, cases, explanations=explanations, n_random=3)
    assert report.n_pairs >= 2
    assert report.deletion_aopc > report.deletion_aopc_random and report.deletion_ratio > 1.5
    # The measure can tell: attributions turned upside down delete the evidence last.
    flipped = [e.model_copy(update={"attributions": [
        a.model_copy(update={"items": [it.model_copy(update={"attribution": -it.attribution}) for it in a.items]})
        for a in e.attributions]}) for e in explanations]
    worse = deletion_insertion(model, cases, explanations=flipped, n_random=3)
    assert worse.deletion_aopc < report.deletion_aopc and worse.deletion_ratio < 1.0


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medfuse", "explain", *args], check=False, capture_output=True,
                          text=True, timeout=300)


def test_cli_json_and_html(tmp_path, capsys):
    write_case(synth_case(7, 2, SynthConfig()), tmp_path / "case")  # one reported disease: quick
    page = tmp_path / "out" / "explain.html"
    code = main(["explain", str(tmp_path / "case"), "--model", str(shipped_checkpoint()), "--json", "--html", str(page),
                 "--disease", "lung cancer"])
    out = capsys.readouterr()
    assert code == 0, out.err
    data = json.loads(out.out)
    assert data["case_id"] == "synth-000002" and "lung_cancer" in data["explained"]
    assert all(math.isfinite(d["probability"]) for d in data["diseases"])
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "data:image/png;base64," in text
    assert not list(page.parent.glob(".*.tmp"))


def test_cli_bad_input_is_one_line(tmp_path):
    write_case(synth_case(7, 1, SynthConfig()), tmp_path / "cohort" / "a")
    write_case(synth_case(7, 2, SynthConfig()), tmp_path / "cohort" / "b")
    for args, problem in (((str(tmp_path / "cohort"),), "explain takes one case folder"),
                          ((str(tmp_path / "missing"),), "no such file or folder"),
                          ((str(tmp_path / "cohort" / "a"), "--html", str(tmp_path / "cohort" / "a" / "x.html")),
                           "lies inside the input")):
        r = _run(*args)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert r.stderr.strip().count("\n") == 0 and problem in r.stderr, r.stderr
    assert not (tmp_path / "cohort" / "a" / "x.html").exists()
