"""The guard every command that reads inputs and writes an output runs first: the output
must not be, lie inside, or hold one of the inputs.

Writing into the input would mix results into the data (a rerun then reads its own
output back as input), and replacing an output folder that holds the input (`--overwrite`)
would delete the input.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from medfuse.errors import InputError


def check_output_apart(out: str | Path, inputs: Iterable[str | Path | None], flag: str = "--out") -> None:
    """Raise `InputError` naming `out` when it is one of `inputs`, lies inside one, or
    holds one (paths compared after resolving links; `None` inputs are ignored).

    >>> check_output_apart("runs/a", ["cohort"]) is None
    True
    >>> check_output_apart("cohort/results", ["cohort"])
    Traceback (most recent call last):
    ...
    medfuse.errors.InputError: cohort/results: --out lies inside the input cohort; write it elsewhere
    """
    target = Path(out).resolve()
    for given in inputs:
        if given is None or str(given) == "":
            continue
        source = Path(given).resolve()
        if target == source:
            problem = f"{flag} is the input {given}"
        elif target.is_relative_to(source):
            problem = f"{flag} lies inside the input {given}"
        elif source.is_relative_to(target):
            problem = f"{flag} holds the input {given}"
        else:
            continue
        raise InputError(out, f"{problem}; write it elsewhere")
