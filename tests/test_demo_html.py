"""The HTML summary page of `medfuse demo` (medfuse.html_summary)."""

from __future__ import annotations

import base64
import io
import re
import sys

import numpy as np
import pytest
from PIL import Image

from medfuse.html_summary import render_html_summary, write_html_summary
from medfuse.model.diagnosis import (
    DiagnoseResult,
    Diagnosed,
    DiagnosisEntry,
    EvidenceEntry,
    FindingEntry,
    ModalityWeights,
    ModelInfo,
)
from medfuse.model.faithfulness import ReasoningCheck, UnsupportedClaim
from medfuse.record.case import ECG, CXRImage, LabResult, Note, PatientCase
from medfuse.record.evidence import Evidence
from medfuse.synth.cohort import SynthConfig, synth_case

EVIL = "<script>alert(1)</script>"
EVIL_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
IMG = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')
SCORES = {"n_cases": 3, "macro_f1": 0.512, "micro_f1": float("nan"), "mean_jaccard": None,
          "per_disease": {"atrial fibrillation": {"f1": 0.5, "auroc": 0.75, "support": 2},
                          "pneumonia": {"f1": 0.0, "support": 0}}}  # no AUROC without positives


def diagnosed(case: PatientCase, reasoning: str = "Atrial fibrillation on the ECG.", report: str = "Impression: AF.",
              dropped: list[UnsupportedClaim] | None = None) -> Diagnosed:
    """A hand-built diagnosis: predicted boxes are the ground truth ones shifted a little."""
    findings = []
    if case.labels is not None and case.cxr:
        findings = [FindingEntry(label=f.label, box=[min(999, v + 15) for v in b])
                    for f in case.labels.findings for b in f.boxes]
    evidence = [Evidence(modality="labs", item="creatinine", value=2.1, unit="mg/dL", interpretation="high",
                         abnormal=True, source="labs[1]"),
                Evidence(modality="vitals", item="spo2", value=97.0, unit="%", interpretation="normal",
                         source="vitals[0]")]
    result = DiagnoseResult(
        case_id=case.case_id,
        diagnoses=[DiagnosisEntry(name="atrial fibrillation", icd10="I48", probability=0.81, present=True),
                   DiagnosisEntry(name="pneumonia", icd10="J18", probability=0.12, present=False)],
        evidence=[EvidenceEntry(modality=e.modality, item=e.item, value=e.value, interpretation=e.interpretation,
                                source=e.source) for e in evidence],
        findings=findings,
        modality_weights=ModalityWeights(ecg=0.3 if case.ecg else 0.0, cxr=0.25 if case.cxr else 0.0, labs=0.2,
                                         vitals=0.15, notes=0.1, genomics=0.0),
        reasoning=reasoning, report=report, insufficient_data=["lung cancer"],
        model=ModelInfo(name="medfuse-test", version="9.9.9"),
    )
    check = ReasoningCheck(text=reasoning, dropped=dropped or [], n_sentences=1 + len(dropped or []))
    return Diagnosed(result=result, check=check, raw_text="", evidence=evidence)


@pytest.fixture(scope="module")
def cohort() -> list[tuple[PatientCase, Diagnosed]]:
    """Two cases with every modality (ECG cut to 4 s: cheaper) and one without ECG or image."""
    full = SynthConfig(p_cxr=1.0, p_ecg=1.0, p_labs=1.0, p_vitals=1.0)
    cases = [synth_case(7, i, full) for i in range(2)] + [synth_case(7, 5, SynthConfig(p_cxr=0.0, p_ecg=0.0))]
    for c in cases[:2]:
        c.ecg = c.ecg.model_copy(update={"signal": c.ecg.signal[:2000], "n_samples": 2000})
    assert cases[2].ecg is None and not cases[2].cxr
    # User data with markup in it: a note, a lab name, the model's reasoning and report.
    evil = cases[0]
    evil.notes.append(Note(text=f"patient says {EVIL}", type="history"))
    evil.labs.append(LabResult(name=f"weird {EVIL}", value=1.0, unit="mg/dL", flag="H"))
    evil.patient_id = "MRN-0042-SECRET"
    dropped = [UnsupportedClaim(sentence=f"Potassium is 9.9 {EVIL}.", reason="states 9.9 for potassium, which "
                                "does not match the case")]
    d = diagnosed(evil, reasoning=f"AF on the ECG. {EVIL}", report=f"Impression: {EVIL}", dropped=dropped)
    d.dropped_findings = ["nodule: box [5, 5, 1200, 9] is not a valid 0-999 box"]
    items = [(evil, d)]
    items += [(c, diagnosed(c)) for c in cases[1:]]
    return items


