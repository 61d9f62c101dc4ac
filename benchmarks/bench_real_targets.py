"""The shipped checkpoint on two real-data goals, measured as it stands (no retraining):

(a) chest X-ray pneumonia AUROC on the Kermany pediatric set (`--root`/
    pediatric_pneumonia_kermany_test224/dev: PNEUMONIA vs NORMAL, 224x224 images):
    - zero-shot: the shipped model's own calibrated pneumonia probability, CXR only;
    - probe: a logistic regression on the shipped CXR encoder's features (the mean CXR
      token the fusion model reads), fitted and scored by 5-fold cross-validation
      grouped by patient (out-of-fold probabilities);
(b) labs-only diagnosis macro AUROC on the MIMIC-IV demo (`medfuse import mimic-iv` of
    the bundled fixture, one case per admission, 100 patients):
    - zero-shot: the shipped model's calibrated probabilities;
    - recalibrated: per disease, a logistic regression on the model's nine disease
      logits, fitted per fold (can re-rank, unlike temperature scaling);
    - probe on the labs path: per disease, a logistic regression on the shipped labs
      encoder's tokens (mean labs token), fitted per fold;
    - reference: the same probe on the normalised lab inputs themselves;
    all folds grouped by patient (5-fold), macro AUROC over the diseases the labs can
    assess with >= 5 positive and negative admissions.

(c) mixed training (`--mixed`, `train.mixed`): the shipped checkpoint fine-tuned through
    the encoder stage (`configs/encoders_mixed.yaml`: all of the fusion model, 10 epochs)
    on a synthetic cohort (`medfuse synth --n 600 --seed 101`) mixed with the real CXR
    dev sets imported by `medfuse import kermany|ieee8023|nih-cxr`; the real sets train
    pneumonia only (NIH also its image-level findings), every other target masked. Scored
    with the per-source model card (`train.source_card`) on images no training or
    calibration step saw: each set's `heldout/` folder where `--root` has one, otherwise
    the patients of its own patient-level `test` split (30 % of the dev patients, the
    `fractions` of the config). The shipped checkpoint is scored on the same images;
    the card is also written into the fine-tuned checkpoint (`--work`, default
    runs/bench_real_targets/mixed).

Goals: pneumonia AUROC >= 0.85, MIMIC-IV labs macro AUROC >= 0.80. AUROCs come with a
percentile bootstrap 95 % CI (1,000 resamples of cases; of patients in the source card).
Minutes on one core ((c) adds about twenty). Writes benchmarks/results/real_targets.json.

    python benchmarks/bench_real_targets.py --root /work/shared/data/real [--model CKPT] [--mixed]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results" / "real_targets.json"
ROOT = Path(__file__).resolve().parents[1]
MIMIC_DEMO = ROOT / "tests" / "fixtures" / "mimic-iv-demo"
KERMANY = "pediatric_pneumonia_kermany_test224"
MIXED_CONFIG = ROOT / "configs" / "encoders_mixed.yaml"
# The real CXR sets of (c): folder under --root, importer, the config entry that trains it.
REAL_CXR = {"kermany": (KERMANY, "kermany"), "ieee8023": ("covid_cxr_ieee8023", "ieee8023"),
            "nih": ("nih_chestxray14_subset", "nih-cxr")}
MIN_CLASS = 5
FOLDS = 5


def auroc_ci(y: np.ndarray, score: np.ndarray, rng: np.random.Generator, n_boot: int = 1000) -> dict:
    """AUROC with a percentile bootstrap 95 % CI over cases."""
    from sklearn.metrics import roc_auc_score

    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, y.size, y.size)
        if 0 < y[i].sum() < y.size:
            boots.append(roc_auc_score(y[i], score[i]))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"auroc": round(float(roc_auc_score(y, score)), 3), "ci95": [round(float(lo), 3), round(float(hi), 3)],
            "n": int(y.size), "n_positive": int(y.sum())}


def fusion_outputs(model, cases) -> dict[str, np.ndarray]:
    """Per case: disease logits and probabilities, the mean CXR and labs tokens, the labs inputs."""
    from medfuse.train.encoders import EncoderData

    data = EncoderData.build(cases, model, with_texts=False)
    out: dict[str, list[np.ndarray]] = {"logits": [], "cxr": [], "labs_tokens": [], "labs_inputs": []}
    model.fusion.eval()
    with torch.no_grad():
        for start in range(0, len(cases), 32):
            b = data.batch(range(start, min(len(cases), start + 32)))
            o = model.fusion(b)
            out["logits"].append(o.disease_logits.float().numpy())
            out["cxr"].append(o.tokens[:, o.modality_slices["cxr"]].mean(dim=1).float().numpy())
            out["labs_tokens"].append(o.tokens[:, o.modality_slices["labs"]].mean(dim=1).float().numpy())
            out["labs_inputs"].append(b["labs"].flatten(1).float().numpy())
    res = {k: np.concatenate(v) for k, v in out.items()}
    res["probabilities"] = np.asarray(model.head.predict_proba(res["logits"]), dtype=np.float64)
    return res


def grouped_oof(x: np.ndarray, y: np.ndarray, groups: list[str], c: float = 1.0) -> np.ndarray:
    """Out-of-fold probabilities of a standardised logistic regression, folds grouped by patient."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    oof = np.zeros(y.size)
    for fit, score in GroupKFold(FOLDS).split(x, y, groups):
        if y[fit].min() == y[fit].max():
            oof[score] = y[fit].mean()
            continue
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        clf.fit(x[fit], y[fit])
        oof[score] = clf.predict_proba(x[score])[:, 1]
    return oof


