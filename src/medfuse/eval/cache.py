"""The cache of model outputs: one SQLite file in the run's output folder.

Key: (model id, prompt version, prompt hash). The prompt hash covers the system and user
text, image paths and the output budget (`Prompt.cache_hash`), so any change to what the
model would see is a miss, and a metric or parser change is always a hit. Outputs are
committed one by one as they arrive, so an interrupted run keeps everything it received.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from medfuse.errors import InputError

CACHE_FILE = "cache.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outputs (
    model_id TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    prompt_hash TEXT NOT NULL,
    output TEXT NOT NULL,
    extra TEXT,
    created REAL NOT NULL,
    PRIMARY KEY (model_id, prompt_version, prompt_hash)
)
"""


class OutputCache:
    """Model outputs keyed by (model id, prompt version, prompt hash)."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / CACHE_FILE
        try:
            self._db = sqlite3.connect(self.path)
            self._db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            self._db.commit()
        except sqlite3.DatabaseError as e:
            raise InputError(self.path, f"not a medfuse output cache ({e})") from None

    def lookup(self, model_id: str, prompt_version: str) -> dict[str, tuple[str, dict | None]]:
        """Every cached output of this model and prompt version: hash -> (output, extra)."""
        rows = self._db.execute(
            "SELECT prompt_hash, output, extra FROM outputs WHERE model_id = ? AND prompt_version = ?",
            (model_id, prompt_version),
        )
        return {h: (out, json.loads(extra) if extra else None) for h, out, extra in rows}

    def put(self, model_id: str, prompt_version: str, prompt_hash: str, output: str, extra: dict | None = None) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO outputs VALUES (?, ?, ?, ?, ?, ?)",
            (model_id, prompt_version, prompt_hash, output, json.dumps(extra) if extra else None, time.time()),
        )
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> OutputCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
