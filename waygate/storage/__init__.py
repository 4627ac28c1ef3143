"""Storage: owns Waygate's databases, their schema and the files they live in.

Two backends behind one interface (``Storage``, interface.py): SQLite in the data dir, the
embedded default (sqlite.py), and PostgreSQL when ``WAYGATE_DATABASE_URL`` names one, for
state that several hosts share (postgresql.py). ``open_storage(config)`` gives the configured
one. Callers write their SQL once, in the dialect both read (dialect.py), catch the
backend-neutral errors (errors.py) and never ask which backend they hold. The schema is one
list of migrations with both backends' forms side by side (migrations/).

    interface.py   the Storage protocol, its rows and results
    sqlite.py      SqliteStorage: one file, one writer at a time, WAL checkpoints in a thread
    postgresql.py  PostgresStorage: a connection pool per process, bounded waits
    dialect.py     the shared SQL dialect's rules, its translation for psycopg, where_clause
    errors.py      DatabaseError, IntegrityError, UnavailableError, Unsupported
    files.py       the data dir and files made private to the service's user
    migrations/    the schema of the state and of the rate-limit counters
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .dialect import where_clause
from .errors import DatabaseError, IntegrityError, UnavailableError, Unsupported
from .files import make_private_dir
from .interface import Row, Storage, WriteResult
from .postgresql import PostgresStorage
from .sqlite import SqliteStorage

if TYPE_CHECKING:
    from ..config import Config


def open_storage(config: Config) -> Storage:
    """The configured backend: PostgreSQL when ``database_url`` is set, else SQLite."""
    if config.database_url:
        return PostgresStorage(
            config.database_url,
            pool_size=config.db_pool_size,
            connect_timeout_s=config.db_connect_timeout_s,
            statement_timeout_ms=config.db_statement_timeout_ms,
        )
    return SqliteStorage(config.database_path, busy_timeout_ms=config.db_busy_timeout_ms)


__all__ = [
    "DatabaseError",
    "IntegrityError",
    "PostgresStorage",
    "Row",
    "SqliteStorage",
    "Storage",
    "UnavailableError",
    "Unsupported",
    "WriteResult",
    "make_private_dir",
    "open_storage",
    "where_clause",
]
