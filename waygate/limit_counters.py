"""A ``limits`` storage on SQLite, registered as ``sqlite://``: exact across gunicorn workers.
(The default of one host is now the shared-memory table of waygate/limit_table.py, which
keeps this storage as its overflow; ``sqlite://`` stays for whoever configures it.)

The ``limits`` library ships no file or SQLite storage, and ``memory://`` counts per process
(N workers would allow N times the limit). Each hit here is one atomic UPSERT ... RETURNING
statement on a shared SQLite file in WAL mode, so every worker sees one counter per window.
Only the fixed-window strategy is supported (it needs incr/get/get_expiry).

    sqlite:////abs/path/ratelimits.db     (four slashes: an absolute path, as in SQLAlchemy)

The same counters in PostgreSQL, registered as ``postgresql://``, are exact across hosts: the
default when Waygate's own state is there (WAYGATE_DATABASE_URL). Redis is the faster choice
for many hosts. Either way the table is made by its migration
(waygate/storage/migrations/r001_rate_limits.py) when the storage opens.
"""

from __future__ import annotations

import functools
import random
import sqlite3
import threading
import time
from contextlib import suppress
from pathlib import Path

from limits.errors import StorageError
from limits.storage import Storage as LimitsStorage

from .storage import DatabaseError, PostgresStorage, SqliteStorage
from .storage.migrations import RATE_LIMITS

# How long this thread's own last hit answers reads of the same counter (one request's span).
JUST_HIT_S = 0.05
# One hit: the counter after it, its window's end, and the live count of the counter :read.
_INCR_SQL = (
    "INSERT INTO rate_limits (key, value, expires_at) VALUES (:key, :amount, :expires) "
    "ON CONFLICT(key) DO UPDATE SET "
    " value = CASE WHEN rate_limits.expires_at <= :now THEN :amount"
    " ELSE rate_limits.value + :amount END,"
    " expires_at = CASE WHEN rate_limits.expires_at <= :now THEN :expires"
    " ELSE rate_limits.expires_at END "
    "RETURNING value, expires_at,"
    " (SELECT r.value FROM rate_limits r WHERE r.key = :read AND r.expires_at > :now)"
)
# The same hit, also reading the key generation of Waygate's state in the same statement (the
# counters in Waygate's own PostgreSQL database): what confirms a cached key, waygate/keystore.py.
_INCR_GENERATION_SQL = (
    _INCR_SQL + ", (SELECT g.generation FROM key_generation g WHERE g.id = 1)"  # noqa: S608 # nosec B608
)


def _storage_errors(method):
    """The storage's own failures as ``StorageError`` when the storage wraps them, as
    ``limits`` does for the methods of its interface."""

    @functools.wraps(method)
    def wrapped(self, *args):
        try:
            return method(self, *args)
        except self.base_exceptions as exc:
            if self.wrap_exceptions:
                raise StorageError(exc) from exc
            raise

    return wrapped


