"""The `medfuse` command: one verb per stage.

Every mistake a user can make ends in one line on stderr, `medfuse: error: <message>`,
and a non-zero exit, with no traceback: a `MedfuseError` (bad input, bad config) exits
with its own code, a usage error (missing argument, bad option value, unknown option or
verb) with 2. `--help` is printed as the app formats it. Ctrl-C exits 130. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import click
import typer

from medfuse.cli.app import app
from medfuse.errors import MedfuseError

# Usage errors (missing argument, bad option value, unknown verb): click's, or, from typer
# 0.21 on, typer's vendored copy of them. Flower (`medfuse federate`) holds typer below
# 0.21, so both must work.
_USAGE_ERROR: type[Exception] = getattr(typer, "TyperException", click.ClickException)


def main(argv: list[str] | None = None) -> int:
    """Run `medfuse` with `argv` (default: the process arguments); the exit code."""
    try:
        # Not standalone: click raises usage errors instead of printing its multi-line box.
        result = app(args=argv, prog_name="medfuse", standalone_mode=False)
    except _USAGE_ERROR as e:  # click's (or typer's vendored) errors: usage errors, exit code 2
        # A group called without a verb has printed its help already (typer's own handler
        # recognises this error by name too: the class is not public).
        if type(e).__name__ != "NoArgsIsHelpError":
            print(f"medfuse: error: {usage_error_line(e)}", file=sys.stderr)
        return e.exit_code
    except typer.Abort:  # end of input at a prompt
        print("medfuse: error: aborted", file=sys.stderr)
        return 1
    except MedfuseError as e:
        print(f"medfuse: error: {e}", file=sys.stderr)
        return e.exit_code
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        return code if isinstance(code, int) else 1
    # Non-standalone click returns the exit code of `typer.Exit` / `--help`, else the
    # command's return value (None: success).
    return result if isinstance(result, int) else 0


def usage_error_line(error: click.ClickException) -> str:
    """A click error as one line: the verb it concerns, the message, and where help is,
    e.g. "import fhir: Missing argument 'sources'. (see 'medfuse import fhir --help')"."""
    message = " ".join(error.format_message().split())
    ctx = getattr(error, "ctx", None)
    if ctx is None:
        return message
    verb = ctx.command_path.removeprefix("medfuse").strip()
    where = f"{verb}: " if verb else ""
    return f"{where}{message} (see '{ctx.command_path} --help')"


if __name__ == "__main__":
    sys.exit(main())
