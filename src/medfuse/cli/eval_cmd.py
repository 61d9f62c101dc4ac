"""`medfuse eval`: run benchmarks on any model, rescore, and build leaderboards.

    medfuse eval run --model openai:http://127.0.0.1:8000/v1 --model-name m --benchmark medqa \\
        --data data_clean/questions/US --out runs/m-medqa
    medfuse eval --model hf:models/x --benchmark slake --data Slake1.0 --lang en --out runs/x-slake
    medfuse eval rescore runs/m-medqa
    medfuse eval report runs/* --out leaderboard
    medfuse eval list
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

import typer

from medfuse.errors import MedfuseError

MAX_ERROR_SHARE_HELP = (
    "When more than this share (0-1) of requests failed, report no score and exit non-zero, after listing the "
    "error causes. Below it, failed requests are scored as wrong and the score over answered items is shown beside."
)

eval_app = typer.Typer(
    help="Evaluate a model on medical benchmarks (`eval run`, or `eval --model ...` directly), rescore, report.",
    invoke_without_command=True,
)


def run(
    model: str | None = typer.Option(None, "--model", "-m", help="hf:PATH (local HF folder), openai:BASE_URL or medfuse:PATH."),
    benchmark: str | None = typer.Option(None, "--benchmark", "-b", help="Benchmark name (see `medfuse eval list`)."),
    data: Path | None = typer.Option(None, "--data", "-d", help="The benchmark's file or release folder."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder of this run (results, cache)."),
    limit: int | None = typer.Option(None, "--limit", help="Evaluate the first N items only."),
    lang: str | None = typer.Option(None, "--lang", help="Keep one language: en or zh."),
    split: str | None = typer.Option(None, "--split", help="Benchmark split (default: the one papers report; 'all' for every item)."),
    concurrency: int = typer.Option(8, "--concurrency", help="openai: requests kept in flight."),
    model_name: str | None = typer.Option(None, "--model-name", help="openai: the served model's name (default: the first one listed)."),
    timeout: float = typer.Option(120.0, "--timeout", help="openai: per-request timeout in seconds."),
    max_retries: int = typer.Option(5, "--max-retries", help="openai: retries on 429/5xx/timeouts, with exponential backoff."),
    batch_size: int = typer.Option(4, "--batch-size", help="hf: prompts per generation batch."),
    max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Output budget (default: per question type)."),
    judge: str | None = typer.Option(None, "--judge", help="OpenAI-compatible base URL of an LLM judge for open answers (reported beside rule-based scores)."),
    judge_model: str | None = typer.Option(None, "--judge-model", help="The judge's model name."),
    resamples: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95 % CIs."),
    max_error_share: float = typer.Option(0.5, "--max-error-share", help=MAX_ERROR_SHARE_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json instead of a table."),
) -> None:
    """Evaluate MODEL on BENCHMARK; rerunning resumes and reuses every cached output."""
    from medfuse.cli.output_paths import check_output_apart
    from medfuse.eval.harness import EvalConfig, run_eval

    missing = [flag for flag, v in (("--model", model), ("--benchmark", benchmark), ("--data", data), ("--out", out)) if v is None]
    if missing:
        raise MedfuseError(f"eval run needs {', '.join(missing)} (see `medfuse eval run --help`)")
    if lang is not None and lang not in ("en", "zh"):
        raise MedfuseError(f"--lang must be en or zh, got '{lang}'")
    check_output_apart(out, [data])  # a run folder among the benchmark files would be read as one
    cfg = EvalConfig(
        model=model, benchmark=benchmark, data=data, out=out, split=split, lang=lang, limit=limit,
        model_name=model_name, concurrency=concurrency, timeout_s=timeout, max_retries=max_retries,
        batch_size=batch_size, max_new_tokens=max_new_tokens, judge=judge, judge_model=judge_model,
        n_resamples=resamples, progress=not quiet, max_error_share=max_error_share,
    )
    summary = run_eval(cfg)
    _print_summary(summary, out, as_json)


def _print_summary(summary: dict, out: Path, as_json: bool) -> None:
    """Print a run's summary; raises MedfuseError (non-zero exit) when it has no valid score."""
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        _print_table(summary, out)
    _check_failures(summary, out)


