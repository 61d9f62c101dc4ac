"""Model inputs: config, featurize (ECG leads by name, units, training-only stats, genomics vocabulary,
presence, labels), collate, MiniLM notes embedding."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pytest
import torch

from medfuse.errors import ConfigError, InputError
from medfuse.knowledge.labs import load_lab_catalogue
from medfuse.knowledge.panel import load_panel
from medfuse.model.config import ModelConfig
from medfuse.model.inputs import (
    GENOMICS_VOCAB,
    NOTES_DIM,
    FeatureStats,
    collate,
    embed_texts,
    featurize,
    genomics_multi_hot,
    notes_embedding,
)
from medfuse.record.case import (
    ECG,
    CXRImage,
    Diagnosis,
    Labels,
    LabResult,
    Note,
    PatientCase,
    Variant,
    VitalSigns,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


PANEL = load_panel()
CATALOGUE = load_lab_catalogue()
LEADS12 = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def small_config(**kw) -> ModelConfig:
    return ModelConfig(ecg_fs=100.0, ecg_seconds=4.0, cxr_size=32, cxr_vit={"patch_size": 8}, **kw)


def _slot(name: str) -> int:
    return LEADS12.index(name)


# ------------------------------------------------------------------ config
def test_config_defaults_match_the_interface_and_round_trip():
    c = ModelConfig()
    assert (c.d_model, c.n_heads, c.fusion, c.use_clues, c.llm) == (256, 4, "hybrid", True, "smollm2-135m")
    assert c.tokens == {"ecg": 8, "cxr": 8, "labs": 4, "vitals": 2, "notes": 2, "genomics": 2}
    assert (c.cxr_vit["hidden_size"], c.cxr_vit["num_hidden_layers"], c.cxr_vit["num_attention_heads"],
            c.cxr_vit["patch_size"]) == (192, 4, 3, 16)
    assert c.ecg_samples == 1000
    again = ModelConfig.from_dict(json.loads(json.dumps(c.as_dict())))
    assert again == c
    assert all(ModelConfig.help().values()), "every field has help text"


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'd_modle'"):
        ModelConfig.from_dict({"d_modle": 128})
    with pytest.raises(ConfigError, match="fusion"):
        ModelConfig.from_dict({"fusion": "middle"})
    with pytest.raises(ConfigError, match=r"tokens\.ecg"):
        ModelConfig.from_dict({"tokens": {"ecg": 1}})  # one token per modality is refused
    with pytest.raises(ConfigError, match="n_heads"):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ConfigError, match=r"cxr_vit\.hiden_size"):
        ModelConfig.from_dict({"cxr_vit": {"hiden_size": 64}})  # ViTConfig itself would ignore the typo
    # Partial nested mappings keep the other defaults.
    assert ModelConfig.from_dict({"tokens": {"labs": 6}}).tokens["ecg"] == 8
    bad = tmp_path / "model.yaml"
    bad.write_text("fusion: [unclosed\n")
    with pytest.raises(InputError, match="invalid YAML"):
        ModelConfig.from_yaml(bad)


# ------------------------------------------------------------------ ECG
def test_ecg_leads_are_placed_by_name_resampled_and_limb_leads_derived():
    fs, seconds = 500.0, 5.0
    t = np.arange(int(fs * seconds)) / fs
    lead_i = 0.5 * np.sin(2 * np.pi * 1.0 * t)
    lead_ii = 1.0 * np.cos(2 * np.pi * 1.5 * t)
    v1 = 0.3 * np.sin(2 * np.pi * 2.0 * t)
    # Source order is not the standard order; names are spelled as WFDB headers do.
    signal = np.stack([v1, lead_ii, lead_i], axis=1)  # (samples, 3)
    case = PatientCase(case_id="c1", ecg=ECG(signal=signal, fs=fs, leads=["v1", "ii", "i"]))
    item = featurize(case, small_config(), FeatureStats.identity(), PANEL, notes_emb=np.zeros(NOTES_DIM))
    ecg, mask = item["ecg"].numpy(), item["ecg_lead_mask"].numpy()
    assert ecg.shape == (12, 400)  # 4 s at 100 Hz: cropped from 5 s at 500 Hz
    t100 = np.arange(400) / 100.0
    inner = slice(20, 380)  # away from the resampling filter's edges
    np.testing.assert_allclose(ecg[_slot("I"), inner], 0.5 * np.sin(2 * np.pi * t100[inner]), atol=1e-2)
    np.testing.assert_allclose(ecg[_slot("V1"), inner], 0.3 * np.sin(4 * np.pi * t100[inner]), atol=1e-2)
    # Einthoven / Goldberger: derived exactly from I and II.
    np.testing.assert_allclose(ecg[_slot("III")], ecg[_slot("II")] - ecg[_slot("I")], atol=1e-5)
    np.testing.assert_allclose(ecg[_slot("aVR")], -(ecg[_slot("I")] + ecg[_slot("II")]) / 2, atol=1e-5)
    np.testing.assert_allclose(ecg[_slot("aVF")], ecg[_slot("II")] - ecg[_slot("I")] / 2, atol=1e-5)
    assert mask.tolist() == [1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert not ecg[_slot("V2")].any()  # a missing lead is zero and flagged by the mask

    # A short record is zero-padded, and a gap (NaN) does not poison the tensor.
    short = np.full((150, 1), 0.2)
    short[10] = np.nan
    case2 = PatientCase(case_id="c2", ecg=ECG(signal=short, fs=100.0, leads=["II"]))
    item2 = featurize(case2, small_config(), FeatureStats.identity(), PANEL, notes_emb=np.zeros(NOTES_DIM))
    lead = item2["ecg"][_slot("II")].numpy()
    assert np.isfinite(lead).all() and lead[10] == 0.0 and lead[149] == pytest.approx(0.2) and not lead[150:].any()
    assert item2["ecg_lead_mask"].tolist() == [0, 1] + [0] * 10


# ------------------------------------------------------------------ labs, vitals, stats
def _lab_case(case_id: str, creat_umol: float, k: float) -> PatientCase:
    return PatientCase(
        case_id=case_id,
        labs=[
            LabResult(name="Creatinine", value=creat_umol, unit="umol/L"),
            LabResult(name="K", value=k, unit="mmol/L"),
            LabResult(name="Mystery assay", value=3.0, unit="mg/dL"),  # not in the catalogue
            LabResult(name="Glucose", value=5.0, unit="furlongs"),  # unit the catalogue cannot convert
        ],
        vitals=[VitalSigns(time=dt.datetime(2130, 1, 1, 9), heart_rate=120.0),
                VitalSigns(time=dt.datetime(2130, 1, 1, 8), heart_rate=80.0, sbp=150.0)],
    )


def test_labs_are_converted_and_normalised_with_training_statistics_only():
    train = [_lab_case(f"t{i}", creat_umol=c, k=kk) for i, (c, kk) in enumerate([(70.7, 4.0), (88.4, 4.5), (176.8, 5.5)])]
    stats = FeatureStats.fit(train)
    ci = CATALOGUE.keys.index("creatinine")
    mg = np.array([70.7, 88.4, 176.8]) * 0.011312  # umol/L -> mg/dL
    assert stats.lab_mean[ci] == pytest.approx(np.log1p(mg).mean(), rel=1e-6)
    assert stats.lab_counts[ci] == 3 and stats.n_cases == 3

    test_case = _lab_case("x", creat_umol=884.0, k=6.0)  # a value far outside training
    item = featurize(test_case, small_config(), stats, PANEL, notes_emb=np.zeros(NOTES_DIM))
    labs = item["labs"].numpy()  # (L, 2)
    expected = (np.log1p(884.0 * 0.011312) - stats.lab_mean[ci]) / stats.lab_std[ci]
    assert labs[ci, 1] == 1.0 and labs[ci, 0] == pytest.approx(min(expected, 8.0), rel=1e-5)
    gi = CATALOGUE.keys.index("glucose")
    assert labs[gi].tolist() == [0.0, 0.0]  # unknown unit: not observed, never guessed
    assert labs[:, 1].sum() == 2
    # Statistics are those passed in: featurizing a test case never refits them.
    assert FeatureStats.fit(train).lab_mean == stats.lab_mean
    # Vitals: all training heart rates are 80 (the 08:00 set), so std falls back to 1 and 80 maps to 0.
    vit = item["vitals"].numpy()
    assert stats.vital_mean[0] == 80.0 and stats.vital_std[0] == 1.0
    assert vit[0].tolist() == [0.0, 1.0]


def test_vitals_use_the_presentation_snapshot_and_stats_round_trip():
    train = [PatientCase(case_id=f"v{i}", vitals=[VitalSigns(heart_rate=hr, sbp=sbp)])
             for i, (hr, sbp) in enumerate([(60.0, 110.0), (100.0, 150.0)])]
    stats = FeatureStats.fit(train)
    assert stats.vital_mean[:2] == [80.0, 130.0] and stats.vital_std[0] == pytest.approx(20.0)
    case = PatientCase(case_id="v", vitals=[VitalSigns(time=dt.datetime(2130, 1, 1, 9), heart_rate=120.0),
                                            VitalSigns(time=dt.datetime(2130, 1, 1, 8), heart_rate=90.0)])
    vit = featurize(case, small_config(), stats, PANEL, notes_emb=np.zeros(NOTES_DIM))["vitals"].numpy()
    assert vit[0].tolist() == [pytest.approx(0.5), 1.0]  # (90 - 80) / 20 from the 08:00 set
    assert vit[1].tolist() == [0.0, 0.0]  # no SBP recorded: value 0 and observed flag 0, not the mean
    again = FeatureStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert again.lab_keys == stats.lab_keys and again.vital_mean == stats.vital_mean and again.lab_std == stats.lab_std


# ------------------------------------------------------------------ genomics, CXR, presence, labels
def test_genomics_vocabulary_separates_drivers_from_benign_variants():
    def active(variants):
        v = genomics_multi_hot(variants)
        return {GENOMICS_VOCAB[i] for i in np.flatnonzero(v)}

    assert active([Variant(gene="EGFR", hgvs="p.L858R", consequence="missense_variant")]) == {"EGFR", "EGFR:missense", "EGFR_L858R"}
    assert active([Variant(gene="EGFR", hgvs="p.E746_A750del")]) == {"EGFR", "EGFR:inframe_indel", "EGFR_EX19DEL"}
    assert active([Variant(gene="EGFR", hgvs="p.Q787=")]) == {"EGFR", "EGFR:silent"}  # benign synonymous
    assert active([Variant(gene="EML4", hgvs="EML4::ALK", consequence="gene_fusion")]) == {"ALK", "ALK:fusion", "ALK_FUSION"}
    assert active([Variant(gene="ZNF999", hgvs="p.R12*")]) == {"OTHER_GENE", "OTHER_GENE:truncating"}
    assert active([]) == set()


def test_cxr_prefers_a_frontal_view_and_scales_16_bit_by_bit_depth():
    lateral = CXRImage(pixels=np.full((40, 30), 255, np.uint8), view="LATERAL")
    frontal = np.zeros((64, 48), np.uint16)
    frontal[:, 24:] = 4095  # a 12-bit detector in a 16-bit container
    case = PatientCase(case_id="x", cxr=[lateral, CXRImage(pixels=frontal, view="PA")])
    cxr = featurize(case, small_config(), FeatureStats.identity(), PANEL, notes_emb=np.zeros(NOTES_DIM))["cxr"]
    assert cxr.shape == (1, 32, 32)
    assert cxr[0, :, :14].max() == 0.0 and cxr[0, :, 18:].min() == pytest.approx(1.0)  # frontal, full range


def test_presence_flags_labels_and_collate():
    stats = FeatureStats.identity()
    emb = np.random.default_rng(0).normal(size=NOTES_DIM).astype(np.float32)
    with_notes = PatientCase(
        case_id="a", notes=[Note(text="cough")],
        genomics=[Variant(gene="KRAS", hgvs="p.G12C")],
        labels=Labels(diagnoses=[Diagnosis(name="AFib"), Diagnosis(name="x", icd10="J189"),
                                 Diagnosis(name="fracture", in_panel=False)]),
    )
    labs_only = PatientCase(case_id="b", labs=[LabResult(name="creatinine", value=1.1, unit="mg/dL")], labels=Labels())
    a = featurize(with_notes, small_config(), stats, PANEL, notes_emb=emb)
    b = featurize(labs_only, small_config(), stats, PANEL, notes_emb=np.zeros(NOTES_DIM))
    assert a["present"].tolist() == [False, False, False, False, True, True]  # cxr ecg labs vitals notes genomics
    assert b["present"].tolist() == [False, False, True, False, False, False]
    names = {PANEL.keys[i] for i in torch.nonzero(a["labels"]).flatten().tolist()}
    assert names == {"atrial_fibrillation", "pneumonia"}  # synonym and ICD-10 J18.9; out-of-panel ignored
    assert b["labels"].sum() == 0  # labelled, no panel disease
    batch = collate([a, b])
    L = len(CATALOGUE)
    shapes = {k: tuple(v.shape) for k, v in batch.items()}
    assert shapes == {"ecg": (2, 12, 400), "ecg_lead_mask": (2, 12), "cxr": (2, 1, 32, 32), "labs": (2, L, 2),
                      "vitals": (2, 6, 2), "genomics": (2, len(GENOMICS_VOCAB)), "notes_emb": (2, NOTES_DIM),
                      "present": (2, 6), "labels": (2, len(PANEL))}
    unlabelled = featurize(PatientCase(case_id="c"), small_config(), stats, PANEL, notes_emb=np.zeros(NOTES_DIM))
    assert "labels" not in unlabelled and "labels" not in collate([unlabelled])
    with pytest.raises(ValueError, match="have labels"):
        collate([a, unlabelled])


def test_notes_are_embedded_offline_with_minilm():
    cases = [
        PatientCase(case_id="p1", notes=[Note(text="Productive cough with green sputum and fever for three days.")]),
        PatientCase(case_id="p2", notes=[Note(text="Febrile, coughing up yellow phlegm since Monday."),
                                         Note(text="Lives alone.")]),
        PatientCase(case_id="p3", notes=[Note(text="Excessive thirst and passing large volumes of urine.")]),
        PatientCase(case_id="p4"),
    ]
    emb = notes_embedding(cases)
    assert emb.shape == (4, NOTES_DIM) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb[:3], axis=1), 1.0, atol=1e-5) and not emb[3].any()
    assert emb[0] @ emb[1] > emb[0] @ emb[2] + 0.15  # meaning, not word overlap
    single = embed_texts(["Lives alone."])[0]
    assert math.isclose(float(np.linalg.norm(single)), 1.0, rel_tol=1e-5)
    item = featurize(cases[0], small_config(), FeatureStats.identity(), PANEL)  # embeds on its own
    np.testing.assert_allclose(item["notes_emb"].numpy(), emb[0], atol=1e-5)