def pneumonia_cxr(model, root: Path, rng: np.random.Generator) -> dict:
    from medfuse.io.image import read_image
    from medfuse.record.case import PatientCase

    folder = root / KERMANY / "dev"
    cases, y, groups = [], [], []
    with (folder / "labels.csv").open(newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            image = read_image(folder / "images" / row["image"])
            image.view = "AP"
            cases.append(PatientCase(case_id=f"kermany-{i}", patient_id=row["patient_id"], cxr=[image]))
            y.append(row["label"] == "PNEUMONIA")
            groups.append(row["patient_id"])
    y_arr = np.array(y, dtype=int)
    out = fusion_outputs(model, cases)
    j = model.panel.keys.index("pneumonia")
    return {
        "set": f"{KERMANY}/dev ({len(cases)} images, {len(set(groups))} patients; 224x224 squashed by the source)",
        "goal_auroc": 0.85,
        "zero_shot_shipped_probability": auroc_ci(y_arr, out["probabilities"][:, j], rng),
        "probe_on_shipped_cxr_features": {
            "protocol": f"logistic regression (C=1) on the mean CXR token, {FOLDS}-fold CV grouped by patient, "
                        "out-of-fold probabilities",
            **auroc_ci(y_arr, grouped_oof(out["cxr"], y_arr, groups), rng)},
    }


def mimic_labs(model, rng: np.random.Generator) -> dict:
    from medfuse.model.inputs import label_vector
    from medfuse.record.store import iter_cohort
    from medfuse.train.recalibrate import assessable_mask

    with tempfile.TemporaryDirectory(prefix="bench_real_targets_") as tmp:
        cohort = Path(tmp) / "mimic"
        subprocess.run([sys.executable, "-m", "medfuse", "import", "mimic-iv", str(MIMIC_DEMO), "--out", str(cohort)],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        cases = [c for c in iter_cohort(cohort) if c.labels is not None]
    groups = [c.group_id for c in cases]
    labels = np.stack([label_vector(c, model.panel) for c in cases]).astype(int)   # (n, D)
    assessable = assessable_mask(model, cases)                                     # (n, D)
    out = fusion_outputs(model, cases)
    variants = {"zero_shot_shipped_probability": None, "recalibrated_on_model_logits": "logits",
                "probe_on_shipped_labs_tokens": "labs_tokens", "reference_probe_on_lab_inputs": "labs_inputs"}
    per_disease: dict[str, dict] = {}
    for j, key in enumerate(model.panel.keys):
        rows = np.flatnonzero(assessable[:, j])
        y = labels[rows, j]
        if y.sum() < MIN_CLASS or (y.size - y.sum()) < MIN_CLASS:
            continue
        g = [groups[i] for i in rows]
        per_disease[key] = {
            name: auroc_ci(y, out["probabilities"][rows, j] if feats is None else grouped_oof(out[feats][rows], y, g, c=0.1),
                           rng)
            for name, feats in variants.items()
        }
    macro = {name: round(float(np.mean([d[name]["auroc"] for d in per_disease.values()])), 3) for name in variants}
    return {
        "set": f"MIMIC-IV demo ({len(cases)} admissions, {len(set(groups))} patients; labs only)",
        "goal_macro_auroc": 0.80,
        "protocol": f"{FOLDS}-fold CV grouped by patient for the fitted variants (logistic regression, C=0.1, "
                    f"standardised), out-of-fold probabilities; diseases the labs assess with >= {MIN_CLASS} "
                    "positive and negative admissions",
        "macro_auroc": macro,
        "per_disease": per_disease,
    }


def _medfuse(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "medfuse", *args], check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})


