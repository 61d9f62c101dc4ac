"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class MedfuseError(Exception):
    """Base class for expected, user-facing errors (bad input, bad config)."""

    exit_code = 2


class InputError(MedfuseError):
    """A file cannot be read as what it claims to be.

    The message names the file (by the path the user gave) and the problem; it must not
    contain patient identifiers or record contents.
    """

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class ConfigError(MedfuseError):
    """A configuration key or value is invalid; the message names the key."""
