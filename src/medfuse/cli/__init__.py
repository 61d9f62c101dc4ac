"""The `medfuse` command: one verb per stage.

User mistakes (`MedfuseError`) are printed as one line on stderr with a non-zero exit
and no traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

from medfuse.cli.app import app
from medfuse.errors import MedfuseError


def main(argv: list[str] | None = None) -> int:
    try:
        app(args=argv, prog_name="medfuse", standalone_mode=False)
    except MedfuseError as e:
        print(f"medfuse: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("medfuse: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # typer.Exit / click exits
        return int(e.code or 0)
    except Exception as e:
        import click

        if isinstance(e, click.exceptions.Exit):
            return e.exit_code
        if isinstance(e, click.ClickException):
            e.show()
            return e.exit_code
        if isinstance(e, click.exceptions.Abort):
            print("medfuse: aborted", file=sys.stderr)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
