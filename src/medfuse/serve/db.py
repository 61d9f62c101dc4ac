"""The review service's storage: submitted cases, their results and clinician feedback.

SQLAlchemy Core/ORM on portable column types only (Integer, String, Text, LargeBinary,
DateTime), so one schema serves SQLite (the default, one file) and PostgreSQL (by URL).

Durability: every write is one transaction, and the HTTP layer acknowledges a write only
after its commit returned. On SQLite the connection runs in WAL mode with
`synchronous=FULL`, so a committed transaction is on disk before the commit returns and
survives the server being killed (`kill -9`) at any point; an uncommitted one is rolled
back when the database is next opened. Feedback is append-only (a later decision on the
same item supersedes an earlier one, which stays as history), so no write ever updates
or deletes a committed decision.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from medfuse.errors import MedfuseError

DEFAULT_DB_URL = "sqlite:///medfuse-serve.db"
TARGETS = ("diagnosis", "sentence")
DECISIONS = ("accept", "reject", "edit")


class Base(DeclarativeBase):
    pass


class CaseRow(Base):
    """One submitted case and the model's result for it.

    `ref` is a random public handle used in URLs and logs' place of the case id, so that
    neither URLs nor access logs carry anything derived from the patient record.
    """

    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ref: Mapped[str] = mapped_column(String(32), unique=True, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    submitted_by: Mapped[str] = mapped_column(String(64))
    result_json: Mapped[str] = mapped_column(Text)  # DiagnoseResult
    sentences_json: Mapped[str] = mapped_column(Text)  # the checked reasoning, one sentence per item
    evidence_json: Mapped[str] = mapped_column(Text)  # Evidence items with units and abnormal flags
    prompt_text: Mapped[str] = mapped_column(Text)  # the chat-formatted prompt the language model saw
    raw_output: Mapped[str] = mapped_column(Text)  # the language model's text before checking
    explanation_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    explanation_html: Mapped[str | None] = mapped_column(Text, nullable=True)
    files: Mapped[list[CaseFileRow]] = relationship(back_populates="case", cascade="all, delete-orphan")


class CaseFileRow(Base):
    """A file of the case folder (`case.json`, images, WFDB) or a source DICOM header."""

    __tablename__ = "case_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    case: Mapped[CaseRow] = relationship(back_populates="files")


class FeedbackRow(Base):
    """One clinician decision on one diagnosis or reasoning sentence (append-only)."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    target: Mapped[str] = mapped_column(String(16))  # 'diagnosis' | 'sentence'
    item_index: Mapped[int] = mapped_column(Integer)
    decision: Mapped[str] = mapped_column(String(8))  # 'accept' | 'reject' | 'edit'
    original: Mapped[str] = mapped_column(Text)  # the model's text of the item, copied at decision time
    edited: Mapped[str | None] = mapped_column(Text, nullable=True)
    reviewer: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class StoredCase:
    """What the service keeps of a case, read back in one piece."""

    ref: str
    created_at: dt.datetime
    result: dict[str, Any]
    sentences: list[str]
    evidence: list[dict[str, Any]]
    prompt_text: str
    raw_output: str
    explanation: dict[str, Any] | None
    explanation_html: str | None
    files: dict[str, bytes]


