"""Bearer tokens with roles for the review service.

A token file (JSON) lists `{"name", "role", "sha256"}` entries: only the SHA-256 of each
token is stored, never the token. Tokens are 32 random bytes (URL-safe base64), so a
plain hash is enough (there is nothing to brute-force, unlike a password) and a lookup
costs one hash. Roles:

- `clinician`: read results, open the review page, record feedback, export results;
- `api`: submit cases, call the chat-completions endpoint, read results and exports;
- `admin`: everything.

A request without a valid token gets 401; a valid token whose role lacks the permission
gets 403.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from medfuse.errors import InputError
from medfuse.record.store import write_text_atomic

ROLES = ("clinician", "api", "admin")
# permission -> roles holding it
PERMISSIONS: dict[str, frozenset[str]] = {
    "read": frozenset({"clinician", "api", "admin"}),
    "review": frozenset({"clinician", "admin"}),
    "submit": frozenset({"api", "admin"}),
    "complete": frozenset({"api", "admin"}),
}


@dataclass(frozen=True)
class Principal:
    """Who made a request: the token's name (never the token) and its role."""

    name: str
    role: str

    def may(self, permission: str) -> bool:
        return self.role in PERMISSIONS[permission]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenRegistry:
    """Token hashes -> principals."""

    def __init__(self, entries: list[tuple[str, str, str]] | None = None):
        self._by_hash: dict[str, Principal] = {}
        for name, role, digest in entries or []:
            self._by_hash[digest] = Principal(name, role)

    def __len__(self) -> int:
        return len(self._by_hash)

    def add(self, name: str, role: str) -> str:
        """Register a new random token for (name, role); returns the token (shown once)."""
        _check_entry(name, role, None)
        token = secrets.token_urlsafe(32)
        self._by_hash[hash_token(token)] = Principal(name, role)
        return token

    def lookup(self, token: str | None) -> Principal | None:
        if not token:
            return None
        digest = hash_token(token)
        for known, principal in self._by_hash.items():
            # Constant-time comparison over every entry: timing tells nothing about the hashes.
            if hmac.compare_digest(known, digest):
                return principal
        return None

    def entries(self) -> list[dict[str, str]]:
        return [{"name": p.name, "role": p.role, "sha256": d} for d, p in self._by_hash.items()]

    @classmethod
    def read(cls, path: Path) -> TokenRegistry:
        """Read a token file; a missing or malformed file is one `InputError` naming it."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(path, "no such token file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(path, f"cannot read ({e.__class__.__name__})") from None
        except ValueError:
            raise InputError(path, "not JSON (expected {\"tokens\": [{\"name\", \"role\", \"sha256\"}, ...]})") from None
        items = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise InputError(path, "expected {\"tokens\": [{\"name\", \"role\", \"sha256\"}, ...]}")
        entries = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise InputError(path, f"tokens[{i}] is not an object")
            name, role, digest = item.get("name"), item.get("role"), item.get("sha256")
            _check_entry(name, role, path, i)
            if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
                raise InputError(path, f"tokens[{i}].sha256 must be 64 lower-case hex digits (the token's hash)")
            entries.append((name, role, digest))
        return cls(entries)

    def write(self, path: Path) -> None:
        """Write the token file atomically, readable by its owner only."""
        write_text_atomic(path, json.dumps({"tokens": self.entries()}, indent=2) + "\n", mode=0o600)


def _check_entry(name: object, role: object, path: Path | None, i: int | None = None) -> None:
    where = f"tokens[{i}]." if i is not None else ""
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise InputError(path, f"{where}name must be a non-empty string of at most 64 characters")
    if role not in ROLES:
        raise InputError(path, f"{where}role '{role}': use one of {', '.join(ROLES)}")
