"""Storage on PostgreSQL (``WAYGATE_DATABASE_URL=postgresql://...``): the state several
Waygate hosts share.

The rest of Waygate writes its SQL once, in the dialect both backends agree on
(waygate/storage/dialect.py); this module hands it to psycopg 3 translated into psycopg's
placeholder style and gives rows that read by index and by column name, as SQLite's do.

Connections come from a psycopg_pool pool per process, made on first use after fork (a pool's
sockets and threads never cross a fork). A read takes a connection for one statement; a write
transaction holds one until it commits. Every wait is bounded: connecting by
``connect_timeout_s`` (also the longest a request waits for a pooled connection), each
statement by ``statement_timeout_ms``. When the server is down, requests fail fast with an
OperationalError (503 + Retry-After to clients) and the pool reconnects in the background, so
the service recovers without a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg_pool

from ..compat import bounded_connection_class
from ..forksafe import reset_after_fork
from .dialect import translate
from .errors import Unsupported
from .interface import Params, WriteResult
from .migrations import STATE, Schema

# After a connect timeout, how long calls fail at once before one tries again.
DOWN_PROBE_S = 1.0
# A pooled connection idle longer than this is checked (one empty round trip) as it leaves the
# pool; one back sooner is not: under load that check was a round trip per statement. A
# connection the server dropped within that moment fails its statement: a read is retried once
# on another connection, a write answers 503 (the database's failure, as any other).
CHECK_IDLE_S = 1.0
# database URL -> until when it counts as down, shared by the storages of one process (the
# state and the rate-limit counters may live in one database: one wait tells both)
_DOWN_UNTIL: dict[str, float] = {}


class Unreachable(psycopg.OperationalError):
    """No connection to the database could be had (an OperationalError: a 503 to clients)."""


class NoAnswer(Unreachable):
    """The server took a statement and did not answer within the bound (frozen, stuck)."""


# pg_advisory_xact_lock keys: one for write transactions (the writer lock SQLite has by
# nature), one for migrations (two hosts starting at once apply them once).
WRITE_LOCK = 0x57A7_0001
MIGRATE_LOCK = 0x57A7_0002


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (and query parameters dropped, which may
    carry one too): the form logs, errors and /diagnostics show."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "postgresql://***"
    if parts.username:
        netloc = f"{parts.username}{':***' if parts.password is not None else ''}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class Row:
    """A result row readable as ``row[0]`` and ``row["column"]``, like ``sqlite3.Row``."""

    __slots__ = ("_values", "_names")

    def __init__(self, values, names: dict[str, int]):
        self._values = tuple(values)
        self._names = names

    def __getitem__(self, key):
        if isinstance(key, str):
            return self._values[self._names[key]]
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other) -> bool:
        return tuple(self) == tuple(other)

    __hash__ = None  # type: ignore[assignment]

    def keys(self) -> list[str]:
        return list(self._names)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._names, self._values, strict=False))!r})"


_TUPLES_OK = psycopg.pq.ExecStatus.TUPLES_OK


def _returns_rows(cursor) -> bool:
    """Whether the statement answered rows (``cursor.description`` says the same, but builds
    a Column object per column at every access: 10 % of a request's CPU on PostgreSQL)."""
    result = cursor.pgresult
    return result is not None and result.status == _TUPLES_OK


def _row_factory(cursor):
    result = cursor.pgresult
    if result is None or result.status != _TUPLES_OK:
        names: dict[str, int] = {}
    else:  # Waygate's column names are ASCII, which every server encoding spells alike
        names = {result.fname(i).decode("utf-8", "replace"): i for i in range(result.nfields)}
    return lambda values: Row(values, names)


class Result:
    """A statement's rows, fetched before its connection went back to the pool."""

    __slots__ = ("_rows", "rowcount", "_at")

    def __init__(self, rows: list[Row], rowcount: int):
        self._rows, self.rowcount, self._at = rows, rowcount, 0

    def fetchone(self) -> Row | None:
        if self._at >= len(self._rows):
            return None
        self._at += 1
        return self._rows[self._at - 1]

    def fetchall(self) -> list[Row]:
        rows, self._at = self._rows[self._at :], len(self._rows)
        return rows

    def __iter__(self) -> Iterator[Row]:
        return iter(self.fetchall())


def _run(conn: psycopg.Connection, sql: str, params) -> Result:
    cursor = conn.execute(translate(sql), params if params else None)
    rows = cursor.fetchall() if _returns_rows(cursor) else []
    return Result(rows, cursor.rowcount)


class Session:
    """One connection, for the statements of one transaction."""

    def __init__(self, conn: psycopg.Connection):
        self._conn = conn

    def execute(self, sql: str, params=()) -> Result:
        return _run(self._conn, sql, params)

    def executemany(self, sql: str, seq) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(translate(sql), seq)


class Reader:
    """``storage.conn`` on PostgreSQL: each statement on a pooled connection of its own, in
    autocommit."""

    def __init__(self, storage: PostgresStorage):
        self._storage = storage

    def execute(self, sql: str, params=()) -> Result:
        with self._storage.connection() as conn:
            try:
                return _run(conn, sql, params)
            except NoAnswer:
                raise
            except psycopg.OperationalError:
                if not conn.broken:  # the server's refusal, not a dropped connection
                    raise
        # The server dropped this connection (a restart since its last use): a read is safe
        # to repeat, once, on another (a new one, checked, if the pool has no live one).
        with self._storage.connection() as conn:
            return _run(conn, sql, params)


class PostgresStorage:
    """A Storage (waygate/storage/interface.py) on a PostgreSQL database."""

    shared_by_hosts = True

    def __init__(
        self,
        url: str,
        pool_size: int = 10,
        connect_timeout_s: float = 5.0,
        statement_timeout_ms: int = 30_000,
    ):
        self.url = url
        self.pool_size = pool_size
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_ms = statement_timeout_ms
        self._forked()
        reset_after_fork(self, PostgresStorage._forked)

    def _forked(self) -> None:
        # A child drops the parent's pool without closing it: closing would talk on the
        # parent's sockets. It makes its own on first use.
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._pool_lock = threading.Lock()
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection. When none could be had within the connect timeout, the
        database counts as down for a moment (DOWN_PROBE_S): calls in between fail at once
        instead of each waiting the timeout out, and the next one after it probes again."""
        if time.monotonic() < _DOWN_UNTIL.get(self.url, 0.0):
            raise Unreachable("the database is unreachable; try again shortly")
        pool = self.pool()
        try:
            conn = pool.getconn()
        except psycopg_pool.PoolTimeout:
            _DOWN_UNTIL[self.url] = time.monotonic() + DOWN_PROBE_S
            raise Unreachable(
                f"no database connection within {self.connect_timeout_s:g} s"
            ) from None
        try:
            yield conn
        except NoAnswer:
            _DOWN_UNTIL[self.url] = time.monotonic() + DOWN_PROBE_S
            raise
        finally:
            conn.waygate_returned_at = time.monotonic()  # type: ignore[attr-defined]
            pool.putconn(conn)  # a broken one is discarded and replaced by the pool

    @staticmethod
    def _check_if_idle(conn: psycopg.Connection) -> None:
        """The pool's check on checkout, for connections idle over CHECK_IDLE_S only."""
        if time.monotonic() - getattr(conn, "waygate_returned_at", 0.0) > CHECK_IDLE_S:
            psycopg_pool.ConnectionPool.check_connection(conn)

    def describe(self) -> str:
        return redact_url(self.url)

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "autocommit": True,
            "row_factory": _row_factory,
            "connect_timeout": max(1, int(round(self.connect_timeout_s))),
            "options": f"-c statement_timeout={int(self.statement_timeout_ms)}"
            f" -c lock_timeout={int(self.statement_timeout_ms)}",
            "application_name": "waygate",
        }

    def _answer_within_s(self) -> float:
        """The longest a pooled connection waits for the server: its statement timeout (which
        the server enforces itself) and a margin, for a server that answers nothing at all."""
        return self.statement_timeout_ms / 1000 + 1

    def connect(self) -> psycopg.Connection:
        """A new connection outside the pool; the caller owns it (migrations: unbounded)."""
        return psycopg.connect(self.url, **self._connect_kwargs())

    def pool(self) -> psycopg_pool.ConnectionPool:
        pool = self._pool
        if pool is not None:
            return pool
        with self._pool_lock:
            if self._closed:
                raise Unreachable("the database connection pool is closed")
            if self._pool is None:
                pool = psycopg_pool.ConnectionPool(
                    self.url,
                    connection_class=bounded_connection_class(self._answer_within_s(), NoAnswer),
                    min_size=1,
                    max_size=self.pool_size,
                    kwargs=self._connect_kwargs(),
                    timeout=self.connect_timeout_s,
                    # a connection idle for a while is checked as it leaves the pool (one
                    # empty round trip): after a server restart no request meets a dead one,
                    # bar those that met it within CHECK_IDLE_S of its last use
                    check=self._check_if_idle,
                    # a failed connect is retried while a request may still be waiting for
                    # it; after that the next request's wait starts a new attempt
                    reconnect_timeout=self.connect_timeout_s,
                    name="waygate",
                    open=False,
                )
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    @property
    def conn(self) -> Reader:
        return Reader(self)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction, serialised with every other write transaction of every host
        (an advisory lock held to its commit), as SQLite serialises its writers: a read
        followed by a write inside one sees nothing change in between."""
        with self.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
            yield Session(conn)

    def execute_write(self, sql: str, params: Params = ()) -> WriteResult:
        with self.connection() as conn:
            result = _run(conn, sql, params)
            return WriteResult(result.rowcount, result.fetchall())

    def execute_grouped(self, sql: str, params: Params = ()) -> None:
        # PostgreSQL groups concurrent commits' WAL flushes itself.
        self.execute_write(sql, params)

    def write_grouped(self, work: Callable[[Session], object]) -> None:
        # A transaction of its own, without the advisory lock of write(): what ``work``
        # must serialise it locks itself (the audit chain's head row).
        with self.connection() as conn, conn.transaction():
            work(Session(conn))

    def used_bytes(self) -> int | None:
        # A PostgreSQL table keeps its size after rows are deleted (VACUUM makes the space
        # reusable, not smaller), so a byte budget could never tell when pruning is enough.
        return None

    def ping(self) -> None:
        self.conn.execute("SELECT count(*) FROM _waygate_migrations").fetchone()

    # -- migrations --------------------------------------------------------------------------

    def migrate(self, schema: Schema = STATE) -> list[str]:
        """Apply pending migrations, each in its own transaction, under an advisory lock:
        hosts starting at once apply each migration once."""
        with self.connect() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
            try:
                applied = self._applied(conn)
                done = []
                for migration in schema.migrations:
                    if migration.name in applied:
                        continue
                    with conn.transaction():
                        for statement in migration.postgresql:
                            conn.execute(statement)
                        conn.execute(
                            "INSERT INTO _waygate_migrations (name, applied_at) VALUES (%s, now())",
                            (migration.name,),
                        )
                    done.append(migration.name)
                return done
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK,))

    @staticmethod
    def _applied(conn: psycopg.Connection) -> set[str]:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _waygate_migrations ("
            " name TEXT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL)"
        )
        return {row[0] for row in conn.execute("SELECT name FROM _waygate_migrations")}

    def pending_migrations(self, schema: Schema = STATE) -> list[str]:
        with self.connect() as conn:
            exists = conn.execute("SELECT to_regclass('_waygate_migrations')").fetchone()[0]
            applied = self._applied(conn) if exists else set()
        return [name for name in schema.names if name not in applied]

    def backup_to(self, target: Path) -> None:
        raise Unsupported(
            "the database is PostgreSQL: back it up with pg_dump (see docs/operations.md)"
        )

    @property
    def closed(self) -> bool:
        """Closed for good (``close``)."""
        return self._closed

    def close(self) -> None:
        """Close the pool for good (threads still finishing get Unreachable)."""
        with self._pool_lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is not None:
            pool.close(timeout=1)