class SQLiteLimitStorage(LimitsStorage):
    STORAGE_SCHEME = ["sqlite"]

    def __init__(
        self, uri: str | None = None, wrap_exceptions: bool = False, **options: float | str | bool
    ):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        # As in SQLAlchemy: sqlite:///relative.db, sqlite:////absolute.db
        path = (uri or "").removeprefix("sqlite:///")
        if not uri or path == uri or not path:
            raise ValueError("sqlite rate-limit storage needs a path: sqlite:////abs/file.db")
        # Counters live for one window (a minute or so): synchronous=OFF skips the fsync of
        # checkpoints (the gain is measured in bench/README.md). A process crash loses nothing
        # (the OS has the pages); after a power loss a damaged file is set aside and recreated.
        self._store = SqliteStorage(
            Path(path),
            busy_timeout_ms=int(options.get("busy_timeout_ms", 5000)),
            synchronous="OFF",
        )
        self._recent = threading.local()
        self._ensure_table()

    def _ensure_table(self) -> None:
        """The counters' table made by its migration; a damaged file (a power loss with
        fsync off) is set aside and made again."""
        try:
            self._store.migrate(RATE_LIMITS)
            self._store.conn.execute("SELECT count(*) FROM rate_limits WHERE 0").fetchone()
        except sqlite3.DatabaseError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code not in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                raise
            self._store.close()
            for suffix in ("", "-wal", "-shm"):
                path = Path(str(self._store.path) + suffix)
                if path.exists():
                    path.rename(path.with_name(path.name + ".damaged"))
            self._store.migrate(RATE_LIMITS)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return DatabaseError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.incr_window(key, expiry, amount)[0]

    @_storage_errors
    def incr_window(
        self, key: str, expiry: int, amount: int = 1, read: str | None = None
    ) -> tuple[int, float, int]:
        """The counter after this hit, its window's end and the live count of the counter
        ``read`` (0 without one), from the one statement."""
        return self._incr(_INCR_SQL, key, expiry, amount, read)[:3]

    def _incr(self, sql: str, key: str, expiry: int, amount: int, read: str | None) -> tuple:
        now = time.time()
        row = self._store.execute_write(
            sql, {"key": key, "amount": amount, "expires": now + expiry, "now": now, "read": read}
        ).rows[0]
        value, expires_at, other = row[0], row[1], row[2]
        # flask-limiter reads the window back right after the hit to write its headers; the
        # hit already told us, so those two reads are answered from here.
        self._recent.hit = (key, int(value), float(expires_at), time.monotonic())
        if random.random() < 0.001:  # noqa: S311 - not security relevant: occasional pruning
            self._prune(now)
        return (int(value), float(expires_at), int(other or 0), *row[3:])

    def _just_hit(self, key: str) -> tuple[int, float] | None:
        hit = getattr(self._recent, "hit", None)
        if hit is not None and hit[0] == key and time.monotonic() - hit[3] < JUST_HIT_S:
            return hit[1], hit[2]
        return None

    def get(self, key: str) -> int:
        recent = self._just_hit(key)
        if recent is not None:
            return recent[0]
        row = self._store.conn.execute(
            "SELECT value FROM rate_limits WHERE key = ? AND expires_at > ?", (key, time.time())
        ).fetchone()
        return int(row[0]) if row else 0

    def get_expiry(self, key: str) -> float:
        recent = self._just_hit(key)
        if recent is not None:
            return recent[1]
        row = self._store.conn.execute(
            "SELECT expires_at FROM rate_limits WHERE key = ? AND expires_at > ?",
            (key, time.time()),
        ).fetchone()
        return float(row[0]) if row else time.time()

    def check(self) -> bool:
        try:
            self._store.conn.execute("SELECT count(*) FROM rate_limits WHERE 1 = 0").fetchone()
            return True
        except DatabaseError:
            return False

    def reset(self) -> int | None:
        return self._store.execute_write("DELETE FROM rate_limits").rowcount

    def clear(self, key: str) -> None:
        self._store.execute_write("DELETE FROM rate_limits WHERE key = ?", (key,))

    def _prune(self, now: float) -> None:
        self._store.execute_write("DELETE FROM rate_limits WHERE expires_at <= ?", (now,))


class PostgresLimitStorage(SQLiteLimitStorage):
    """The counters in PostgreSQL (``postgresql://user:password@host/db``), one row per
    window shared by every worker of every host. The table is UNLOGGED: counters live a
    minute, so they skip the WAL (a server crash empties them, never corrupts them)."""

    STORAGE_SCHEME = ["postgresql", "postgres"]

    def __init__(
        self, uri: str | None = None, wrap_exceptions: bool = False, **options: float | str | bool
    ):
        LimitsStorage.__init__(self, uri, wrap_exceptions=wrap_exceptions, **options)
        self._store = PostgresStorage(
            uri or "",
            pool_size=int(options.get("pool_size", 4)),
            connect_timeout_s=float(options.get("connect_timeout_s", 5)),
            statement_timeout_ms=int(options.get("statement_timeout_ms", 30_000)),
        )
        self._recent = threading.local()
        with suppress(*DatabaseError):  # the database is away: the first hit migrates
            self._ensure_table()

    def _ensure_table(self) -> None:
        self._store.migrate(RATE_LIMITS)

    def _again_with_table(self, call):
        """``call()``; when the table is not there (its migration could not run while the
        database was away), migrated and ``call()`` again."""
        import psycopg

        try:
            return call()
        except psycopg.errors.UndefinedTable:
            self._ensure_table()
            return call()

    @_storage_errors
    def incr_window(
        self, key: str, expiry: int, amount: int = 1, read: str | None = None
    ) -> tuple[int, float, int]:
        return self._again_with_table(
            lambda: SQLiteLimitStorage.incr_window.__wrapped__(self, key, expiry, amount, read)
        )

    @_storage_errors
    def incr_window_generation(
        self, key: str, expiry: int, amount: int = 1, read: str | None = None
    ) -> tuple[int, float, int, int | None]:
        """``incr_window`` and, from the same statement, the key generation (m025) of the
        database the counters are in: only when that is Waygate's own state (the default)."""
        return self._again_with_table(
            lambda: self._incr(_INCR_GENERATION_SQL, key, expiry, amount, read)
        )

    def get(self, key: str) -> int:
        return self._again_with_table(lambda: super(PostgresLimitStorage, self).get(key))

    def get_expiry(self, key: str) -> float:
        return self._again_with_table(lambda: super(PostgresLimitStorage, self).get_expiry(key))

    def check(self) -> bool:
        import psycopg

        try:
            self._store.conn.execute("SELECT count(*) FROM rate_limits WHERE 1 = 0").fetchone()
            return True
        except psycopg.errors.UndefinedTable:
            self._ensure_table()
            return True
        except DatabaseError:
            return False
