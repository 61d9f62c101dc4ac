"""`medfuse train {encoders,align,sft,grpo} --config FILE [--field value ...]`.

Every field of the stage's config dataclass (`medfuse.train.config`) is both a YAML key
and a flag with the field's help text: `batch_size` is `--batch-size`, a boolean `overwrite`
is `--overwrite/--no-overwrite`, a list (`langs`) is given by repeating the flag. Mappings
(`model`, `reward_weights`) are set in the YAML file only. Flags override the file.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import shlex
import sys
import types
import typing
from pathlib import Path
from typing import Any

import typer

from medfuse.cli.output_paths import check_output_apart
from medfuse.train.config import STAGES, StageConfig

train_app = typer.Typer(help="Train a stage of the model: encoders -> align -> sft -> grpo.", no_args_is_help=True)


def _flag_type(annotation: Any) -> Any | None:
    """The CLI type of a config field, or None for fields set in YAML only (mappings, lists of them)."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
    base = next((a for a in args if a is not type(None)), annotation) if args else annotation
    origin = typing.get_origin(base)
    if origin is dict or base is dict:
        return None
    if origin is list:
        item = typing.get_args(base)[0]
        return None if item is dict or typing.get_origin(item) is dict else list[item]  # lists of mappings: YAML only
    return base


def _make_command(stage: str, cls: type[StageConfig]):
    helps = cls.help()
    params = [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                                default=typer.Option(None, "--config", help="YAML file of the stage's config keys."))]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = _flag_type(hints[f.name])
        if t is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        decls = [f"{flag}/--no-{f.name.replace('_', '-')}"] if t is bool else [flag]
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=t | None,
                                        default=typer.Option(None, *decls, help=helps.get(f.name, ""), show_default=False)))

    def command(**kwargs: Any) -> None:
        config = kwargs.pop("config")
        overrides = {k: v for k, v in kwargs.items() if v is not None and v != []}
        cfg = cls.from_yaml(config, overrides)
        # The checkpoint folder is replaced with --overwrite: it must not be or hold an input.
        check_output_apart(cfg.out, [cfg.cohort, cfg.init, getattr(cfg, "tasks", None)])
        _run(stage, cfg)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = (cls.__doc__ or "").strip().splitlines()[0]
    command.__name__ = f"train_{stage}"
    return command


def _run(stage: str, cfg: StageConfig) -> None:
    from medfuse.model.locate import quiet_transformers

    quiet_transformers()
    command = "medfuse " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["train"] else None
    if stage == "encoders":
        from medfuse.train.encoders import train_encoders

        summary = train_encoders(cfg, command=command)  # type: ignore[arg-type]
    elif stage in ("align", "sft"):
        from medfuse.train.lm_stages import train_lm_stage

        summary = train_lm_stage(cfg, command=command)  # type: ignore[arg-type]
    else:
        from medfuse.train.grpo import train_grpo

        summary = train_grpo(cfg, command=command)  # type: ignore[arg-type]
    print(json.dumps(summary, ensure_ascii=False))


for _stage, _cls in STAGES.items():
    train_app.command(_stage, help=(_cls.__doc__ or "").strip().splitlines()[0])(_make_command(_stage, _cls))


def _register_evaluate() -> None:
    from medfuse.cli.model_cmd import model_app

    @model_app.command("evaluate")
    def model_evaluate_cmd(
        checkpoint: Path = typer.Argument(..., help="Checkpoint folder."),
        cohort: Path = typer.Option(..., "--cohort", help="Held-out labelled cohort (a fresh synthetic seed)."),
        lm_samples: int = typer.Option(0, "--lm-samples", min=0, help="Diagnosis prompts answered by the LM (slow on CPU)."),
        limit: int | None = typer.Option(None, "--limit", min=1, help="Evaluate on the first N cases only."),
        write: bool = typer.Option(False, "--write", help="Store the result as the model card's `evaluation`."),
    ) -> None:
        """Score a checkpoint on a held-out cohort (diagnosis, single-modality inputs, grounding, LM answers)."""
        from medfuse.model.locate import quiet_transformers
        from medfuse.model import MedFuse
        from medfuse.train.evaluate import evaluate_checkpoint

        quiet_transformers()
        model = MedFuse.load(checkpoint)
        result = evaluate_checkpoint(model, cohort, lm_samples=lm_samples, limit=limit)
        result["command"] = "medfuse " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["model"] else None
        if write:
            model.card["evaluation"] = result
            model.save(checkpoint, overwrite=True)
        print(json.dumps(result, ensure_ascii=False, indent=2))


_register_evaluate()