def mixed_cxr(shipped, root: Path, work: Path, epochs: int | None) -> dict:
    """(c): import, fine-tune on synthetic + real CXR, score both checkpoints per source."""
    import yaml

    from medfuse.model import MedFuse
    from medfuse.record.store import iter_cohort
    from medfuse.train.mixed import build_sources, source_split
    from medfuse.train.source_card import LabelledSource, source_card, write_source_card

    cohorts = work / "cohorts"
    cfg = yaml.safe_load(MIXED_CONFIG.read_text())
    paths = {"kermany": "cohort/real/kermany_dev", "ieee8023": "cohort/real/ieee8023_dev", "nih": "cohort/real/nih_dev"}
    heldout: dict[str, Path] = {}
    for key, (folder, importer) in REAL_CXR.items():
        dev = cohorts / f"{key}_dev"
        if not dev.is_dir():
            _medfuse("import", importer, str(root / folder / "dev"), "--out", str(dev))
        if (root / folder / "heldout").is_dir():
            heldout[key] = cohorts / f"{key}_heldout"
            if not heldout[key].is_dir():
                _medfuse("import", importer, str(root / folder / "heldout"), "--out", str(heldout[key]))
        for entry in cfg["extra_cohorts"]:
            if entry["path"] == paths[key]:
                entry["path"] = str(dev)
                if key in heldout:  # a separate held-out folder: the dev set trains and calibrates on all of it
                    entry["fractions"] = [0.9, 0.1, 0.0]
    synth = cohorts / "synth"
    if not synth.is_dir():
        _medfuse("synth", "--n", "600", "--seed", "101", "--out", str(synth), "--quiet")
    cfg.update(cohort=str(synth), out=str(work / "mixed"), init=str(shipped), overwrite=True, quiet=True)
    if epochs is not None:
        cfg["epochs"] = epochs
    config_file = work / "encoders_mixed.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    t = time.perf_counter()
    _medfuse("train", "encoders", "--config", str(config_file))
    train_s = time.perf_counter() - t
    mixed = MedFuse.load(work / "mixed")

    sources = build_sources(str(synth), cfg["extra_cohorts"], mixed.panel.keys, mixed.config.finding_labels)
    scored = []
    for source in sources:
        key = next((k for k, v in paths.items() if Path(source.path).name == f"{k}_dev"), None)
        if key in heldout:
            cases = [c for c in iter_cohort(heldout[key]) if c.labels is not None]
            note = f"{REAL_CXR[key][0]}/heldout (never trained on)"
        else:
            cases = source_split(source, "test", cfg.get("split_seed", 0))
            note = "patient-level test split of the source (never trained or calibrated on)"
        scored.append(LabelledSource(name=source.name, cases=cases, diseases=source.diseases,
                                     findings=source.findings, note=note))
    t = time.perf_counter()
    cards = {"shipped": source_card(shipped_model := MedFuse.load(shipped), scored),
             "mixed": source_card(mixed, scored)}
    del shipped_model
    write_source_card(mixed, work / "mixed", cards["mixed"])
    headline = {}
    for name, card in cards.items():
        for entry in card["sources"]:
            d = entry.get("diseases", {}).get("pneumonia")
            if d is not None:
                keep = ("auroc", "auroc_ci95", "f1", "f1_ci95", "n", "n_positive")
                headline.setdefault(entry["name"], {})[name] = {k: d[k] for k in keep}
    return {
        "protocol": f"fine-tune of the shipped checkpoint by `medfuse train encoders --config {MIXED_CONFIG.name}` "
                    f"({cfg['epochs']} epochs, whole fusion model, one thread) on synthetic + real CXR dev cohorts; "
                    "scored per source on images no training or calibration step saw",
        "goal_auroc": 0.85, "train_s": round(train_s, 1), "card_s": round(time.perf_counter() - t, 1),
        "checkpoint": str(work / "mixed"), "pneumonia_by_source": headline, "cards": cards,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="folder holding the real sets (shared/data/real)")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped one)")
    parser.add_argument("--mixed", action="store_true",
                        help="(c): fine-tune on synthetic + real CXR and write the per-source model card")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_real_targets",
                        help="folder for (c)'s cohorts and checkpoint (reused when present)")
    parser.add_argument("--epochs", type=int, default=None, help="(c): epochs (default: the config's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from medfuse.model import MedFuse
    from medfuse.model.locate import quiet_transformers, resolve_checkpoint

    quiet_transformers()
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    checkpoint = resolve_checkpoint(args.model)
    model = MedFuse.load(checkpoint)
    result = {"what": "the shipped checkpoint on real data, measured as it stands (no retraining)"
                      + ("; mixed_cxr: fine-tuned on synthetic + real CXR, per-source card" if args.mixed else ""),
              "checkpoint": checkpoint.name, "cpu_count": os.cpu_count(), "torch_threads": 1}
    t = time.perf_counter()
    result["pneumonia_cxr"] = pneumonia_cxr(model, args.root, rng)
    result["pneumonia_cxr"]["seconds"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    result["mimic_labs"] = mimic_labs(model, rng)
    result["mimic_labs"]["seconds"] = round(time.perf_counter() - t, 1)
    if args.mixed:
        result["mixed_cxr"] = mixed_cxr(checkpoint, args.root, args.work, args.epochs)
    result["seconds"] = round(time.perf_counter() - start, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(RESULTS)
    print(json.dumps({"pneumonia_cxr": {k: v for k, v in result["pneumonia_cxr"].items() if k != "set"},
                      "mimic_labs_macro_auroc": result["mimic_labs"]["macro_auroc"],
                      **({"mixed_pneumonia_by_source": result["mixed_cxr"]["pneumonia_by_source"]}
                         if args.mixed else {})}, indent=1))


if __name__ == "__main__":
    main()
