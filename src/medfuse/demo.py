"""`medfuse demo`: run what exists end to end on built-in defaults, offline.

1. Import the bundled real sample records (a PTB-XL 12-lead ECG, an NIH chest X-ray) into a
   cohort folder with the real importers, and show them.
2. Generate a small synthetic multimodal cohort and print one case with its interpreted
   physiological evidence.
Later stages (model, training, evaluation) extend this.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from medfuse.io.base import ImportReport


def _sample_dir() -> Path:
    return Path(str(resources.files("medfuse").joinpath("data").joinpath("sample")))


def import_samples(out: Path) -> ImportReport:
    """Import the bundled real records into `out` (a cohort folder)."""
    from medfuse.cli.importing import run_import
    from medfuse.io.image import import_images
    from medfuse.io.wfdb import import_wfdb

    sample = _sample_dir()
    report = ImportReport(source="bundled samples")

    def cases():
        yield from import_wfdb([sample / "00001_lr.hea"], report)
        yield from import_images([sample / "00000001_000.png"], report, labels_csv=sample / "nih_labels.csv")

    run_import(cases(), out, report, overwrite=True, quiet=True)
    return report


def run_demo(out: Path, n_synth: int = 12, seed: int = 7) -> None:
    from medfuse.cli.importing import print_summary
    from medfuse.cli.show_cmd import summarise_case
    from medfuse.record.store import iter_cohort, read_case

    out = Path(out)
    print("== 1. importing the bundled real sample records ==")
    real = out / "sample_cohort"
    report = import_samples(real)
    print_summary(report)
    for case in iter_cohort(real):
        print("\n".join(summarise_case(case)))
    print()

    print(f"== 2. a synthetic multimodal cohort ({n_synth} cases, seed {seed}) ==")
    from medfuse.interpret.case import interpret_case
    from medfuse.synth.cohort import SynthConfig, synth_cohort

    synth_dir = out / "synth_cohort"
    synth_cohort(n=n_synth, seed=seed, out=synth_dir, config=SynthConfig(), workers=1, progress=False)
    # the richest case makes the best illustration
    folders = sorted(p for p in synth_dir.iterdir() if (p / "case.json").is_file())
    cases = [read_case(f) for f in folders]
    case = max(cases, key=lambda c: (len(c.modalities()), len(c.labels.disease_names()) if c.labels else 0, c.case_id))
    print("\n".join(summarise_case(case)))
    print("  interpreted evidence:")
    evidence = interpret_case(case)
    for ev in evidence:
        if ev.abnormal:
            print(f"    ! {ev.cite()}")
    normal = sum(not ev.abnormal for ev in evidence)
    print(f"    ({normal} more evidence item(s) within normal limits)")
    print(f"\nOutputs are in {out}/ (try: medfuse show {folders[0]})")
