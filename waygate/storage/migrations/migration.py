"""What a migration is: one schema change, written for both backends side by side."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import sqlite_utils

# A SQLite form: its statements, or a function of the database for a change that must read
# the schema first (m012 rebuilds a table from its own SQL).
SqliteForm = Sequence[str] | Callable[[sqlite_utils.Database], None]


@dataclass(frozen=True)
class Migration:
    """One schema change. ``name`` is what a database records once it is applied
    (``_sqlite_migrations`` on SQLite, ``_waygate_migrations`` on PostgreSQL): a shipped
    migration is never renamed nor edited; a change is a new migration."""

    name: str
    sqlite: SqliteForm
    postgresql: Sequence[str]

    def apply_sqlite(self, db: sqlite_utils.Database) -> None:
        if callable(self.sqlite):
            self.sqlite(db)
            return
        for statement in self.sqlite:
            db.execute(statement)


@dataclass(frozen=True)
class Schema:
    """The migrations of one database's tables, in the order they are applied. ``name`` is
    the set sqlite-utils records them under in ``_sqlite_migrations``."""

    name: str
    migrations: tuple[Migration, ...]

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.migrations]
