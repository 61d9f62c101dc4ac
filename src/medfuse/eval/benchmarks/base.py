"""The shared contract of every benchmark loader.

A loader turns a benchmark's public files (as released, no conversion step) into a list
of `EvalItem`. Adding a benchmark means adding one module to this package that defines a
`Benchmark` subclass decorated with `@register`; the registry finds it by name.

Conventions every loader follows:
- `load(path, split=None, lang=None, limit=None)`: `path` is the file or the folder of the
  release; `split=None` means the split papers report on (`default_split`), `"all"` means
  every record; `lang` keeps one language where the benchmark has several.
- A file that cannot be read as the format raises `InputError(path, problem)`.
- An odd record inside a valid file (no gold, image missing, unknown option) is skipped and
  counted in `self.skipped` (reason -> count), never dropped silently.
- Option letters are upper-case `A`, `B`, ...; gold for multiple choice is a letter; boxes
  are on the 0-999 grid of DESIGN.md.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from medfuse.errors import InputError

TaskType = Literal["diagnosis", "report", "vqa", "multiple_choice", "grounding"]
TASK_TYPES: tuple[str, ...] = ("diagnosis", "report", "vqa", "multiple_choice", "grounding")

# How the gold answer is encoded and therefore how an output is parsed and scored.
AnswerType = Literal[
    "label_set",  # diagnosis: gold is a list of disease names
    "report",  # free-text report
    "closed",  # closed VQA (yes/no or a short fixed answer); exact match after normalisation
    "open",  # open VQA; exact match + token recall/F1
    "choice",  # multiple choice: gold is an option letter
    "yes_no_maybe",  # PubMedQA-style: gold is yes / no / maybe
    "boxes",  # grounding: gold is a list of [x1, y1, x2, y2] boxes on the 0-999 grid
]

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class EvalItem(BaseModel):
    """One question of a benchmark, model-agnostic.

    The prompt is built from `question`, `context`, `options`/`candidates` and `images` by
    `medfuse.eval.prompts`; `gold` and `answer_type` drive parsing and scoring.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., description="Unique within the benchmark (the release's id where it has one).")
    benchmark: str
    task_type: TaskType
    answer_type: AnswerType
    question: str = Field(..., description="The question or instruction as the benchmark states it.")
    context: str | None = Field(None, description="Text the question refers to (abstract, case summary).")
    options: dict[str, str] = Field(default_factory=dict, description="Option letter -> option text.")
    candidates: list[str] = Field(default_factory=list, description="Label vocabulary for diagnosis items.")
    images: list[str] = Field(default_factory=list, description="Absolute paths of the images, in order.")
    gold: str | list[str] | list[list[int]]
    lang: str = "en"
    metadata: dict[str, Any] = Field(default_factory=dict, description="Source fields kept for breakdowns.")


class Benchmark:
    """Base class: subclasses set the class attributes and implement `_load`."""

    name: ClassVar[str]
    task_type: ClassVar[str]
    description: ClassVar[str] = ""
    default_split: ClassVar[str | None] = None
    splits: ClassVar[tuple[str, ...]] = ()  # accepted split names besides "all"
    # Metadata keys whose values are reported as accuracy breakdowns (question_type, ...).
    breakdowns: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.skipped: Counter[str] = Counter()

    def load(
        self, path: str | Path, split: str | None = None, lang: str | None = None, limit: int | None = None
    ) -> list[EvalItem]:
        """Read the benchmark's items from `path` (file or release folder).

        `split=None` picks `default_split`; `lang` keeps one language; `limit` keeps the
        first N items (in file order) after filtering. Resets and fills `self.skipped`.
        """
        path = Path(path)
        if not path.exists():
            raise InputError(path, "no such file or folder")
        split = split or self.default_split
        if split is not None and split != "all" and self.splits and split not in self.splits:
            raise InputError(path, f"{self.name} has no split '{split}' (use one of: {', '.join(self.splits)}, all)")
        if limit is not None and limit < 1:
            raise InputError(path, f"--limit must be >= 1, got {limit}")
        self.skipped = Counter()
        items: list[EvalItem] = []
        seen: set[str] = set()
        for item in self._load(path, split, lang):
            if lang is not None and item.lang != lang:
                continue
            if item.id in seen:
                self.skipped["duplicate id"] += 1
                continue
            seen.add(item.id)
            items.append(item)
            if limit is not None and len(items) >= limit:
                break
        return items

    def _load(self, path: Path, split: str | None, lang: str | None):
        """Yield EvalItems (an iterator, so `limit` stops reading early)."""
        raise NotImplementedError

    # ------------------------------------------------------------ helpers for loaders

    def skip(self, reason: str) -> None:
        """Count a record left out of the evaluation, with a short reason (no content)."""
        self.skipped[reason] += 1


_REGISTRY: dict[str, type[Benchmark]] = {}


def register(cls: type[Benchmark]) -> type[Benchmark]:
    """Class decorator: make a benchmark loadable by `cls.name`."""
    if cls.task_type not in TASK_TYPES:
        raise ValueError(f"{cls.__name__}: task_type must be one of {TASK_TYPES}, got {cls.task_type!r}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"benchmark name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


# ---------------------------------------------------------------- file reading helpers

def read_json(path: Path) -> Any:
    """Parse a JSON file or raise InputError naming it."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON (line {e.lineno}: {e.msg})") from None
    except IsADirectoryError:
        raise InputError(path, "expected a JSON file, got a folder") from None


def iter_jsonl(path: Path):
    """Yield (line number, object) for each non-empty line of a JSON Lines file."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(path, f"invalid JSON on line {lineno} ({e.msg}); expected JSON Lines") from None
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text") from None


def read_csv_rows(path: Path, header: bool = True) -> list[dict[str, str]] | list[list[str]]:
    """Rows of a CSV file (dicts keyed by header, or lists when `header=False`)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            if header:
                reader = csv.DictReader(f)
                rows = list(reader)
                if reader.fieldnames is None:
                    raise InputError(path, "empty CSV file")
                return rows
            return [r for r in csv.reader(f) if r]
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text") from None
    except csv.Error as e:
        raise InputError(path, f"invalid CSV ({e})") from None


def pick_file(path: Path, candidates: list[str], what: str) -> Path:
    """`path` itself if it is a file, else the first of `candidates` found under the folder."""
    if path.is_file():
        return path
    for c in candidates:
        p = path / c
        if p.is_file():
            return p
    raise InputError(path, f"no {what} found (looked for {', '.join(candidates)})")


def text_or_none(value: Any) -> str | None:
    """A stripped string, or None for null/NaN/empty (answers may not be strings in the sources)."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN from pandas-written files
        return None
    s = str(value).strip()
    return s or None


def resolve_image(root: Path, relative: str) -> Path | None:
    """The image file `relative` under `root`, or None when it does not exist."""
    p = (root / relative).resolve()
    return p if p.is_file() else None
