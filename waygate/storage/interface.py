"""The storage interface: what every backend offers, and all that callers may ask of one.

Callers hold a ``Storage`` and write their SQL once, in the dialect both backends read
(waygate/storage/dialect.py). Where the backends differ in what they can do, the interface
says so (``shared_by_hosts``) or the backend that cannot raises ``Unsupported`` with what to
do instead (``backup_to`` on PostgreSQL); nobody outside this package asks which backend it
is. SqliteStorage (sqlite.py) and PostgresStorage (postgresql.py) implement it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .migrations import STATE, Schema

# A statement's parameters: positional for ``?``, a mapping for ``:name``.
Params = Sequence[Any] | Mapping[str, Any]


class Row(Protocol):
    """A result row, readable as ``row[0]`` and ``row["column"]`` (``sqlite3.Row`` is one)."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> list[str]: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


class Cursor(Protocol):
    """A statement's result: its rows and how many rows it changed."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Row | None: ...

    def fetchall(self) -> Sequence[Row]: ...

    def __iter__(self) -> Iterator[Row]: ...


class Connection(Protocol):
    """``storage.conn``: where reading statements run, each on its own."""

    def execute(self, sql: str, params: Params = ..., /) -> Cursor: ...


class Transaction(Connection, Protocol):
    """What ``storage.write()`` yields: the statements of one write transaction."""

    def executemany(self, sql: str, params: Iterable[Params], /) -> object: ...


@dataclass(frozen=True)
class WriteResult:
    rowcount: int
    rows: Sequence[Row]


@runtime_checkable
class Storage(Protocol):
    """A Waygate database. Every wait is bounded; a database that cannot serve now raises one
    of ``UnavailableError`` (waygate/storage/errors.py)."""

    @property
    def conn(self) -> Connection:
        """Where reading statements run (this thread's connection, or a pooled one each)."""
        ...

    def write(self) -> AbstractContextManager[Transaction]:
        """A write transaction, serialised with every other writer of the database (of every
        process and host): a read followed by a write inside one sees nothing change."""
        ...

    def execute_write(self, sql: str, params: Params = ()) -> WriteResult:
        """One writing statement in its own transaction; RETURNING rows are fetched."""
        ...

    def execute_grouped(self, sql: str, params: Params = ()) -> None:
        """One writing statement, committed when this returns, maybe in a transaction shared
        with other threads' statements (the audit row on every request's path)."""
        ...

    def write_grouped(self, work: Callable[[Transaction], object]) -> None:
        """``work``'s statements in one transaction, committed when this returns, maybe
        shared with other threads' (as ``execute_grouped``); run again in a transaction of
        its own should the shared one fail, so it starts from nothing each time. Unlike
        ``write()`` it takes no lock of its own on PostgreSQL: what it reads and then writes
        it locks itself."""
        ...

    def migrate(self, schema: Schema = STATE) -> list[str]:
        """Apply ``schema``'s pending migrations, once however many processes and hosts ask
        at the same time; the names applied."""
        ...

    def pending_migrations(self, schema: Schema = STATE) -> list[str]:
        """The names of ``schema``'s migrations not yet applied (nothing is written)."""
        ...

    def used_bytes(self) -> int | None:
        """Bytes the live data takes, or None where the backend cannot tell cheaply."""
        ...

    def ping(self) -> None:
        """Raise unless the database answers and is migrated."""
        ...

    def describe(self) -> str:
        """Where the data lives, fit for logs and /diagnostics (never a password)."""
        ...

    def backup_to(self, target: Path) -> None:
        """A consistent copy of the database in the new file ``target``, taken while the
        service runs; ``Unsupported`` where the backend has its own tools for it."""
        ...

    @property
    def shared_by_hosts(self) -> bool:
        """Whether several hosts may share this database: then each worker renews a lease
        on its executions, for other hosts to end them should its host die."""
        ...

    def close(self) -> None:
        """Let go of this process's connections."""
        ...
