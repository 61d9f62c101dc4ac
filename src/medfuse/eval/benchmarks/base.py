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

A loader module holds only what is specific to its release format; the file discovery,
reading, record checks, image look-up and item building shared by several formats live
here (`pick_file`, `read_json_list`, `check_record`, `find_image`, `option_letter`,
`Benchmark.item`, and `VQABenchmark` for the free-text VQA releases).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal, TextIO

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

    def item(self, **fields: Any) -> EvalItem:
        """An `EvalItem` of this benchmark: `benchmark` and `task_type` are the loader's own."""
        return EvalItem(benchmark=self.name, task_type=self.task_type, **fields)

    def one_split(self, split: str | None) -> str:
        """The split to read where each file holds one split: `all` reads the default one."""
        return split if split and split != "all" else self.default_split


class VQABenchmark(Benchmark):
    """Image question answering with a free-text gold (VQA-RAD, SLAKE, PathVQA).

    Every record has a question, an answer and one image. An item is closed or open by the
    release's `answer_type` (OPEN / CLOSED); where a release has none, a yes/no answer is
    closed and any other open, as MedEvalKit does.
    """

    task_type = "vqa"
    breakdowns = ("answer_type",)

    def vqa_item(
        self, id: str, record: dict, image: Path | None, kind: str | None = None, lang: str = "en",
        metadata: dict[str, Any] | None = None,
    ) -> EvalItem | None:
        """The item of one QA record (its `question` and `answer` fields), or None when the
        question or answer is empty or the image is missing (counted in `skipped`).

        `kind` is the release's OPEN / CLOSED (None: decided by the yes/no rule), kept in
        `metadata["answer_type"]` for the breakdown.
        """
        question, answer = text_or_none(record.get("question")), text_or_none(record.get("answer"))
        if question is None or answer is None:
            self.skip("empty question or answer")
            return None
        if image is None:
            self.skip("image file not found")
            return None
        if kind is None:
            kind = "CLOSED" if answer.lower() in ("yes", "no") else "OPEN"
        return self.item(
            id=id,
            answer_type="closed" if kind == "CLOSED" else "open",
            question=question,
            images=[str(image)],
            gold=answer,
            lang=lang,
            metadata={**(metadata or {}), "answer_type": kind},
        )


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

@contextmanager
def _open_text(path: Path, newline: str | None = None) -> Iterator[TextIO]:
    """`path` opened as UTF-8 text (a BOM is dropped), for a `with` block; a missing file or
    one that is not UTF-8, found when opening or while reading, raises InputError naming it."""
    try:
        with open(path, encoding="utf-8-sig", newline=newline) as f:
            yield f
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except UnicodeDecodeError:
        raise InputError(path, "not UTF-8 text") from None


# Nesting deeper than Python's parser can follow is not a benchmark file; json raises
# RecursionError for it, which must become the same one-line error as any invalid JSON.
_TOO_DEEP = "invalid JSON (nested too deeply)"


def read_json(path: Path) -> Any:
    """Parse a JSON file or raise InputError naming it."""
    try:
        with _open_text(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON (line {e.lineno}: {e.msg})") from None
    except RecursionError:
        raise InputError(path, _TOO_DEEP) from None
    except IsADirectoryError:
        raise InputError(path, "expected a JSON file, got a folder") from None


def read_json_list(path: Path, records: str) -> list:
    """A JSON file that must hold a list (of `records`, named in the error otherwise)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise InputError(path, f"expected a JSON list of {records}")
    return data


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, object) for each non-empty line of a JSON Lines file."""
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(path, f"invalid JSON on line {lineno} ({e.msg}); expected JSON Lines") from None
            except RecursionError:
                raise InputError(path, f"{_TOO_DEEP} on line {lineno}") from None
            yield lineno, value


def read_csv_rows(path: Path, header: bool = True) -> list[dict[str, str]] | list[list[str]]:
    """Rows of a CSV file (dicts keyed by header, or lists when `header=False`)."""
    try:
        with _open_text(path, newline="") as f:
            if not header:
                return [r for r in csv.reader(f) if r]
            reader = csv.DictReader(f)
            rows = list(reader)
            if reader.fieldnames is None:
                raise InputError(path, "empty CSV file")
            return rows
    except csv.Error as e:
        raise InputError(path, f"invalid CSV ({e})") from None


def check_record(path: Path, index: int, record: Any, fields: Sequence[str], source: str) -> dict:
    """`record` (number `index` of the list in `path`) as a dict holding every one of `fields`.

    A record without them means the file is not the format at all, so this raises
    InputError ("record 3 lacks question/answer (not a VQA-RAD file)") rather than skipping.
    """
    if not isinstance(record, dict) or any(f not in record for f in fields):
        raise InputError(path, f"record {index} lacks {'/'.join(fields)} (not {source})")
    return record


def pick_file(path: Path, candidates: Sequence[str], missing: str) -> Path:
    """`path` itself if it is a file, else the first of `candidates` under the folder.

    `missing` is the problem reported when the folder holds none of them.
    """
    if path.is_file():
        return path
    for c in candidates:
        p = path / c
        if p.is_file():
            return p
    raise InputError(path, missing)


def text_or_none(value: Any) -> str | None:
    """A stripped string, or None for null/NaN/empty (answers may not be strings in the sources)."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN from pandas-written files
        return None
    s = str(value).strip()
    return s or None


def option_letter(options: dict[str, str], text: str | None, fold: Callable[[str], str] = str.strip) -> str | None:
    """The letter of the one option whose text equals `text` after `fold`, else None.

    For releases that give the gold answer as option text; an answer matching no option,
    or several, has no letter.
    """
    if not text:
        return None
    matches = [k for k, v in options.items() if fold(v) == fold(text)]
    return matches[0] if len(matches) == 1 else None


def resolve_image(root: Path, relative: str) -> Path | None:
    """The image file `relative` under `root`, or None when it does not exist."""
    p = (root / relative).resolve()
    return p if p.is_file() else None


def image_roots(folder: Path, *subfolders: str) -> list[Path]:
    """Where a release keeps its images: the `subfolders` of `folder` that exist, then `folder`."""
    return [d for d in (*(folder / s for s in subfolders), folder) if d.is_dir()]


def find_image(roots: Sequence[Path], relative: str) -> Path | None:
    """The image `relative` under the first of `roots` that holds it, or None."""
    return next((p for root in roots if (p := resolve_image(root, relative)) is not None), None)
