"""API keys: creation, scopes, expiry, rotation, revocation, verification, and their trail.

A key is 32 random alphanumeric characters (about 190 bits), shown once at creation or
rotation. Only its SHA-256 digest is stored: with that much entropy a slow password hash adds
nothing. Lookups go by digest and the stored digest is compared in constant time. There is no
per-process cache, so a revoked, changed or expired key is seen by every worker on its next
request.

Least privilege: a key may carry an allow-list of command patterns (shell-style globs over
the command name, or ``Plugin.command`` / ``Plugin.*``) and a read-only flag admitting only
commands annotated ``readOnlyHint``; :class:`Scope` is the one check, used wherever a command
is listed or resolved. Admin keys are unscoped for commands. Every change is a key event.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from limits import parse as parse_limit

from .approvals.records import deny_requests_of_key
from .clock import isoformat, parse_iso, utcnow
from .errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized
from .storage import IntegrityError, Storage, where_clause

KEY_LENGTH = 32
ROLES = ("admin", "user")
EVENTS = ("created", "changed", "rotated", "revoked", "expired_use")
MAX_PATTERNS = 64
MAX_GRACE = timedelta(days=30)
MAX_LIFETIME = timedelta(days=3650)
MAX_CHAIN = 64  # the longest creator chain followed (key -> its creator -> ...)
_ALPHABET = string.ascii_letters + string.digits
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_PATTERN_RE = re.compile(r"[A-Za-z0-9_.*?\[\]!-]{1,128}")
# last_used_at (and an expired key's attempts) are written at most this often per key, so
# that authentication stays a read.
LAST_USED_RESOLUTION = timedelta(seconds=60)
_COLUMNS = (
    "id, name, role, created_at, last_used_at, revoked_at, allow, read_only, expires_at,"
    " rate_limit, updated_at, created_by_key_id, created_by"
)
_NO_LIMIT = 2**62  # LIMIT for "all": both SQLite and PostgreSQL take it
_INSERT_SQL = (
    "INSERT INTO api_keys (name, role, key_hash, created_at, allow, read_only, expires_at,"
    " rate_limit, created_by_key_id, created_by) VALUES (?,?,?,?,?,?,?,?,?,?)"
    " RETURNING id, name, role, created_at, last_used_at, revoked_at, allow, read_only,"
    " expires_at, rate_limit, updated_at, created_by_key_id, created_by"
)
_ROTATE_SQL = (
    "UPDATE api_keys SET previous_hash ="
    " CASE WHEN CAST(? AS TEXT) IS NULL THEN NULL ELSE key_hash END,"
    " previous_valid_until = ?, key_hash = ?, updated_at = ?"
    " WHERE name = ? AND revoked_at IS NULL"
    " RETURNING id, name, role, created_at, last_used_at, revoked_at, allow, read_only,"
    " expires_at, rate_limit, updated_at, created_by_key_id, created_by"
)
_REVOKE_SQL = (
    "UPDATE api_keys SET revoked_at = ?, previous_hash = NULL"
    " WHERE name = ? AND revoked_at IS NULL"
    " RETURNING id, name, role, created_at, last_used_at, revoked_at, allow, read_only,"
    " expires_at, rate_limit, updated_at, created_by_key_id, created_by"
)


@dataclass(frozen=True)
class Scope:
    """Which commands a key may run: ``allow`` patterns (None: every command), read-only."""

    allow: tuple[str, ...] | None = None
    read_only: bool = False

    def permits(self, command: str, plugin: str, annotations: Mapping[str, Any]) -> bool:
        if self.read_only and not annotations.get("readOnlyHint"):
            return False
        if self.allow is None:
            return True
        qualified = f"{plugin}.{command}"
        return any(
            fnmatch.fnmatchcase(command, p) or fnmatch.fnmatchcase(qualified, p) for p in self.allow
        )


UNSCOPED = Scope()


@dataclass(frozen=True)
class Actor:
    """Who changes keys: an admin key (name and id), or the host's CLI (no id)."""

    name: str
    id: int | None = None


CLI_ACTOR = Actor("cli")