def _check_failures(summary: dict, out: Path) -> None:
    """List the causes of failed requests on stderr, one line each with its count (causes
    are the adapters' messages: status, timeout, exception class, never record contents),
    and fail when the run has too many to be scored."""
    n_errors, n_items = summary.get("n_errors") or 0, summary.get("n_items") or 0
    if n_errors:
        print(f"{n_errors} of {n_items} request(s) failed:", file=sys.stderr)
        for cause, count in (summary.get("error_causes") or {"cause not recorded": n_errors}).items():
            print(f"  {count} x {cause}", file=sys.stderr)
    if summary.get("score_valid") is False:
        raise MedfuseError(
            f"{out}: {n_errors} of {n_items} requests failed ({summary['error_share']:.0%}, above --max-error-share "
            f"{summary['max_error_share']:g}); no score is reported. Fix the cause and rerun: answered items are cached"
        )


def _print_table(summary: dict, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if summary.get("score_valid") is not False:
        t = Table(title=f"{summary['benchmark']} - {summary['model']}", title_justify="left")
        t.add_column("metric")
        t.add_column("value", justify="right")
        t.add_column("95 % CI", justify="right")
        for name in summary["headline"]:
            value, ci = summary["metrics"].get(name), summary["ci95"].get(name)
            t.add_row(name, "-" if value is None else f"{value:.4f}", f"{ci[0]:.4f}-{ci[1]:.4f}" if ci else "")
        if summary.get("judged"):
            j = summary["judged"]
            if j.get("open_accuracy") is not None:
                t.add_row("open_accuracy (LLM judge)", f"{j['open_accuracy']:.4f}", "")
        console.print(t)
    console.print(
        f"{summary['n_items']} item(s): {summary['n_cached']} cached, {summary['n_generated']} generated, "
        f"{summary['n_errors']} failed; results in {out}"
    )
    answered = summary.get("answered")
    if answered and summary.get("score_valid") is not False:
        scores = ", ".join(f"{k} {answered['metrics'][k]:.4f}" for k in summary["headline"] if answered["metrics"].get(k) is not None)
        console.print(f"failed requests are scored as wrong above; over the {answered['n']} answered item(s): {scores}")
    if summary.get("skipped"):
        console.print("skipped while loading: " + ", ".join(f"{k} ({v})" for k, v in summary["skipped"].items()))
    if summary.get("images_ignored"):
        console.print(f"[yellow]{summary['images_ignored']} item(s) have images this text-only model did not see[/yellow]")


eval_app.command("run")(run)


def _main(ctx: typer.Context, **kwargs) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if kwargs.get("model") is None:
        print(ctx.get_help())
        raise typer.Exit(0)
    run(**kwargs)


# `medfuse eval --model ...` takes the same options as `medfuse eval run`.
_main.__signature__ = inspect.Signature(
    [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
     *inspect.signature(run).parameters.values()]
)
_main.__annotations__ = {"ctx": typer.Context, **run.__annotations__}
eval_app.callback()(_main)


@eval_app.command("rescore")
def rescore_cmd(
    run_dir: Path = typer.Argument(..., help="A run folder written by `medfuse eval run`."),
    resamples: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95 % CIs."),
    max_error_share: float = typer.Option(0.5, "--max-error-share", help=MAX_ERROR_SHARE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json instead of a table."),
) -> None:
    """Re-parse and re-score a run with the current parsers and metrics (no model calls)."""
    from medfuse.eval.harness import rescore

    _print_summary(rescore(run_dir, n_resamples=resamples, max_error_share=max_error_share), run_dir, as_json)


@eval_app.command("report")
def report_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="Run folders to compare."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for report.md, report.html and plots/."),
) -> None:
    """Write a Markdown and an HTML leaderboard comparing runs, with plots."""
    from medfuse.eval.report import write_report

    paths = write_report(run_dirs, out)
    print("\n".join(str(p) for p in paths))


@eval_app.command("list")
def list_cmd() -> None:
    """The benchmarks the kit can load, with task type and default split."""
    from medfuse.eval.benchmarks import list_benchmarks

    for cls in list_benchmarks():
        print(f"{cls.name:<20} {cls.task_type:<16} split={cls.default_split or '-':<12} {cls.description}")
