"""Time migration m012 (it rebuilds the executions table) on a database of N executions:

.venv/bin/python bench/migration_m012.py 1000000
"""

import pathlib
import sys
import tempfile
import time

import sqlite_utils

from waygate.storage import SqliteStorage
from waygate.storage.migrations import STATE
from waygate.storage.sqlite import sqlite_migrations

migrations = sqlite_migrations(STATE)

_INSERT = (
    "INSERT INTO executions (command_id, action, plugin, key_name, mode, status, duration_ms,"
    " timeout_s, created_at, finished_at) VALUES (?, 'echo', 'Core', 'k', 'sync', 'success', 3,"
    " 30, ?, '2026-11-28T00:00:00.000Z')"
)


def main(rows: int) -> None:
    path = pathlib.Path(tempfile.mkdtemp()) / "waygate.db"
    conn = SqliteStorage(path).connect()
    db = sqlite_utils.Database(conn)
    migrations.apply(db, stop_before="m012_approvals")
    conn.execute("BEGIN")
    conn.executemany(
        _INSERT,
        ((f"cmd_{i:09d}", f"2026-11-{1 + i % 27:02d}T00:00:00.000Z") for i in range(rows)),
    )
    conn.execute("COMMIT")
    started = time.perf_counter()
    migrations.apply(db)
    conn.commit()
    took = time.perf_counter() - started
    print(f"{rows} rows: m012 took {took:.2f} s; database {path.stat().st_size / 1e6:.0f} MB")


if __name__ == "__main__":
    main(int(sys.argv[1]))