@dataclass(frozen=True)
class ApiKey:
    name: str
    role: str
    created_at: str
    last_used_at: str | None = None
    revoked_at: str | None = None
    id: int | None = None  # never reused: what executions and events belong to
    allow: tuple[str, ...] | None = None
    read_only: bool = False
    expires_at: str | None = None
    rate_limit: str | None = None  # the key's own execute limit, e.g. "1000/minute"
    updated_at: str | None = None
    created_by_key_id: int | None = None  # the key that created this one; None: the CLI
    created_by: str | None = None  # its name ("cli" for the host's CLI)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> Scope:
        """The commands this key may run (admin keys: every one)."""
        if self.is_admin:
            return UNSCOPED
        return Scope(self.allow, self.read_only)

    @property
    def actor(self) -> Actor:
        return Actor(self.name, self.id)

    def state(self, now: datetime | None = None) -> str:
        """``revoked``, ``expired`` or ``live``: whether the key opens anything now."""
        if self.revoked_at:
            return "revoked"
        if self.expires_at and parse_iso(self.expires_at) <= (now or utcnow()):
            return "expired"
        return "live"

    def as_dict(self) -> dict[str, Any]:
        """The record as shown to admins: never a secret or a digest."""
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "allow": list(self.allow) if self.allow is not None else None,
            "read_only": self.read_only,
            "expires_at": self.expires_at,
            "rate_limit": self.rate_limit,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_used_at": self.last_used_at,
            "revoked_at": self.revoked_at,
            "created_by": self.created_by,
            "created_by_id": self.created_by_key_id,
        }


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def generate_key() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(KEY_LENGTH))


# -- validation: the same rules for REST and the CLI ------------------------------------------


def _invalid(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"invalid {field}: {message}", {"fields": {field: [message]}})


def check_patterns(patterns: Any) -> tuple[str, ...] | None:
    if patterns is None:
        return None
    if not isinstance(patterns, (list, tuple)) or len(patterns) > MAX_PATTERNS:
        raise _invalid("allow", f"a list of at most {MAX_PATTERNS} patterns")
    for p in patterns:
        if not isinstance(p, str) or not _PATTERN_RE.fullmatch(p):
            raise _invalid(
                "allow",
                f"{str(p)[:60]!r} is not a pattern (letters, digits, '_', '.', '-', and the"
                " globs '*', '?', '[...]'; up to 128 characters)",
            )
    return tuple(dict.fromkeys(patterns))


def check_rate_limit(value: Any) -> str | None:
    if value is None:
        return None
    try:
        item = parse_limit(value) if isinstance(value, str) and len(value) <= 64 else None
    except ValueError:
        item = None
    if item is None or item.amount < 1:
        raise _invalid("rate_limit", f"{str(value)[:60]!r} is not a rate like 1000/minute")
    return value.strip()


def expiry(expires_in: Any = None, expires_at: Any = None) -> str | None:
    """The absolute expiry from ``expires_in`` seconds or an ISO ``expires_at`` (one of them)."""
    if expires_in is not None and expires_at is not None:
        raise _invalid("expires_at", "give expires_in or expires_at, not both")
    now = utcnow()
    if expires_in is not None:
        if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in < 1:
            raise _invalid("expires_in", "a whole number of seconds, at least 1")
        if expires_in > MAX_LIFETIME.total_seconds():
            raise _invalid("expires_in", f"at most {int(MAX_LIFETIME.total_seconds())} s")
        return isoformat(now + timedelta(seconds=expires_in))
    if expires_at is not None:
        try:
            when = parse_iso(expires_at) if isinstance(expires_at, str) else None
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            raise _invalid("expires_at", "an ISO 8601 time with a zone, e.g. 2027-01-31T00:00:00Z")
        if when <= now:
            raise _invalid("expires_at", "must be in the future")
        return isoformat(when)
    return None


