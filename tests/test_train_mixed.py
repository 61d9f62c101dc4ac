"""Mixed-source training (`train.mixed`) and the per-source model card (`train.source_card`),
on tiny models and the real image fixtures of tests/fixtures/real (Kermany, NIH, ieee8023)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_model_diagnose import TINY

from medfuse.errors import ConfigError
from medfuse.io.image import read_image
from medfuse.model import MedFuse
from medfuse.model.config import ModelConfig
from medfuse.record.case import Demographics, Diagnosis, Finding, Labels, PatientCase
from medfuse.record.store import case_summary_row, write_case, write_index
from medfuse.train.config import EncodersConfig
from medfuse.train.mixed import (
    Source,
    annotate_items,
    build_sources,
    image_finding_loss,
    masked_fusion_loss,
    source_split,
)
from medfuse.train.source_card import LabelledSource, age_band, source_card

REAL = Path(__file__).parent / "fixtures" / "real"
KERMANY = sorted(REAL.glob("kermany/test/*/*.jpeg"))  # 224 px: cheap to write into a cohort
IMAGES = [*KERMANY, *sorted(REAL.glob("nih_cxr/images/*.png")), *sorted(REAL.glob("ieee8023/images/*.jpg"))]
_READ: dict[Path, object] = {}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model() -> MedFuse:
    return MedFuse.build(ModelConfig.from_dict(TINY), tiny_llm=True)


def _xray_case(i: int, pneumonia: bool, *, patient: str | None = None, sex: str | None = None,
               age: float | None = None, findings: tuple[str, ...] = (), images: list[Path] | None = IMAGES
               ) -> PatientCase:
    """A labelled case around one of the real fixture images (they cycle; `images=None`: no image)."""
    labels = Labels(diagnoses=[Diagnosis(name="pneumonia", icd10="J18.9")] if pneumonia else [],
                    findings=[Finding(label=f) for f in findings])
    cxr = []
    if images:
        path = images[i % len(images)]
        if path not in _READ:
            _READ[path] = read_image(path)
        cxr = [_READ[path].model_copy(deep=True)]
    return PatientCase(case_id=f"c{i:03d}", patient_id=patient or f"p{i:03d}", cxr=cxr,
                       demographics=Demographics(sex=sex, age=age), labels=labels)


def _write_cohort(folder: Path, cases: list[PatientCase]) -> Path:
    for case in cases:
        write_case(case, folder / case.case_id)
    write_index(folder, [case_summary_row(c, c.case_id) for c in cases])
    return folder


# ---------------------------------------------------------------- masking


def _batch(model: MedFuse, cases: list[PatientCase], source: Source) -> dict[str, torch.Tensor]:
    from medfuse.model.inputs import collate, featurize_many

    items = featurize_many(cases, model.config, model.stats, model.panel)
    annotate_items(items, cases, source, model.panel.keys, model.config.finding_labels)
    return collate(items)


def test_targets_a_source_does_not_annotate_get_no_gradient(tiny_model):
    keys = tiny_model.panel.keys
    cases = [_xray_case(i, pneumonia=i % 2 == 0) for i in range(4)]
    real = Source(name="kermany", path="-", diseases=("pneumonia",), weight=2.0)
    batch = _batch(tiny_model, cases, real)
    out = tiny_model.fusion(batch)
    logits = out.disease_logits.detach().requires_grad_(True)
    loss = masked_fusion_loss(tiny_model.fusion, batch, SimpleNamespace(**{**out.__dict__, "disease_logits": logits}))
    loss.backward()
    j = keys.index("pneumonia")
    assert logits.grad[:, j].abs().min() > 0, "the annotated target trains"
    others = [k for k in range(len(keys)) if k != j]
    assert torch.all(logits.grad[:, others] == 0), "an unannotated target is neither positive nor negative"
    # Flipping an unannotated label changes nothing; flipping pneumonia does.
    out = SimpleNamespace(**{k: v.detach() if torch.is_tensor(v) else v for k, v in out.__dict__.items()})
    out.aux_logits = {m: v.detach() for m, v in out.aux_logits.items()}
    base = float(masked_fusion_loss(tiny_model.fusion, batch, out))
    flipped = dict(batch, labels=batch["labels"].clone())
    flipped["labels"][:, others] = 1.0
    assert float(masked_fusion_loss(tiny_model.fusion, flipped, out)) == pytest.approx(base)
    flipped["labels"][:, j] = 1 - flipped["labels"][:, j]
    assert float(masked_fusion_loss(tiny_model.fusion, flipped, out)) != pytest.approx(base)


def test_fully_annotated_unit_weight_loss_is_the_fusion_models_own(tiny_model):
    cases = [_xray_case(i, pneumonia=i == 1) for i in range(3)]
    batch = _batch(tiny_model, cases, Source(name="synthetic", path="-"))
    out = tiny_model.fusion(batch)
    assert float(masked_fusion_loss(tiny_model.fusion, batch, out)) == pytest.approx(
        float(tiny_model.fusion.loss(batch, out)), rel=1e-5)


def test_image_level_finding_loss_only_on_annotated_labels(tiny_model):
    labels = tiny_model.config.finding_labels
    cases = [_xray_case(i, False, findings=("cardiomegaly",) if i else ()) for i in range(3)]
    batch = _batch(tiny_model, cases, Source(name="nih", path="-", diseases=("pneumonia",),
                                             findings=("cardiomegaly", "nodule")))
    assert batch["finding_image_labels"][1:, labels.index("cardiomegaly")].tolist() == [1.0, 1.0]
    assert not batch["box_rows"].any(), "unboxed real findings do not train the box slots"
    logits = torch.zeros(3, len(labels) * 2, requires_grad=True)
    image_finding_loss(logits, batch).backward()
    grad = logits.grad.view(3, len(labels), 2).abs().sum(dim=(0, 2))
    trained = {labels[q] for q in range(len(labels)) if grad[q] > 0}
    assert trained == {"cardiomegaly", "nodule"}


# ---------------------------------------------------------------- splits and config


def test_each_source_is_split_by_patient_with_its_own_fractions(tmp_path):
    # 30 patients with 1-3 images each: no patient may straddle two splits.
    cases = [_xray_case(10 * p + k, p % 2 == 0, patient=f"pt{p}", images=None) for p in range(30)
             for k in range(1 + p % 3)]
    cohort = _write_cohort(tmp_path / "real", cases)
    source = Source(name="real", path=str(cohort), diseases=("pneumonia",), fractions=(0.6, 0.1, 0.3))
    parts = {name: source_split(source, name) for name in ("train", "val", "test")}
    patients = {name: {c.patient_id for c in part} for name, part in parts.items()}
    assert sum(len(p) for p in parts.values()) == len(cases)
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"]
                or patients["val"] & patients["test"])
    assert len(patients["train"]) > len(patients["test"]) > 0
    no_test = Source(name="real", path=str(cohort), fractions=(0.9, 0.1, 0.0))
    assert source_split(no_test, "test") == []


@pytest.mark.parametrize(("entry", "message"), [
    ({"path": "x", "wieght": 2}, "unknown key 'wieght'"),
    ({"path": "x", "weight": 0}, "weight: must be a number > 0"),
    ({"path": "x", "fractions": [0.5, 0.5, 0.5]}, "fractions"),
    ({"weight": 1}, "path: required"),
])
def test_malformed_extra_cohort_is_one_config_error(entry, message):
    with pytest.raises(ConfigError, match=message):
        EncodersConfig.from_dict({"cohort": "c", "out": "o", "extra_cohorts": [entry]})


def test_unknown_disease_name_is_refused(tiny_model):
    with pytest.raises(ConfigError, match="'pneumonitis' is not one of the model's"):
        build_sources("c", [{"path": "r", "diseases": ["pneumonitis"]}], tiny_model.panel.keys,
                      tiny_model.config.finding_labels)


def test_mixed_encoder_stage_trains_and_records_every_source(small_synth_cohort, tmp_path):
    from medfuse.train.encoders import train_encoders

    real = _write_cohort(tmp_path / "kermany_like", [_xray_case(i, i % 2 == 0, patient=f"k{i // 2}", images=KERMANY)
                                                     for i in range(40)])
    out = tmp_path / "ckpt"
    cfg = EncodersConfig.from_dict({
        "cohort": str(small_synth_cohort), "out": str(out), "model": TINY, "tiny_llm": True, "epochs": 1,
        "batch_size": 16, "contrastive_weight": 0.0, "quiet": True,
        "extra_cohorts": [{"path": str(real), "weight": 2.0, "diseases": ["pneumonia"],
                           "fractions": [0.6, 0.2, 0.2]}]})
    summary = train_encoders(cfg)
    card = MedFuse.load(out).card
    synth, kermany = card["stages"][-1]["sources"]
    assert kermany["name"] == "kermany_like" and kermany["diseases"] == ["pneumonia"] and kermany["weight"] == 2.0
    assert synth["diseases"] == "all" and synth["boxes"] and synth["cases"]["test"] > 0
    assert sum(kermany["cases"].values()) == 40 and kermany["cases"]["test"] > 0
    assert summary["train_cases"] == synth["cases"]["train"] + kermany["cases"]["train"]
    assert sum(synth["cases"].values()) == 48
    # The pooled validation figures are over the fully annotated (synthetic) cases only.
    assert summary["validation"]["diagnosis"]["n_samples"] == synth["cases"]["val"]
    assert "fully annotated" in summary["validation"]["diagnosis"]["scored_on"]
    assert "kermany_like" in card["training_data"] and str(tmp_path) not in card["training_data"]


# ---------------------------------------------------------------- per-source card


def test_age_bands():
    assert [age_band(a) for a in (None, 3, 18, 64.5, 65, 90)] == [None, "0-17", "18-39", "40-64", "65+", "65+"]


def test_source_card_reports_each_source_with_sane_cis_and_subgroup_gaps(tiny_model, tmp_path):
    adults = [_xray_case(i, i % 3 != 0, patient=f"a{i // 2}", sex="F" if i % 4 < 2 else "M",
                         age=30 + (i % 5) * 12, findings=("cardiomegaly",) if i % 2 else ())
              for i in range(48)]
    children = [_xray_case(100 + i, i % 2 == 0) for i in range(12)]
    card = source_card(tiny_model, [
        LabelledSource("adult", adults, diseases=("pneumonia",), findings=("cardiomegaly",), note="test split"),
        LabelledSource("pediatric", children, diseases=("pneumonia",)),
    ], n_resamples=100, min_class=3)
    adult, child = card["sources"]
    assert (adult["name"], adult["n_cases"], adult["n_patients"], adult["note"]) == ("adult", 48, 24, "test split")
    assert set(adult["diseases"]) == {"pneumonia"}, "only the annotated disease is scored"
    p = adult["diseases"]["pneumonia"]
    assert p["n"] == 48 and p["n_positive"] == 32
    for metric in ("auroc", "f1"):
        lo, hi = p[f"{metric}_ci95"]
        assert 0.0 <= lo <= p[metric] <= hi <= 1.0
    sex = p["subgroups"]["sex"]
    assert set(sex["groups"]) == {"F", "M"} and sex["unknown"] == 0
    f, m = sex["groups"]["F"]["auroc"], sex["groups"]["M"]["auroc"]
    assert sex["gap"]["auroc"]["gap"] == pytest.approx(abs(f - m), abs=2e-3)
    assert sex["gap"]["auroc"]["worst_group"] == ("F" if f <= m else "M")
    lo, hi = sex["gap"]["auroc"]["gap_ci95"]
    assert 0.0 <= lo <= hi <= 1.0
    assert set(p["subgroups"]["age"]["groups"]) <= {"18-39", "40-64", "65+"}
    assert adult["findings"]["cardiomegaly"]["n_positive"] == 24
    assert adult["demographics_recorded"] == {"sex": "48 of 48 cases", "age": "48 of 48 cases"}
    # A source without sex or age says so instead of reporting an empty gap.
    assert child["demographics_recorded"] == {"sex": "not recorded", "age": "not recorded"}
    assert child["diseases"]["pneumonia"]["subgroups"]["sex"] == "not recorded by this source"
    assert "findings" not in child


def test_one_class_source_reports_why_not_a_number(tiny_model):
    card = source_card(tiny_model, [LabelledSource("all-positive", [_xray_case(i, True) for i in range(6)],
                                                   diseases=("pneumonia",))], n_resamples=50)
    p = card["sources"][0]["diseases"]["pneumonia"]
    assert p["auroc"] is None and p["auroc_ci95"] is None and p["why"] == "one class only"
    assert p["f1"] is not None or p["f1_ci95"] is None
