"""The web console's sign-ins, in storage: which key a browser is signed in as, and for how long.

A sign-in makes a random token; the browser's (signed, HttpOnly) cookie carries it and the
database keeps only its SHA-256, the key's id and two times. Every worker and host reads the
same rows, so a sign-out, an idle or absolute timeout, or a revoked or expired key ends the
session everywhere on the next request. Also the instance's signing secret for cookies and
CSRF tokens: made once, by whichever worker comes first, then read by all.

Framework-free (no Flask here): the console's views in ``console.py`` use it.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from ..clock import isoformat, parse_iso, utcnow
from ..keys import ApiKey
from ..keystore import KeyStore
from ..storage import Storage

# A session's last-seen time is written at most this often: a poll every second stays a read.
SEEN_RESOLUTION = timedelta(seconds=30)


@dataclass(frozen=True)
class SessionPolicy:
    idle: timedelta  # signed out after this long without a request
    absolute: timedelta  # signed out this long after signing in, whatever the activity


class ConsoleSessions:
    def __init__(self, storage: Storage, keys: KeyStore, policy: SessionPolicy):
        self.storage = storage
        self.keys = keys
        self.policy = policy

    def start(self, key: ApiKey) -> str:
        """A new session for ``key``; returns the token for the cookie (never stored)."""
        token, now = secrets.token_urlsafe(32), isoformat()
        self.prune()  # sessions nobody came back to end here, not by a sweep of their own
        self.storage.execute_write(
            "INSERT INTO console_sessions (token_hash, key_id, created_at, seen_at)"
            " VALUES (?, ?, ?, ?)",
            (_digest(token), key.id, now, now),
        )
        return token

    def resolve(self, token: str | None) -> ApiKey | None:
        """The key a live session stands for, its last-seen time moved on; None when there is
        no such session, it timed out, or its key is revoked or expired (the row goes too)."""
        if not token:
            return None
        row = self.storage.conn.execute(
            "SELECT key_id, created_at, seen_at FROM console_sessions WHERE token_hash = ?",
            (_digest(token),),
        ).fetchone()
        if row is None:
            return None
        now = utcnow()
        seen = parse_iso(row["seen_at"])
        timed_out = (
            now - seen > self.policy.idle
            or now - parse_iso(row["created_at"]) > self.policy.absolute
        )
        key = None if timed_out else self.keys.usable(row["key_id"])
        if key is None:
            self.end(token)
            return None
        if now - seen >= SEEN_RESOLUTION:
            self.storage.execute_write(
                "UPDATE console_sessions SET seen_at = ? WHERE token_hash = ?",
                (isoformat(now), _digest(token)),
            )
        return key

    def end(self, token: str | None) -> None:
        if token:
            self.storage.execute_write(
                "DELETE FROM console_sessions WHERE token_hash = ?", (_digest(token),)
            )

    def prune(self) -> int:
        """Delete sessions past either timeout (housekeeping)."""
        now = utcnow()
        return self.storage.execute_write(
            "DELETE FROM console_sessions WHERE seen_at < ? OR created_at < ?",
            (isoformat(now - self.policy.idle), isoformat(now - self.policy.absolute)),
        ).rowcount

    def signing_secret(self) -> str:
        """The instance's secret for signing console cookies and CSRF tokens: the same in
        every worker and host, made by the first to ask."""
        read = "SELECT value FROM instance_secrets WHERE name = 'console'"
        row = self.storage.conn.execute(read).fetchone()
        if row is None:
            self.storage.execute_write(
                "INSERT INTO instance_secrets (name, value) VALUES ('console', ?)"
                " ON CONFLICT (name) DO NOTHING",
                (secrets.token_urlsafe(48),),
            )
            row = self.storage.conn.execute(read).fetchone()
        return row[0]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
