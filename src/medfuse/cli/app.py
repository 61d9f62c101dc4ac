"""Typer apps for every verb. Each verb group lives in its own module under medfuse.cli."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="medfuse",
    help="Multimodal medical reasoning: import, synthesise, interpret, diagnose, train and evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
import_app = typer.Typer(help="Import real-format files into a cohort folder.", no_args_is_help=True)
app.add_typer(import_app, name="import")


def _register() -> None:
    # Importing the modules attaches their commands to `app` / `import_app`.
    from medfuse.cli import (  # noqa: F401
        demo_cmd,
        diagnose_cmd,
        eval_cmd,
        import_dicom,
        import_ecg,
        import_fhir,
        import_labs,
        import_mimic,
        interpret_cmd,
        show_cmd,
        synth_cmd,
        tasks_cmd,
        train_cmd,
    )


_register()
