"""API keys: creation, listing, revocation and verification.

A key is 32 random alphanumeric characters (about 190 bits), shown once at creation. Only its
SHA-256 digest is stored: with that much entropy a slow password hash adds nothing. Lookups go
by digest and the stored digest is compared in constant time. There is no per-process cache,
so a revoked key is refused by every worker on its next request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import string
from dataclasses import dataclass
from datetime import timedelta

from .clock import isoformat, parse_iso, utcnow
from .errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from .storage import Storage

KEY_LENGTH = 32
ROLES = ("admin", "user")
_ALPHABET = string.ascii_letters + string.digits
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# last_used_at is written at most this often per key, so that authentication stays a read.
LAST_USED_RESOLUTION = timedelta(seconds=60)


@dataclass(frozen=True)
class ApiKey:
    name: str
    role: str
    created_at: str
    last_used_at: str | None = None
    revoked_at: str | None = None
    id: int | None = None  # never reused: what executions and events belong to

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def generate_key() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(KEY_LENGTH))


class KeyStore:
    def __init__(self, storage: Storage):
        self.storage = storage

    def create(self, name: str, role: str) -> tuple[ApiKey, str]:
        """Create a key; returns its record and the key itself, which is never stored."""
        if not _NAME_RE.match(name or ""):
            raise InvalidRequest(
                "key name must be 1-64 characters of letters, digits, '_', '.', '@' or '-'",
                {"name": name},
            )
        if role not in ROLES:
            raise InvalidRequest("role must be admin or user", {"role": role})
        key = generate_key()
        record = ApiKey(name=name, role=role, created_at=isoformat())
        try:
            with self.storage.write() as conn:
                conn.execute(
                    "INSERT INTO api_keys (name, role, key_hash, created_at) VALUES (?, ?, ?, ?)",
                    (name, role, digest(key), record.created_at),
                )
        except sqlite3.IntegrityError:
            raise InvalidRequest(
                f"a live key named {name!r} already exists", {"name": name}
            ) from None
        return record, key

    def list(self, include_revoked: bool = True) -> list[ApiKey]:
        sql = "SELECT name, role, created_at, last_used_at, revoked_at FROM api_keys"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        rows = self.storage.conn.execute(sql + " ORDER BY id").fetchall()
        return [ApiKey(**dict(row)) for row in rows]

    def count_live(self) -> int:
        return self.storage.conn.execute(
            "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL"
        ).fetchone()[0]

    def revoke(self, name: str) -> ApiKey:
        with self.storage.write() as conn:
            row = conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL "
                "RETURNING name, role, created_at, last_used_at, revoked_at",
                (isoformat(), name),
            ).fetchone()
        if row is None:
            raise NotFound(f"no live key named {name!r}")
        return ApiKey(**dict(row))

    def authenticate(self, presented: str | None) -> ApiKey:
        """The live key matching ``presented``, or Unauthorized. Records the last use."""
        if not presented:
            raise Unauthorized("missing API key: send it in the X-API-Key header")
        wanted = digest(presented)
        row = self.storage.conn.execute(
            "SELECT id, name, role, key_hash, created_at, last_used_at, revoked_at "
            "FROM api_keys WHERE key_hash = ?",
            (wanted,),
        ).fetchone()
        # Compare digests in constant time even when the lookup found nothing.
        stored = row["key_hash"] if row is not None else "0" * 64
        if not hmac.compare_digest(stored, wanted) or row is None or row["revoked_at"]:
            raise Unauthorized("invalid API key")
        self._touch(row["id"], row["last_used_at"])
        return ApiKey(
            name=row["name"],
            role=row["role"],
            created_at=row["created_at"],
            last_used_at=row["last_used_at"],
            id=row["id"],
        )

    def _touch(self, key_id: int, last_used_at: str | None) -> None:
        now = utcnow()
        if last_used_at and now - parse_iso(last_used_at) < LAST_USED_RESOLUTION:
            return
        cutoff = isoformat(now - LAST_USED_RESOLUTION)
        self.storage.execute_write(
            "UPDATE api_keys SET last_used_at = ? WHERE id = ? "
            "AND (last_used_at IS NULL OR last_used_at < ?)",
            (isoformat(now), key_id, cutoff),
        )


def require_admin(key: ApiKey) -> None:
    if not key.is_admin:
        raise Forbidden("this endpoint needs an admin key")
