"""`medfuse tasks build COHORT --out DATASET` and `medfuse tasks show DATASET`: instruction data."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from medfuse.cli.output_paths import check_output_apart

tasks_app = typer.Typer(help="Build and inspect instruction data (diagnosis with a chain of evidence, per-modality "
                             "QA, region tasks, reports; English and Chinese).", no_args_is_help=True)


@tasks_app.command("build")
def build_cmd(
    cohort: Path = typer.Argument(..., help="Cohort folder (case folders with case.json, e.g. from 'medfuse synth')."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder to write (Hugging Face save_to_disk layout "
                                                      "plus medfuse_tasks.json)."),
    lang: list[str] = typer.Option(["en", "zh"], "--lang", help="Language of the samples; repeat for several (en, zh)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the phrasing choices; the same seed gives identical rows."),
    task: list[str] | None = typer.Option(None, "--task", help="Task type to build; repeat for several "
                                                               "(default: all)."),
    panel: Path | None = typer.Option(None, "--panel", help="Disease panel YAML (default: the bundled panel)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset folder."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Build instruction samples from every case of COHORT into the dataset folder OUT."""
    from medfuse.knowledge.panel import load_panel
    from medfuse.tasks.build import check_choices, build_tasks, check_out_dir, save_tasks, tasks_metadata

    # Check everything the user typed before the (slow) build, so a typo costs nothing.
    langs, tasks = check_choices(lang, task or None)
    check_output_apart(out, [cohort, panel])
    check_out_dir(out, overwrite)
    loaded_panel = load_panel(panel)
    dataset = build_tasks(cohort, langs=langs, seed=seed, tasks=tasks, panel=loaded_panel, progress=not quiet)
    save_tasks(dataset, out, overwrite=overwrite)
    meta = tasks_metadata(dataset)
    if as_json:
        print(json.dumps({"out": str(out), **meta}, ensure_ascii=False))
        return
    _print_summary(meta, out)


def _print_summary(meta: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    langs = meta.get("langs", [])
    table = Table(title=None, show_edge=False)
    table.add_column("task")
    for lang in langs:
        table.add_column(lang, justify="right")
    table.add_column("total", justify="right")
    counts = meta.get("counts", {})
    for task_name, per_lang in counts.items():
        row = [per_lang.get(lang, 0) for lang in langs]
        table.add_row(task_name, *map(str, row), str(sum(row)))
    totals = [sum(c.get(lang, 0) for c in counts.values()) for lang in langs]
    table.add_row("[bold]all[/bold]", *map(str, totals), f"[bold]{sum(totals)}[/bold]")
    console.print(f"[bold]tasks[/bold]: {meta.get('n_rows', 0)} sample(s) from {meta.get('n_cases', 0)} case(s) "
                  f"written to {out} (seed {meta.get('seed')}, panel {meta.get('panel')})")
    console.print(table)
    for problem, count in (meta.get("skipped_cases") or {}).items():
        console.print(f"  skipped {count} case folder(s): {problem}")
    missing = [t for t in meta.get("tasks", []) if t not in counts]
    if missing:
        console.print(f"  no samples for: {', '.join(missing)} (the cases lack the modality or the labels they need)")


@tasks_app.command("show")
def show_cmd(
    dataset: Path = typer.Argument(..., help="Dataset folder written by 'medfuse tasks build'."),
    n: int = typer.Option(3, "--n", min=1, help="Number of samples to print."),
    task: str | None = typer.Option(None, "--task", help="Only samples of this task type."),
    lang: str | None = typer.Option(None, "--lang", help="Only samples in this language (en or zh)."),
) -> None:
    """Print a few samples (spread over the dataset) with their messages, answer set and boxes."""
    from medfuse.tasks.build import load_tasks, tasks_metadata

    data = load_tasks(dataset)
    meta = tasks_metadata(data)
    if meta:
        print(f"{dataset}: {len(data)} sample(s) from cohort {meta.get('cohort_root')} "
              f"(seed {meta.get('seed')}, panel {meta.get('panel')}, languages {', '.join(meta.get('langs', []))})")
    else:
        print(f"{dataset}: {len(data)} sample(s)")
    indices = [i for i, (t, lg) in enumerate(zip(data["task"], data["lang"], strict=True))
               if (task is None or t == task) and (lang is None or lg == lang)]
    if not indices:
        print("no sample matches")
        return
    # Evenly spread picks show several cases and tasks, not the first case's rows only.
    step = max(1, len(indices) // n)
    for i in indices[::step][:n]:
        row = data[i]
        print(f"\n== {row['id']}  (task {row['task']}, lang {row['lang']}, case {row['case_id']}, source {row['source']})")
        for message in row["messages"]:
            print(f"[{message['role']}]\n{message['content']}")
        print(f"answer_diseases: {', '.join(row['answer_diseases']) or 'none'}")
        print(f"gold_boxes: {row['gold_boxes']}")
