"""`medfuse demo`: the whole pipeline end to end on built-in defaults, offline.

1. Import the bundled real sample records (a PTB-XL 12-lead ECG, an NIH chest X-ray) into a
   cohort folder with the real importers, and show them.
2. Generate a small FRESH synthetic multimodal cohort (a seed the shipped model never saw)
   and print its richest case with its interpreted physiological evidence.
3. Diagnose every case of that cohort with the shipped checkpoint (or `--model`), print
   one full result (diagnoses, evidence chain, boxes, modality weights, reasoning, report),
   score the cohort against its ground truth, and write `results.jsonl` and a
   self-contained `summary.html` (image with boxes, ECG plot, lab table, scores).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from medfuse.io.base import ImportReport


def _sample_dir() -> Path:
    return Path(str(resources.files("medfuse").joinpath("data").joinpath("sample")))


def import_samples(out: Path) -> ImportReport:
    """Import the bundled real records into `out` (a cohort folder)."""
    from medfuse.io.cohort import write_cohort
    from medfuse.io.image import import_images
    from medfuse.io.wfdb import import_wfdb

    sample = _sample_dir()
    report = ImportReport(source="bundled samples")

    def cases():
        yield from import_wfdb([sample / "00001_lr.hea"], report)
        yield from import_images([sample / "00000001_000.png"], report, labels_csv=sample / "nih_labels.csv")

    write_cohort(cases(), out, report, overwrite=True, quiet=True)
    return report


def cohort_scores(model, cases, results) -> dict:
    """Diagnosis and grounding scores of `results` against the cases' ground truth."""
    import numpy as np

    from medfuse.eval.metrics.classification import multilabel_metrics
    from medfuse.eval.metrics.grounding import grounding_metrics
    from medfuse.model.inputs import label_vector

    names = [d.name for d in model.panel]
    y = np.stack([label_vector(c, model.panel) for c in cases]).astype(int)
    pred = np.zeros_like(y)
    prob = np.zeros(y.shape, dtype=float)
    for i, d in enumerate(results):
        for entry in d.result.diagnoses:
            disease = model.panel.lookup(entry.name)
            j = model.panel.keys.index(disease.key)
            prob[i, j], pred[i, j] = entry.probability, int(entry.present)
    m = multilabel_metrics(y, pred, prob, names)
    scores = {"n_cases": len(cases), "mean_jaccard": m["jaccard"], "macro_f1": m["macro_f1"], "micro_f1": m["micro_f1"],
              "macro_auroc": m["macro_auroc"],
              "per_disease": {n: {"f1": v["f1"], "auroc": v["auroc"], "support": v["support"]}
                              for n, v in m["per_class"].items()}}
    preds, golds = [], []
    for case, d in zip(cases, results, strict=True):
        if not case.cxr or case.labels is None:
            continue
        labels = {f.label for f in case.labels.findings} | {f.label for f in d.result.findings}
        for label in sorted(labels):
            preds.append([f.box for f in d.result.findings if f.label == label])
            golds.append([b for f in case.labels.findings if f.label == label for b in f.boxes])
    if any(golds):
        g = grounding_metrics(preds, golds)
        scores["grounding_f1"] = g["f1"]  # the headline: missed boxes and surplus boxes both lower it
        scores["grounding_acc_iou_0.5"] = g["acc_iou_0.5"]
        scores["grounding_mean_iou"] = g["mean_iou"]
    return scores


def run_demo(out: Path, n_synth: int = 24, seed: int = 7, model_path: Path | None = None,
             max_new_tokens: int = 160) -> None:
    from rich.console import Console

    from medfuse.io.cohort import import_summary
    from medfuse.record.store import iter_cohort
    from medfuse.record.summary import summarise_case

    out = Path(out)
    print("== 1. importing the bundled real sample records ==")
    real = out / "sample_cohort"
    report = import_samples(real)
    Console().print(import_summary(report))
    for case in iter_cohort(real):
        print("\n".join(summarise_case(case)))
    print()

    print(f"== 2. a fresh synthetic multimodal cohort ({n_synth} cases, seed {seed}) ==")
    from medfuse.interpret.case import interpret_case
    from medfuse.synth.cohort import SynthConfig, synth_cohort

    synth_dir = out / "synth_cohort"
    synth_cohort(n=n_synth, seed=seed, out=synth_dir, config=SynthConfig(), workers=1, progress=False, overwrite=True)
    cases = list(iter_cohort(synth_dir))
    # the richest case makes the best illustration
    case = max(cases, key=lambda c: (len(c.modalities()), len(c.labels.disease_names()) if c.labels else 0, c.case_id))
    print("\n".join(summarise_case(case)))
    print("  interpreted evidence:")
    evidence = interpret_case(case)
    for ev in evidence:
        if ev.abnormal:
            print(f"    ! {ev.cite()}")
    normal = sum(not ev.abnormal for ev in evidence)
    print(f"    ({normal} more evidence item(s) within normal limits)")

    print(f"\n== 3. diagnosing the {len(cases)} cases ==")
    import json
    import time

    from medfuse.html_summary import write_html_summary
    from medfuse.model import MedFuse
    from medfuse.model.diagnosis import diagnose_many, format_result, iter_batches
    from medfuse.model.locate import quiet_transformers, resolve_checkpoint

    quiet_transformers()
    ckpt = resolve_checkpoint(model_path)
    start = time.perf_counter()
    model = MedFuse.load(ckpt)
    print(f"model {model.name} {model.version} from {ckpt} (loaded in {time.perf_counter() - start:.1f} s)")
    start = time.perf_counter()
    results = []
    for batch in iter_batches(cases, 8):
        results.extend(diagnose_many(model, batch, max_new_tokens=max_new_tokens))
    seconds = time.perf_counter() - start
    print(f"diagnosed {len(cases)} cases in {seconds:.1f} s ({len(cases) / seconds:.2f} cases/s)\n")
    shown = results[cases.index(case)]
    print(format_result(shown))
    scores = cohort_scores(model, cases, results)
    print("\nscores on this fresh cohort: " + ", ".join(
        f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, float)) + f" (n={scores['n_cases']})")
    with (out / "results.jsonl").open("w", encoding="utf-8") as f:
        for d in results:
            f.write(d.result.model_dump_json() + "\n")
    page = write_html_summary(out / "summary.html", list(zip(cases, results, strict=True)), scores,
                              title=f"medfuse demo: {len(cases)} fresh synthetic cases")
    (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n", encoding="utf-8")
    print(f"\nOutputs are in {out}/: results.jsonl, scores.json, {page.name} (open it in a browser)")