@dataclass(frozen=True)
class Decision:
    """The latest decision on one item."""

    id: int
    target: str
    index: int
    decision: str
    original: str
    edited: str | None
    reviewer: str
    created_at: dt.datetime


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer; FULL: a commit is fsynced before it returns.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def open_engine(url: str) -> Engine:
    """An engine for `url` with the schema created; SQLite gets WAL and full sync.

    Raises `MedfuseError` (one line, the URL without its password) when the URL is not a
    database URL or the database cannot be opened.
    """
    try:
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            # The web server answers from a thread pool; SQLite serialises the writes itself.
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"), **kwargs)
    except (ArgumentError, ImportError, ValueError) as e:
        raise MedfuseError(f"--db {_safe_url(url)}: not a usable database URL ({e.__class__.__name__})") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    try:
        Base.metadata.create_all(engine)
    except OperationalError as e:
        raise MedfuseError(f"--db {_safe_url(url)}: cannot open the database ({str(e.orig).splitlines()[0]})") from None
    return engine


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparseable URL)"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ReviewStore:
    """Cases, results and feedback in one database (see the module docstring)."""

    def __init__(self, url: str = DEFAULT_DB_URL):
        self.engine = open_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions() as session, session.begin():
            yield session

    def add_case(self, *, result: dict[str, Any], sentences: list[str], evidence: list[dict[str, Any]],
                 prompt_text: str, raw_output: str, files: dict[str, bytes], submitted_by: str,
                 explanation: dict[str, Any] | None = None, explanation_html: str | None = None) -> str:
        """Store a case in one transaction; returns its new public `ref`."""
        ref = uuid.uuid4().hex
        row = CaseRow(ref=ref, created_at=_now(), submitted_by=submitted_by, result_json=json.dumps(result),
                      sentences_json=json.dumps(sentences), evidence_json=json.dumps(evidence),
                      prompt_text=prompt_text, raw_output=raw_output,
                      explanation_json=None if explanation is None else json.dumps(explanation),
                      explanation_html=explanation_html,
                      files=[CaseFileRow(name=name, data=data) for name, data in sorted(files.items())])
        with self._session() as s:
            s.add(row)
        return ref

    def get_case(self, ref: str, with_files: bool = True) -> StoredCase | None:
        with self._session() as s:
            row = s.scalar(select(CaseRow).where(CaseRow.ref == ref))
            if row is None:
                return None
            files = {f.name: f.data for f in row.files} if with_files else {}
            return StoredCase(ref=row.ref, created_at=row.created_at, result=json.loads(row.result_json),
                              sentences=json.loads(row.sentences_json), evidence=json.loads(row.evidence_json),
                              prompt_text=row.prompt_text, raw_output=row.raw_output,
                              explanation=None if row.explanation_json is None else json.loads(row.explanation_json),
                              explanation_html=row.explanation_html, files=files)

    def case_refs(self) -> list[str]:
        """Every stored case's ref, oldest first."""
        with self._session() as s:
            return list(s.scalars(select(CaseRow.ref).order_by(CaseRow.id)))

    def recent_cases(self, limit: int = 100) -> list[tuple[str, dt.datetime, str]]:
        """(ref, created_at, case_id) of the newest `limit` cases, newest first."""
        with self._session() as s:
            rows = s.execute(select(CaseRow.ref, CaseRow.created_at, CaseRow.result_json)
                             .order_by(CaseRow.id.desc()).limit(limit)).all()
        return [(ref, created, json.loads(result)["case_id"]) for ref, created, result in rows]

    def add_feedback(self, ref: str, target: str, index: int, decision: str, original: str,
                     edited: str | None, reviewer: str) -> int:
        """Append one decision (committed before this returns); returns its id."""
        if target not in TARGETS or decision not in DECISIONS:
            raise ValueError(f"bad feedback target/decision: {target}/{decision}")
        with self._session() as s:
            case_id = s.scalar(select(CaseRow.id).where(CaseRow.ref == ref))
            if case_id is None:
                raise KeyError(ref)
            row = FeedbackRow(case_id=case_id, target=target, item_index=index, decision=decision,
                              original=original, edited=edited, reviewer=reviewer, created_at=_now())
            s.add(row)
            s.flush()
            return row.id

    def decisions(self, ref: str) -> list[Decision]:
        """The latest decision per (target, index) of a case, by target then index."""
        with self._session() as s:
            rows = s.scalars(select(FeedbackRow).join(CaseRow).where(CaseRow.ref == ref)
                             .order_by(FeedbackRow.id)).all()
        latest: dict[tuple[str, int], FeedbackRow] = {}
        for r in rows:
            latest[(r.target, r.item_index)] = r
        return [Decision(id=r.id, target=r.target, index=r.item_index, decision=r.decision, original=r.original,
                         edited=r.edited, reviewer=r.reviewer, created_at=r.created_at)
                for _, r in sorted(latest.items())]

    def feedback_ids(self) -> set[int]:
        """Ids of every stored decision (history included)."""
        with self._session() as s:
            return set(s.scalars(select(FeedbackRow.id)))

    def integrity_ok(self) -> bool:
        """SQLite's own integrity check (True on other databases, which have their own tools)."""
        if self.engine.dialect.name != "sqlite":
            return True
        with self.engine.connect() as c:
            return c.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"

    def close(self) -> None:
        self.engine.dispose()
