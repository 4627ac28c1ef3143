"""Signed-in browsers, in storage: the one session notion of the web console and of sign-in
for people.

A session is opened for a principal (:mod:`waygate.principals`): an API key typed into the
console's sign-in form, or a person who signed in at the identity provider
(:mod:`waygate.signin`). It makes a random id; the browser's HttpOnly cookie carries it and
the database keeps only its SHA-256, so every worker and host knows the same sessions and a
sign-out, an idle or absolute timeout (``WAYGATE_SESSION_IDLE_S``, ``WAYGATE_SESSION_MAX_S``)
ends one everywhere on its next request.

- A key's session stands for the key as it is now: each request reads the key, so a revoked
  or expired key ends it, and a changed scope applies at once.
- A person's session carries their permissions as of sign-in (the identity provider is not
  asked again until they sign in again).

Framework-free: ``waygate.web.console_auth`` and ``waygate.web.signin_api`` own the cookies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from .clock import isoformat, parse_iso, utcnow
from .keys import Scope
from .keystore import KeyStore
from .principals import Person, Principal
from .storage import Storage

log = logging.getLogger(__name__)
# A session's last-seen time is written at most this often: a poll every second stays a read.
TOUCH_EVERY = timedelta(seconds=30)


@dataclass(frozen=True)
class SessionPolicy:
    idle: timedelta  # ended after this long without a request
    absolute: timedelta  # ended this long after it was opened, whatever the activity


def digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    def __init__(self, storage: Storage, keys: KeyStore, policy: SessionPolicy):
        self.storage, self.keys, self.policy = storage, keys, policy

    @property
    def max_age_s(self) -> int:
        return int(self.policy.absolute.total_seconds())

    def open(self, principal: Principal) -> str:
        """A new session for ``principal`` (a key, or a person); returns the id for the cookie
        (never stored)."""
        session_id, now = secrets.token_urlsafe(32), utcnow()
        person = principal.person if principal.key is None else None
        allow = principal.scope.allow
        with self.storage.write() as conn:
            # sessions nobody came back to end here, not by a sweep of their own
            conn.execute(
                "DELETE FROM sessions WHERE expires_at <= ? OR last_seen_at < ?",
                (isoformat(now), isoformat(now - self.policy.idle)),
            )
            conn.execute(
                "INSERT INTO sessions (id_hash, principal, key_id, person, role, approver,"
                " allow, read_only, created_at, last_seen_at, expires_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    digest(session_id),
                    principal.id,
                    principal.key_id,
                    json.dumps(person.__dict__) if person is not None else None,
                    principal.role,
                    int(principal.approver),
                    json.dumps(list(allow)) if allow is not None else None,
                    int(principal.scope.read_only),
                    isoformat(now),
                    isoformat(now),
                    isoformat(now + self.policy.absolute),
                ),
            )
        return session_id

    def resolve(self, session_id: str | None) -> Principal | None:
        """Who a live session stands for, its last-seen time moved on; None when there is no
        such session, it timed out, or its key is revoked or expired (the row goes too)."""
        if not session_id or len(session_id) > 200:
            return None
        row = self.storage.conn.execute(
            "SELECT id_hash, key_id, person, role, approver, allow, read_only, last_seen_at,"
            " expires_at FROM sessions WHERE id_hash = ?",
            (digest(session_id),),
        ).fetchone()
        if row is None:
            return None
        now = utcnow()
        seen = parse_iso(row["last_seen_at"])
        timed_out = now - seen > self.policy.idle or parse_iso(row["expires_at"]) <= now
        principal = None if timed_out else self._principal(row)
        if principal is None:
            self.storage.execute_write("DELETE FROM sessions WHERE id_hash = ?", (row["id_hash"],))
            return None
        if now - seen >= TOUCH_EVERY:
            self.storage.execute_write(
                "UPDATE sessions SET last_seen_at = ? WHERE id_hash = ?",
                (isoformat(now), row["id_hash"]),
            )
        return principal

    def _principal(self, row) -> Principal | None:
        if row["key_id"] is not None:
            key = self.keys.usable(row["key_id"])
            return Principal.of_key(key) if key is not None else None
        allow = json.loads(row["allow"]) if row["allow"] is not None else None
        return Principal(
            role=row["role"],
            scope=Scope(tuple(allow) if allow is not None else None, bool(row["read_only"])),
            person=Person(**json.loads(row["person"])),
            approver=bool(row["approver"]),
        )

    def end(self, session_id: str | None) -> None:
        if session_id:
            self.storage.execute_write(
                "DELETE FROM sessions WHERE id_hash = ?", (digest(session_id),)
            )

    def prune(self) -> int:
        """Delete sessions past either timeout."""
        now = utcnow()
        return self.storage.execute_write(
            "DELETE FROM sessions WHERE expires_at <= ? OR last_seen_at < ?",
            (isoformat(now), isoformat(now - self.policy.idle)),
        ).rowcount
