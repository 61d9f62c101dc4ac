"""What the importers of public datasets share: their index tables (CSV), the side files
found beside the data, and finding each listed image by its file name.

A public set ships as a folder of images or records plus an index (`labels.csv`,
`metadata.csv`, `Data_Entry_2017.csv`) that names each file. The index drives the import:
every row must find its file (else an `InputError` naming it, or with `--skip-bad` a
listed skip), and files no row names are counted, not imported unlabelled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from medfuse.io.base import ImportReport, expand_paths
from medfuse.io.image import IMAGE_SUFFIXES


def unique_rows(df: pd.DataFrame, column: str, report: ImportReport) -> list[dict[str, str]]:
    """The rows of an index table, each naming a file in `column` once: a row without a
    name or naming a file already listed is skipped and counted."""
    rows, seen = [], set()
    for rec in df.to_dict("records"):
        name = str(rec[column]).strip()
        if not name:
            report.skip("index row without a file name")
        elif name in seen:
            report.skip("index row for a file already listed")
        else:
            seen.add(name)
            rows.append({**rec, column: name})
    return rows


def first_column(df: pd.DataFrame, *names: str) -> str | None:
    """The first of `names` that `df` has as a column (datasets spell them differently)."""
    return next((n for n in names if n in df.columns), None)


def side_file(sources: Sequence[str | Path], names: Iterable[str]) -> Path | None:
    """A side file (labels, boxes) at the top of the one folder given as input, by the
    first of `names` found there; None when the input is not one folder or has none."""
    if len(sources) != 1 or not Path(sources[0]).is_dir():
        return None
    folder = Path(sources[0])
    return next((folder / n for n in names if (folder / n).is_file()), None)


def index_images(sources: Iterable[str | Path], report: ImportReport) -> dict[str, Path]:
    """Image files below `sources` (folders searched recursively, files, globs) by file
    name. A name found twice keeps its first path and is counted in `report`."""
    by_name: dict[str, Path] = {}
    for path in expand_paths(sources):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.name in by_name:
            report.skip("image file name found twice among the inputs (the first is used)")
            continue
        by_name[path.name] = path
    return by_name


def number(text: object) -> float | None:
    """A finite float from a CSV cell, None for '' or text that is no number."""
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def sex_code(text: object) -> str | None:
    """'F' or 'M' from 'F', 'female', 'M', 'Male' ...; None otherwise."""
    s = str(text or "").strip().upper()[:1]
    return s if s in ("F", "M") else None


def count_unlisted(images: dict[str, Path], listed: set[str], report: ImportReport) -> None:
    """Count the images no index row names (they are not imported: no labels)."""
    unlisted = sum(1 for name in images if name not in listed)
    if unlisted:
        report.skip("image not in the labels CSV (not imported)", unlisted)
