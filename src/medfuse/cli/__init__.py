"""The `medfuse` command: one verb per stage.

User mistakes (`MedfuseError`) are printed as one line on stderr with a non-zero exit
and no traceback; usage errors are reported by click (exit 2); anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import sys

from medfuse.cli.app import app
from medfuse.errors import MedfuseError


def main(argv: list[str] | None = None) -> int:
    try:
        # standalone mode: click prints usage errors itself and exits 2 (no traceback)
        app(args=argv, prog_name="medfuse", standalone_mode=True)
    except MedfuseError as e:
        print(f"medfuse: error: {e}", file=sys.stderr)
        return e.exit_code
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        return code if isinstance(code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
