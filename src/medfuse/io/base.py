"""What every importer shares: a report of what was written and skipped, finding the
files named by paths, folders and globs, and reading one file without stopping the run.

An importer is a generator `(source, report, **options) -> Iterator[PatientCase]`. It
raises `medfuse.errors.InputError` for a file it cannot read at all, and calls
`report.skip(reason)` for an odd item inside a valid file (a text lab value, an
unknown unit, a duplicated result), so nothing is dropped silently. Writing the cases
into a cohort folder is `medfuse.io.cohort.write_cohort`.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from medfuse.errors import InputError
from medfuse.record.case import PatientCase

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")


@dataclass
class ImportReport:
    source: str
    cases_written: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    notes: Counter = field(default_factory=Counter)  # reason -> count: kept but changed (unit converted, ...)
    per_disease: Counter = field(default_factory=Counter)
    # (path as the user gave it, reason) for each whole file skipped with --skip-bad
    skipped_files: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, reason: str, n: int = 1) -> None:
        """Record an item dropped from the output, with a short reason (no patient data)."""
        self.skipped[reason] += n

    def skip_file(self, error: InputError, reason: str) -> None:
        """Record a whole input file skipped (`--skip-bad`): counted under `reason`, and
        listed by the path the user gave with the problem `error` names."""
        self.skipped[reason] += 1
        self.skipped_files.append((error.path or "", error.problem))

    def note(self, reason: str, n: int = 1) -> None:
        """Record an item kept but changed or marked (converted unit, censored value)."""
        self.notes[reason] += n

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "cases_written": self.cases_written,
            "skipped": dict(sorted(self.skipped.items())),
            "notes": dict(sorted(self.notes.items())),
            "per_disease": dict(sorted(self.per_disease.items())),
            "skipped_files": [{"file": path, "reason": reason} for path, reason in self.skipped_files],
        }


def expand_paths(sources: Iterable[str | Path], patterns: tuple[str, ...] = ("*",)) -> list[Path]:
    """Files named by `sources`: files as given, folders searched recursively for `patterns`,
    and glob patterns expanded. Sorted and de-duplicated."""
    out: list[Path] = []
    for s in sources:
        p = Path(s)
        if any(ch in str(s) for ch in "*?["):
            import glob

            # glob.glob, unlike Path().glob, also takes absolute patterns ('/data/**/*.png').
            out.extend(Path(x) for x in glob.glob(str(s), recursive=True) if Path(x).is_file())
        elif p.is_dir():
            for pat in patterns:
                out.extend(x for x in p.rglob(pat) if x.is_file() and not any(part.startswith(".") for part in x.relative_to(p).parts))
        else:
            out.append(p)
    return list(dict.fromkeys(sorted(out)))


def pseudonym(value: str, prefix: str, length: int = 12) -> str:
    """A short, stable, non-reversible-looking id for an identifier (UID, patient ID).

    >>> pseudonym("1.2.3", "dcm")
    'dcm-c47f5b18b8a4'

    The same input always gives the same id, so a patient's studies stay together in
    patient-level splits. Short identifiers can be found again by trying every value, so
    treat the result as a pseudonym, not as anonymisation.
    """
    digest = hashlib.sha256(value.strip().encode("utf-8")).hexdigest()[:length]
    return f"{prefix}-{digest}"


def scrubbed_name(name: str, identifiers: Iterable[str], prefix: str = "file") -> str:
    """A file name safe to store in a case: `name` itself, or its pseudonym (suffix kept)
    when it contains one of `identifiers` (a UID, a patient id or name).

    Exports often name files after what they hold ('<SOP Instance UID>.dcm',
    'Jane_Doe_<patient uuid>.json'); such a name would carry the identifier into the
    cohort. Identifiers of 8 characters or more are matched anywhere in the name, shorter
    ones only as a whole word, so a Patient id '1' does not hide every name with a 1.

    >>> scrubbed_name("chest.png", ["1.2.840.1234"]), scrubbed_name("1.2.840.1234.dcm", ["1.2.840.1234"])
    ('chest.png', 'file-3b54b7bc5e5d.dcm')
    """
    words = {w.lower() for w in re.split(r"[^A-Za-z0-9]+", name) if w}
    lower = name.lower()
    for ident in identifiers:
        ident = str(ident or "").strip().lower()
        if len(ident) >= 8 and ident in lower or ident and ident in words:
            suffix = re.search(r"(\.[A-Za-z][A-Za-z0-9]{0,5}){0,2}$", name).group(0)  # '.dcm', '.json.gz'
            return pseudonym(name, prefix) + suffix
    return name


def safe_case_id(text: str) -> str:
    """A case id made of [A-Za-z0-9._-] from any string (file stems, record names)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    return s or "case"


def read_source_bytes(path: Path) -> bytes:
    """The content of a source file, decompressed when its name ends in `.gz`.

    Raises `InputError` naming the file when it is missing or not a readable gzip file.
    """
    if not path.is_file():
        raise InputError(path, "no such file")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        import gzip

        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise InputError(path, f"not a readable gzip file ({e.__class__.__name__})") from None
    return raw


def read_or_skip(report: ImportReport, skip_bad: bool, reason: str, read: Callable[..., T], *args: Any) -> T | None:
    """`read(*args)`, or with `skip_bad` None when it raises `InputError` (counted in
    `report` as `reason`).

    Without `skip_bad` the error propagates: one unreadable file stops the import.
    """
    try:
        return read(*args)
    except InputError as e:
        if not skip_bad:
            raise
        report.skip_file(e, reason)
        return None


CaseStream = Iterator[PatientCase]


def read_index_csv(path: str | Path, required: Sequence[str], what: str = "labels CSV") -> pd.DataFrame:
    """A dataset's index table as text (no NaN: empty cells are ''), column names stripped.

    Raises `InputError` naming the file when it is missing, cannot be parsed, or lacks
    one of the `required` columns (the first missing one is named).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise InputError(path, f"cannot read CSV ({e.__class__.__name__})") from None
    df.columns = [str(c).strip() for c in df.columns]
    for column in required:
        if column not in df.columns:
            raise InputError(path, f"{what} has no '{column}' column")
    return df
