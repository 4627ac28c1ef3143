"""API keys, the store: creating, finding, changing, rotating and revoking keys, verifying a
presented key, and the trail of key events, on either storage backend.

Only a key's SHA-256 digest is stored: with that much entropy a slow password hash adds
nothing. Lookups go by digest and the stored digest is compared in constant time. Every change
is a key event, written in the transaction that makes it. What a valid key and key request
are is ``waygate.keys``'.

``authenticate`` reads the database on every call. ``authenticate_cached`` (the HTTP API's,
on PostgreSQL, where that read is a network round trip) may answer from this process's
``KeyCache`` instead, and then says with which *key generation* the answer was read: a counter
in the database (m025) that triggers move in the transaction of every change to a key but its
last use. The caller trusts such an answer only once it has read the current generation in a
statement it makes anyway (the rate-limit hit, ``web/auth.py``) and found it the same: then no
key changed between the cached read and that statement, and the answer is what a read at
that moment would have given. Otherwise it asks again with ``fresh=True``. So a revoked,
changed or expired key is seen by every worker of every host on its next request, cache or
not.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import forksafe
from .approvals.records import deny_requests_of_key
from .clock import isoformat, parse_iso, utcnow
from .errors import Conflict, InvalidRequest, NotFound, Unauthorized
from .keys import (
    CLI_ACTOR,
    MAX_CHAIN,
    Actor,
    ApiKey,
    check_grace,
    check_name,
    check_owner,
    check_patterns,
    check_rate_limit,
    check_read_only,
    check_role,
    digest,
    expiry,
    generate_key,
)
from .storage import IntegrityError, Storage, where_clause

# last_used_at (and an expired key's attempts) are written at most this often per key, so
# that authentication stays a read.
LAST_USED_RESOLUTION = timedelta(seconds=60)
_COLUMNS = (
    "id, name, role, created_at, last_used_at, revoked_at, allow, read_only, expires_at,"
    " rate_limit, updated_at, created_by_key_id, created_by,"
    " owner, owner_name"
)
_NO_LIMIT = 2**62  # LIMIT for "all": both SQLite and PostgreSQL take it
# Every statement that gives a key back returns the same columns, read by _record(). Only
# these fixed column lists and clauses are spliced in; every value is a bound parameter.
_LIVE = "WHERE name = ? AND revoked_at IS NULL"
_GET_SQL = f"SELECT {_COLUMNS} FROM api_keys {_LIVE}"  # noqa: S608 # nosec B608
_INSERT_SQL = (
    "INSERT INTO api_keys (name, role, key_hash, created_at, allow, read_only, expires_at,"  # noqa: S608 # nosec B608
    " rate_limit, created_by_key_id, created_by, owner, owner_name)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
    f" RETURNING {_COLUMNS}"
)
_ROTATE_SQL = (
    "UPDATE api_keys SET previous_hash ="  # noqa: S608 # nosec B608
    " CASE WHEN CAST(? AS TEXT) IS NULL THEN NULL ELSE key_hash END,"
    f" previous_valid_until = ?, key_hash = ?, updated_at = ? {_LIVE} RETURNING {_COLUMNS}"
)
_AUTH_COLUMNS = f"{_COLUMNS}, key_hash, previous_hash, previous_valid_until"
_AUTH_SQL = f"SELECT {_AUTH_COLUMNS} FROM api_keys WHERE key_hash = ? OR previous_hash = ?"  # noqa: S608 # nosec B608
# The same, with the key generation read in the same statement (one snapshot): what a cached
# answer is tagged with.
_AUTH_GENERATION_SQL = (
    f"SELECT {_AUTH_COLUMNS}, (SELECT generation FROM key_generation WHERE id = 1) AS generation"  # noqa: S608 # nosec B608
    " FROM api_keys WHERE key_hash = ? OR previous_hash = ?"
)
# A cached key is looked up again after this long, and the cache holds at most this many.
KEY_CACHE_TTL_S = 60.0
KEY_CACHE_SIZE = 1024
_REVOKE_SQL = (
    "UPDATE api_keys SET revoked_at = ?, previous_hash = NULL"  # noqa: S608 # nosec B608
    f" {_LIVE} RETURNING {_COLUMNS}"
)


class KeyStore:
    def __init__(
        self,
        storage: Storage,
        on_requests_ended: Callable[[list[str]], None] | None = None,
    ):
        self.storage = storage
        # told the command ids a revocation denied (the approvals' gauge and webhook)
        self.on_requests_ended = on_requests_ended
        self.cache = KeyCache()  # only authenticate_cached uses it

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
        owner: Any = None,
        owner_name: Any = None,
    ) -> tuple[ApiKey, str]:
        """Create a key; returns its record and the key itself, which is never stored."""
        check_name(name)
        check_role(role)
        allow, rate_limit = check_patterns(allow), check_rate_limit(rate_limit)
        owner, owner_name = check_owner(owner, owner_name)
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
                        owner,
                        owner_name,
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
        """The live key named ``name`` (NotFound otherwise)."""
        return _found(self.storage.conn.execute(_GET_SQL, (name,)).fetchone(), name)

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

    def usable(self, key_id: int) -> ApiKey | None:
        """The key with this id while it may be used (live, not expired), else None: for a
        session that stands for a key (the console's), checked on every request."""
        row = self.storage.conn.execute(
            f"SELECT {_COLUMNS} FROM api_keys WHERE id = ? AND revoked_at IS NULL",  # noqa: S608 # nosec B608
            (key_id,),
        ).fetchone()
        if row is None:
            return None
        record = _record(row)
        if record.expires_at and parse_iso(record.expires_at) <= utcnow():
            return None
        return record

    def owner_name(self, key_id: int) -> str | None:
        """The display name of the person who owns the key with this id (revoked or not)."""
        row = self.storage.conn.execute(
            "SELECT owner_name FROM api_keys WHERE id = ?", (key_id,)
        ).fetchone()
        return row[0] if row is not None else None

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
            columns["read_only"] = int(check_read_only(changes["read_only"]))
        if "expires_in" in changes or "expires_at" in changes:
            columns["expires_at"] = expiry(changes.get("expires_in"), changes.get("expires_at"))
        if "rate_limit" in changes:
            columns["rate_limit"] = check_rate_limit(changes["rate_limit"])
        if "owner" in changes:
            columns["owner"], columns["owner_name"] = check_owner(
                changes["owner"], changes.get("owner_name")
            )
        if not columns:
            raise InvalidRequest(
                "nothing to change: give allow, read_only, expires_in, expires_at, rate_limit"
                " or owner"
            )
        assignments = ", ".join(f"{column} = ?" for column in columns)  # fixed names only
        with self.storage.write() as conn:
            if columns.get("expires_at") is not None and not force:
                _keep_an_admin(conn, name, "set an expiry on", "update NAME --expires ...")
            row = conn.execute(
                f"UPDATE api_keys SET {assignments}, updated_at = ? "  # noqa: S608 # nosec B608
                f"{_LIVE} RETURNING {_COLUMNS}",
                (*columns.values(), isoformat(), name),
            ).fetchone()
            record = _found(row, name)
            self._event(conn, "changed", record, actor, {"changed": sorted(columns)})
        return record

    def rotate(
        self, name: str, grace_seconds: Any = 0, actor: Actor = CLI_ACTOR
    ) -> tuple[ApiKey, str]:
        """A new secret for the same key; the old one stays valid for ``grace_seconds``."""
        grace_seconds = check_grace(grace_seconds)
        key, now = generate_key(), utcnow()
        until = isoformat(now + timedelta(seconds=grace_seconds)) if grace_seconds else None
        with self.storage.write() as conn:
            row = conn.execute(
                _ROTATE_SQL,
                (until, until, digest(key), isoformat(now), name),
            ).fetchone()
            record = _found(row, name)
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
            record = _found(conn.execute(_REVOKE_SQL, (now, name)).fetchone(), name)
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
        """The live key matching ``presented``, or Unauthorized. Records the last use. Reads
        the database every time."""
        return self._authenticate(presented, None)

    def authenticate_cached(
        self, presented: str | None, *, fresh: bool = False
    ) -> tuple[ApiKey, int | None]:
        """``authenticate``, possibly answered from this process's cache: ``(key, generation)``
        where ``generation`` is the key generation the cached answer was read with, to be
        confirmed by the caller (the module docstring says how), or None when the database
        was read now (the answer is exact; it is cached for the next calls). ``fresh``: read
        the database whatever the cache holds (after a generation did not match)."""
        if not presented:
            raise Unauthorized("missing API key: send it in the X-API-Key header")
        wanted = digest(presented)
        if fresh:  # whatever the database says now, this entry has not been confirmed
            self.cache.forget(wanted)
        else:
            hit = self.cache.get(wanted)
            if hit is not None:
                now = utcnow()
                if (hit.expires is None or hit.expires > now) and (
                    hit.previous_until is None or hit.previous_until > now
                ):
                    if self._touch(hit.record.id, hit.last_used_at):
                        hit.last_used_at = isoformat(now)
                    return hit.record, hit.generation
                self.cache.forget(wanted)  # expired, or a rotated secret past its grace
        return self._authenticate(presented, wanted), None

    def _authenticate(self, presented: str | None, remember: str | None) -> ApiKey:
        """The lookup; with ``remember`` (the digest), the generation is read with the row
        and a key found valid is cached under it."""
        if not presented:
            raise Unauthorized("missing API key: send it in the X-API-Key header")
        wanted = digest(presented)
        sql = _AUTH_GENERATION_SQL if remember else _AUTH_SQL
        row = self.storage.conn.execute(sql, (wanted, wanted)).fetchone()
        if row is not None and remember:
            self.cache.saw(row["generation"])
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
        touched = self._touch(record.id, row["last_used_at"])
        if remember and row["generation"] is not None:
            self.cache.put(
                wanted,
                _Cached(
                    record=record,
                    generation=row["generation"],
                    expires=parse_iso(record.expires_at) if record.expires_at else None,
                    previous_until=parse_iso(row["previous_valid_until"]) if previous else None,
                    last_used_at=isoformat(now) if touched else row["last_used_at"],
                    loaded=time.monotonic(),
                ),
            )
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
            "SELECT id, at, event, key_id, key_name, actor_id, actor_name, details,"  # noqa: S608 # nosec B608
            " actor_principal"
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
            "INSERT INTO key_events (at, event, key_id, key_name, actor_id, actor_name, details,"
            " actor_principal) VALUES (?,?,?,?,?,?,?,?)",
            (
                isoformat(),
                event,
                key.id,
                key.name,
                actor.id,
                actor.name,
                json.dumps(details, separators=(",", ":")) if details else None,
                actor.principal,
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

    def _touch(self, key_id: int | None, last_used_at: str | None) -> bool:
        """Record the key's use unless ``last_used_at`` is recent; whether it was written (or
        found written by another process moments ago)."""
        now = utcnow()
        if last_used_at and now - parse_iso(last_used_at) < LAST_USED_RESOLUTION:
            return False
        cutoff = isoformat(now - LAST_USED_RESOLUTION)
        self.storage.execute_write(  # never a use of a revoked key (a cached one, refused)
            "UPDATE api_keys SET last_used_at = ? WHERE id = ? AND revoked_at IS NULL "
            "AND (last_used_at IS NULL OR last_used_at < ?)",
            (isoformat(now), key_id, cutoff),
        )
        return True


@dataclass
class _Cached:
    """A key found valid, as ``authenticate_cached`` keeps it under the presented digest."""

    record: ApiKey
    generation: int
    expires: datetime | None  # the key's expiry, checked against the clock on every hit
    previous_until: datetime | None  # a rotated-out secret: the end of its grace period
    last_used_at: str | None  # as last written (or found written), for _touch's resolution
    loaded: float  # time.monotonic() when read from the database


class KeyCache:
    """This process's keys, by digest, all read at one key generation: a read at a newer one
    (``saw``) empties it, an answer read at an older one is not kept. Bounded by size (least
    recently used first out) and age (KEY_CACHE_TTL_S); emptied in a forked child. Only keys
    found valid enter it: a wrong or refused key never does."""

    def __init__(self, size: int = KEY_CACHE_SIZE, ttl_s: float = KEY_CACHE_TTL_S):
        self.size, self.ttl_s = size, ttl_s
        self._reset()
        forksafe.reset_after_fork(self, KeyCache._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Cached] = OrderedDict()
        self.generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, wanted: str) -> _Cached | None:
        with self._lock:
            hit = self._entries.get(wanted)
            if hit is None:
                return None
            if hit.generation != self.generation or time.monotonic() - hit.loaded > self.ttl_s:
                del self._entries[wanted]
                return None
            self._entries.move_to_end(wanted)
            return hit

    def put(self, wanted: str, entry: _Cached) -> None:
        with self._lock:
            if entry.generation < self.generation:
                return  # read before a change this process already knows of
            if entry.generation > self.generation:
                self._entries.clear()
                self.generation = entry.generation
            self._entries[wanted] = entry
            self._entries.move_to_end(wanted)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def saw(self, generation: int | None) -> None:
        """The database's key generation was ``generation`` a moment ago: any other one than
        the cache's empties it (a newer one: keys changed; an older one: the database was
        restored or failed over, and its counter may climb back to a number this cache
        holds entries of)."""
        if generation is None:
            return
        with self._lock:
            if generation != self.generation:
                self._entries.clear()
                self.generation = generation

    def forget(self, wanted: str) -> None:
        with self._lock:
            self._entries.pop(wanted, None)


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


def _found(row: Any, name: str) -> ApiKey:
    """The key a statement on the live key ``name`` returned, or NotFound when there is none."""
    if row is None:
        raise NotFound(f"no live key named {name[:100]!r}", {"name": name[:100]})
    return _record(row)


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
        owner=row["owner"],
        owner_name=row["owner_name"],
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
        "owner": key.owner,
    }