@pytest.fixture(scope="module")
def page(cohort, tmp_path_factory) -> str:
    out = write_html_summary(tmp_path_factory.mktemp("html") / "summary.html", cohort, scores=SCORES)
    return out.read_text(encoding="utf-8")


def sections(page: str) -> dict[str, str]:
    """case_id -> the HTML of its section."""
    parts = page.split('<section class="case" id="case-')[1:]
    return {p.split('"', 1)[0]: p.split("</section>", 1)[0] for p in parts}


def test_the_page_is_one_self_contained_html_file_with_valid_pngs(page, cohort):
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # Nothing is loaded from elsewhere: no scripts, stylesheets, fonts or remote images.
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    srcs = re.findall(r'src="([^"]*)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    images = IMG.findall(page)
    # One chest X-ray and one ECG for each of the two full cases, nothing for the lean one.
    assert len(images) == len(srcs) == 4
    assert sum("chest X-ray" in alt for alt, _ in images) == 2 and sum("ECG" in alt for alt, _ in images) == 2
    for case, _ in cohort:
        assert f'id="case-{case.case_id}"' in page and f'href="#case-{case.case_id}"' in page
    alt, data = next(x for x in images if "chest X-ray" in x[0])
    img = Image.open(io.BytesIO(base64.b64decode(data)))
    assert img.format == "PNG"
    img.verify()  # a valid PNG, not just base64
    img = Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")
    px = np.asarray(img).reshape(-1, 3).astype(int)
    # The boxes are drawn: the model's orange and the ground truth's blue both occur.
    assert (np.abs(px - [255, 140, 0]).sum(axis=1) < 40).any()
    assert (np.abs(px - [30, 144, 255]).sum(axis=1) < 40).any()
    _, ecg_data = next(x for x in images if "ECG" in x[0])
    assert Image.open(io.BytesIO(base64.b64decode(ecg_data))).size[0] >= 800


def test_every_user_text_is_escaped_and_no_identifier_beyond_case_id_is_shown(page):
    assert EVIL not in page and "<b>" not in page
    assert page.count(EVIL_ESCAPED) >= 4  # reasoning, removed claim, report, lab name
    assert "MRN-0042-SECRET" not in page  # patient id
    assert "patient says" not in page  # notes are not part of the page
    assert "2130-" not in page and "2131-" not in page  # the synthetic encounter dates


def test_each_case_section_has_its_panels(page, cohort):
    by_id = sections(page)
    full_id = cohort[1][0].case_id
    full = by_id[full_id]
    for heading in ("Chest X-ray", "Modality weights", "Diagnoses", "ECG", "Vital signs", "Labs",
                    "Evidence chain", "Reasoning", "Report"):
        assert f"<h3>{heading}</h3>" in full, heading
    assert "<th>ground truth</th>" in full  # the synthetic case has labels
    assert "Not assessed, insufficient data" in full and "lung cancer" in full
    assert "creatinine" in full and "2.1 mg/dL" in full and 'class="abn"' in full
    assert "0 (absent)" in full  # genomics weight
    truth = cohort[1][0].labels.findings
    if truth:  # the boxes are listed as text too
        assert f"<td>ground truth</td><td>{truth[0].label}</td><td class=\"num\">{truth[0].boxes[0]}</td>" in full
    assert '<span class="yes">yes</span>' in full


def test_removed_claims_are_listed_apart_and_labelled_as_removed(page, cohort):
    evil = sections(page)[cohort[0][0].case_id]
    reasoning = evil.split("<h3>Reasoning</h3>", 1)[1].split("<h3>Report</h3>", 1)[0]
    shown, removed = reasoning.split('<div class="removed">', 1)
    removed, boxes = removed.split('<div class="removed boxes">', 1)
    assert "Potassium is 9.9" not in shown and "Potassium is 9.9" in removed
    assert "not facts" in removed and "(removed: states 9.9 for potassium" in removed
    assert "Image boxes removed" in boxes and "nodule: box [5, 5, 1200, 9]" in boxes
    assert "removed" not in sections(page)[cohort[1][0].case_id].split("<h3>Reasoning</h3>", 1)[1]


def test_a_case_without_ecg_or_image_says_so(page, cohort):
    lean = sections(page)[cohort[2][0].case_id]
    assert "no ECG" in lean and "no chest X-ray" in lean and "<img" not in lean
    # Loaded-but-empty and partly missing cases render too.
    case = PatientCase(case_id="bare", ecg=ECG(fs=500.0, leads=["I"]), cxr=[CXRImage(file="x.png")])
    html = render_html_summary([(case, diagnosed(case))])
    assert "ECG recorded but its signal is not loaded" in html and "pixels not loaded" in html
    assert "no labs" in html and "no vital signs" in html
    assert "<th>ground truth</th>" not in html  # no labels: no ground-truth column


def test_nonstandard_leads_and_a_large_16_bit_image_render():
    rng = np.random.default_rng(0)
    signal = np.cumsum(rng.normal(0, 0.02, (500, 3)), axis=0)
    signal[100:120, 1] = np.nan  # a gap in one lead
    pixels = (rng.random((1200, 1000)) * 4095).astype(np.uint16)  # a 12-bit detector
    case = PatientCase(case_id="odd", ecg=ECG(signal=signal, fs=250.0, leads=["X", "Y", "Z"]),
                       cxr=[CXRImage(pixels=pixels, view="AP")])
    html = render_html_summary([(case, diagnosed(case))])
    assert len(IMG.findall(html)) == 2 and "could not be drawn" not in html
    assert "3 leads, 250 Hz, 2.0 s" in html


def test_scores_render_as_a_table_with_missing_values_as_na(page):
    scores = page.split('<section class="scores" id="scores">', 1)[1].split("</section>", 1)[0]
    cells = dict(re.findall(r'<tr><td>([^<]*)</td><td class="num">([^<]*)</td></tr>', scores))
    assert cells["n_cases"] == "3" and cells["macro_f1"] == "0.512"
    assert cells["micro_f1"] == "n/a" and cells["mean_jaccard"] == "n/a"  # NaN and None are not 0
    pneumonia = re.search(r"<tr><td>pneumonia</td>(.*?)</tr>", scores).group(1)
    assert re.findall(r">([^<]*)</td>", pneumonia) == ["0.000", "n/a", "0"]  # f1, auroc (absent), support
    assert "<th>auroc</th>" in scores
    assert 'href="#scores"' in page
    assert "<section class=\"scores\"" not in render_html_summary([])  # no scores given: no section


def test_footer_disclaims_and_names_the_model(page):
    footer = page.split("<footer>", 1)[1]
    assert "research software, not a medical device" in footer and "medfuse-test 9.9.9" in footer


def test_the_write_is_atomic_and_replaces_an_existing_page(tmp_path, cohort, monkeypatch):
    out = tmp_path / "sub" / "demo.html"
    out.parent.mkdir()
    out.write_text("old page")
    items = cohort[2:]  # the lean case: no figures, fast
    assert write_html_summary(out, items, title="again") == out
    assert "<title>again</title>" in out.read_text() and "old page" not in out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["demo.html"]  # no temp file left

    # A write that fails at the rename leaves the old page and no temp file.
    import medfuse.record.store as store

    def fail(*_):
        raise OSError("disk full")

    monkeypatch.setattr(store.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_html_summary(out, items, title="third")
    assert "<title>again</title>" in out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["demo.html"]


def test_mismatched_pairs_are_refused(cohort):
    (_, d), (other, _) = cohort[1], cohort[2]
    with pytest.raises(ValueError, match="paired"):
        render_html_summary([(other, d)])


def test_rendering_leaves_pyplot_and_the_backend_alone(cohort):
    import matplotlib

    backend = matplotlib.get_backend()
    had_pyplot = "matplotlib.pyplot" in sys.modules
    render_html_summary(cohort[1:2])
    assert matplotlib.get_backend() == backend
    assert ("matplotlib.pyplot" in sys.modules) == had_pyplot


def test_real_diagnose_output_renders():
    """The tiny untrained model's output (arbitrary generated text) goes through as is."""
    import torch

    from medfuse.model.config import ModelConfig
    from medfuse.model.diagnosis import diagnose_many
    from medfuse.model import MedFuse
    from medfuse.record.case import MODALITIES

    tiny = {"d_model": 32, "n_heads": 2, "tokens": {m: 2 for m in MODALITIES}, "cxr_size": 32, "ecg_channels": 8,
            "cxr_vit": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "intermediate_size": 64, "patch_size": 16}}
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models gain nothing from threads on a shared 2-core machine
    try:
        model = MedFuse.build(ModelConfig.from_dict(tiny), tiny_llm=True)
        case = synth_case(7, 0, SynthConfig(p_cxr=1.0, p_ecg=1.0))
        case.ecg = case.ecg.model_copy(update={"signal": case.ecg.signal[:2000], "n_samples": 2000})
        [d] = diagnose_many(model, [case], max_new_tokens=8)
    finally:
        torch.set_num_threads(before)
    html = render_html_summary([(case, d)], scores={"n_cases": 1})
    assert f'id="case-{case.case_id}"' in html and len(IMG.findall(html)) == 2
    assert f"{d.result.model.name} {d.result.model.version}" in html
