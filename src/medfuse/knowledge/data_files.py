"""Reading the knowledge data files (lab catalogue, disease panel, variant knowledge).

Each file ships inside the package under `data/` and may be replaced by a user's own
file of the same shape; both paths end in one clear `InputError` for a missing file or
invalid YAML.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from medfuse.errors import InputError


def read_data_file(path: str | Path | None, bundled: str, missing: str) -> tuple[str, str]:
    """(text, origin) of a knowledge file: the bundled `data/<bundled>` when `path` is
    None, else the file at `path`; `missing` is the error message when it is not a file.

    The origin (the bundled name or the path) is what error messages name.
    """
    if path is None:
        return resources.files("medfuse.knowledge").joinpath("data").joinpath(bundled).read_text("utf-8"), bundled
    p = Path(path)
    if not p.is_file():
        raise InputError(p, missing)
    return p.read_text("utf-8"), str(p)


def parse_yaml(text: str, origin: str) -> Any:
    """The YAML document in `text`; a syntax error is one `InputError` naming `origin`."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise InputError(origin, f"invalid YAML ({e.__class__.__name__})") from None