def parse_duration(text: str) -> int:
    """``30d``, ``12h``, ``15m``, ``90s`` or plain seconds, for the CLI's ``--expires``."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text or "")
    if not match:
        raise _invalid("expires_in", f"{text!r} is not a duration like 30d, 12h, 15m or 90s")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return int(match.group(1)) * unit


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise _invalid("name", "1-64 characters of letters, digits, '_', '.', '@' or '-'")
    return name


# -- the store -------------------------------------------------------------------------------


class KeyStore:
    def __init__(
        self,
        storage: Storage,
        on_requests_ended: Callable[[list[str]], None] | None = None,
    ):
        self.storage = storage
        # told the command ids a revocation denied (the approvals' gauge and webhook)
        self.on_requests_ended = on_requests_ended

    def create(
        self,
        name: str,
        role: str = "user",
        *,
        allow: Any = None,
        read_only: bool = False,
        expires_at: str | None = None,
        rate_limit: Any = None,
        actor: Actor = CLI_ACTOR,
    ) -> tuple[ApiKey, str]:
        """Create a key; returns its record and the key itself, which is never stored."""
        _check_name(name)
        if role not in ROLES:
            raise _invalid("role", "admin or user")
        allow, rate_limit = check_patterns(allow), check_rate_limit(rate_limit)
        key, now = generate_key(), isoformat()
        try:
            with self.storage.write() as conn:
                row = conn.execute(
                    _INSERT_SQL,
                    (
                        name,
                        role,
                        digest(key),
                        now,
                        _dump_allow(allow),
                        int(bool(read_only)),
                        expires_at,
                        rate_limit,
                        actor.id,
                        actor.name,
                    ),
                ).fetchone()
                record = _record(row)
                self._event(conn, "created", record, actor, _scope_details(record))
        except IntegrityError:
            raise Conflict(
                f"a live key named {name!r} already exists", {"fields": {"name": ["taken"]}}
            ) from None
        return record, key

    def get(self, name: str) -> ApiKey:
        """The live key named ``name``."""
        row = self.storage.conn.execute(
            f"SELECT {_COLUMNS} FROM api_keys WHERE name = ? AND revoked_at IS NULL",  # noqa: S608 # nosec B608
            (name,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no live key named {name[:100]!r}", {"name": name[:100]})
        return _record(row)

    def list(
        self, include_revoked: bool = True, offset: int = 0, limit: int | None = None
    ) -> list[ApiKey]:
        sql = f"SELECT {_COLUMNS} FROM api_keys"  # noqa: S608 # nosec B608
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        sql += " ORDER BY id LIMIT ? OFFSET ?"
        rows = self.storage.conn.execute(sql, (_NO_LIMIT if limit is None else limit, offset))
        return [_record(row) for row in rows.fetchall()]

    def count(self, include_revoked: bool = True) -> int:
        sql = (
            "SELECT count(*) FROM api_keys"
            if include_revoked
            else "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL"
        )
        return self.storage.conn.execute(sql).fetchone()[0]

    def live(self, name: str) -> ApiKey:
        """The live key named ``name`` (NotFound otherwise): for the CLI's ``--as``."""
        row = self.storage.conn.execute(
            f"SELECT {_COLUMNS} FROM api_keys WHERE name = ? AND revoked_at IS NULL",  # noqa: S608 # nosec B608
            (name,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no live key named {name!r}")
        return _record(row)

    def count_live(self) -> int:
        return self.count(include_revoked=False)

    def update(
        self,
        name: str,
        changes: Mapping[str, Any],
        actor: Actor = CLI_ACTOR,
        *,
        force: bool = False,
    ) -> ApiKey:
        """Change a live key's scope, expiry or rate limit (None clears one). Setting an expiry
        on the last live admin key is a Conflict unless ``force`` (the CLI's ``--force``)."""
        columns: dict[str, Any] = {}
        if "allow" in changes:
            columns["allow"] = _dump_allow(check_patterns(changes["allow"]))
        if "read_only" in changes:
            if not isinstance(changes["read_only"], bool):
                raise _invalid("read_only", "true or false")
            columns["read_only"] = int(changes["read_only"])
        if "expires_in" in changes or "expires_at" in changes:
            columns["expires_at"] = expiry(changes.get("expires_in"), changes.get("expires_at"))
        if "rate_limit" in changes:
            columns["rate_limit"] = check_rate_limit(changes["rate_limit"])
        if not columns:
            raise InvalidRequest(
                "nothing to change: give allow, read_only, expires_in, expires_at or rate_limit"
            )
        assignments = ", ".join(f"{column} = ?" for column in columns)  # fixed names only
        with self.storage.write() as conn:
            if columns.get("expires_at") is not None and not force:
                _keep_an_admin(conn, name, "set an expiry on", "update NAME --expires ...")
            row = conn.execute(
                f"UPDATE api_keys SET {assignments}, updated_at = ? "  # noqa: S608 # nosec B608
                f"WHERE name = ? AND revoked_at IS NULL RETURNING {_COLUMNS}",
                (*columns.values(), isoformat(), name),
            ).fetchone()
            if row is None:
                raise NotFound(f"no live key named {name[:100]!r}", {"name": name[:100]})
            record = _record(row)
            self._event(conn, "changed", record, actor, {"changed": sorted(columns)})
        return record

    def rotate(
        self, name: str, grace_seconds: Any = 0, actor: Actor = CLI_ACTOR
    ) -> tuple[ApiKey, str]:
        """A new secret for the same key; the old one stays valid for ``grace_seconds``."""
        if (
            isinstance(grace_seconds, bool)
            or not isinstance(grace_seconds, int)
            or not 0 <= grace_seconds <= MAX_GRACE.total_seconds()
        ):
            raise _invalid(
                "grace_seconds", f"whole seconds from 0 to {int(MAX_GRACE.total_seconds())}"
            )
        key, now = generate_key(), utcnow()
        until = isoformat(now + timedelta(seconds=grace_seconds)) if grace_seconds else None
        with self.storage.write() as conn:
            row = conn.execute(
                _ROTATE_SQL,
                (until, until, digest(key), isoformat(now), name),
            ).fetchone()
            if row is None:
                raise NotFound(f"no live key named {name[:100]!r}", {"name": name[:100]})
            record = _record(row)
            self._event(conn, "rotated", record, actor, {"old_secret_valid_until": until})
        return record, key

    def revoke(self, name: str, actor: Actor = CLI_ACTOR, *, force: bool = False) -> ApiKey:
        """Revoke a live key and, in the same transaction, deny every request of it still
        awaiting approval ("requester key revoked"). Revoking the last live admin key is a
        Conflict unless ``force`` (the CLI's ``--force``)."""
        with self.storage.write() as conn:
            if not force:
                _keep_an_admin(conn, name, "revoke", "revoke NAME")
            now = isoformat()
            row = conn.execute(_REVOKE_SQL, (now, name)).fetchone()
            if row is None:
                raise NotFound(f"no live key named {name[:100]!r}", {"name": name[:100]})
            record = _record(row)
            self._event(conn, "revoked", record, actor, None)
            ended = deny_requests_of_key(conn, record.id, actor.id, actor.name, now)
        if ended and self.on_requests_ended is not None:
            self.on_requests_ended(ended)
        return record

    def created_by_chain(self, key_id: int | None) -> list[int]:
        """The ids of the keys that created ``key_id``: its creator, that key's creator, and
        so on up to a key the CLI made (bounded: a chain is never longer than MAX_CHAIN)."""
        if key_id is None:
            return []
        rows = self.storage.conn.execute(
            "WITH RECURSIVE chain(id, depth) AS ("
            " SELECT created_by_key_id, 1 FROM api_keys WHERE id = ?"
            " UNION ALL SELECT k.created_by_key_id, c.depth + 1 FROM api_keys k"
            " JOIN chain c ON k.id = c.id WHERE c.depth < ?)"
            " SELECT id FROM chain WHERE id IS NOT NULL ORDER BY depth",
            (key_id, MAX_CHAIN),
        ).fetchall()
        return [row[0] for row in rows]

    def authenticate(self, presented: str | None) -> ApiKey:
        """The live key matching ``presented``, or Unauthorized. Records the last use."""
        if not presented:
            raise Unauthorized("missing API key: send it in the X-API-Key header")
        wanted = digest(presented)
        row = self.storage.conn.execute(
            f"SELECT {_COLUMNS}, key_hash, previous_hash, previous_valid_until FROM api_keys "  # noqa: S608 # nosec B608
            "WHERE key_hash = ? OR previous_hash = ?",
            (wanted, wanted),
        ).fetchone()
        # Compare digests in constant time even when the lookup found nothing.
        previous = row is not None and row["key_hash"] != wanted
        stored = (row["previous_hash"] if previous else row["key_hash"]) if row else "0" * 64
        if not hmac.compare_digest(stored, wanted) or row is None or row["revoked_at"]:
            raise Unauthorized("invalid API key")
        now = utcnow()
        if previous and parse_iso(row["previous_valid_until"]) <= now:
            raise Unauthorized("invalid API key")  # a rotated secret past its grace period
        record = _record(row)
        if record.expires_at and parse_iso(record.expires_at) <= now:
            self._expired_use(record, now)
            raise Unauthorized(
                f"API key expired at {record.expires_at}; ask an admin for a new one",
                {"expired_at": record.expires_at},
            )
        self._touch(record.id, row["last_used_at"])
        return record

    # -- the trail ---------------------------------------------------------------------------

    def events(
        self,
        *,
        key_name: str | None = None,
        event: str | None = None,
        since: str | None = None,
        offset: int = 0,
        limit: int = 10,
    ) -> tuple[list[dict[str, Any]], int]:
        clause, args = where_clause({"key_name": key_name, "event": event}, "at", since)
        conn = self.storage.conn
        total = conn.execute(f"SELECT count(*) FROM key_events{clause}", args).fetchone()[0]  # noqa: S608 # nosec B608
        rows = conn.execute(
            "SELECT id, at, event, key_id, key_name, actor_id, actor_name, details"  # noqa: S608 # nosec B608
            f" FROM key_events{clause} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*args, limit, offset],
        ).fetchall()
        listed = []
        for row in rows:
            item = dict(row)
            item["details"] = json.loads(item["details"]) if item["details"] else None
            listed.append(item)
        return listed, total

    @staticmethod
    def _event(conn: Any, event: str, key: ApiKey, actor: Actor, details: Any) -> None:
        conn.execute(
            "INSERT INTO key_events (at, event, key_id, key_name, actor_id, actor_name, details)"
            " VALUES (?,?,?,?,?,?,?)",
            (
                isoformat(),
                event,
                key.id,
                key.name,
                actor.id,
                actor.name,
                json.dumps(details, separators=(",", ":")) if details else None,
            ),
        )

    def _expired_use(self, key: ApiKey, now: datetime) -> None:
        """Record an expired key's attempt, at most once a minute per key."""
        cutoff = isoformat(now - LAST_USED_RESOLUTION)
        with self.storage.write() as conn:
            recent = conn.execute(
                "SELECT 1 FROM key_events WHERE key_name = ? AND key_id = ? "
                "AND event = 'expired_use' AND at >= ? LIMIT 1",
                (key.name, key.id, cutoff),
            ).fetchone()
            if recent is None:
                self._event(conn, "expired_use", key, key.actor, {"expired_at": key.expires_at})

    def _touch(self, key_id: int | None, last_used_at: str | None) -> None:
        now = utcnow()
        if last_used_at and now - parse_iso(last_used_at) < LAST_USED_RESOLUTION:
            return
        cutoff = isoformat(now - LAST_USED_RESOLUTION)
        self.storage.execute_write(
            "UPDATE api_keys SET last_used_at = ? WHERE id = ? "
            "AND (last_used_at IS NULL OR last_used_at < ?)",
            (isoformat(now), key_id, cutoff),
        )


def _keep_an_admin(conn: Any, name: str, doing: str, command: str) -> None:
    """Conflict when the live key ``name`` is the last live admin key: with none left, the
    REST admin surface is closed until someone reaches the host's CLI. Run inside the write
    transaction that makes the change, so two admins revoking each other cannot both win."""
    now = isoformat()
    rows = conn.execute(
        "SELECT name FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL"
        " AND (expires_at IS NULL OR expires_at > ?)",
        (now,),
    ).fetchall()
    live_admins = [row[0] for row in rows]
    if live_admins != [name]:
        return
    deliberate = f"waygate keys {command.replace('NAME', name)} --force"
    raise Conflict(
        f"{name!r} is the last live admin key: to {doing} it would leave no admin key, and"
        f" only the host's CLI could make one. Create another admin key first, or, to do it"
        f" deliberately, run `{deliberate}` on the host",
        {"name": name, "last_admin": True},
    )


def require_admin(key: ApiKey) -> None:
    if not key.is_admin:
        raise Forbidden("this endpoint needs an admin key")


def _record(row: Any) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        role=row["role"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
        allow=tuple(json.loads(row["allow"])) if row["allow"] is not None else None,
        read_only=bool(row["read_only"]),
        expires_at=row["expires_at"],
        rate_limit=row["rate_limit"],
        updated_at=row["updated_at"],
        created_by_key_id=row["created_by_key_id"],
        created_by=row["created_by"],
    )


def _dump_allow(allow: tuple[str, ...] | None) -> str | None:
    return json.dumps(list(allow)) if allow is not None else None


def _scope_details(key: ApiKey) -> dict[str, Any]:
    return {
        "role": key.role,
        "allow": list(key.allow) if key.allow is not None else None,
        "read_only": key.read_only,
        "expires_at": key.expires_at,
        "rate_limit": key.rate_limit,
    }
