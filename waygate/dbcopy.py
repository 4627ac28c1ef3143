"""``waygate db copy --to postgresql://...``: one host's state, moved into the database that
several hosts will share.

Every table that holds state is copied row for row, keeping its ids (keys keep their ids, so
executions and key events still point at them): API keys and their events, executions and their
approval trail, the error log, the audit chain and its checkpoints (and its head, so the chain
goes on where it stopped), the idempotency keys still in their window (a retry after the move
gets its first answer). Rows already in the target (same primary key) take the source's values,
so a second run, right after stopping the service, copies what arrived and what changed since
the first (a key revoked, an execution finished, an answer stored). Per-plugin statistics are
set to the source's totals (they survive audit pruning, so the audit rows cannot rebuild them),
the row counts are recounted, and the plugin generation becomes the larger of the two. Each
table is verified by counting, in the target, the rows of every source key.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .storage import PostgresStorage, Storage

# (table, primary key), parents before children
TABLES = (
    ("api_keys", "id"),
    ("key_events", "id"),
    ("executions", "command_id"),
    ("execution_events", "id"),
    ("errors", "id"),
    # the audit chain with its checkpoints, so the copy verifies as the original did
    ("audit_chain", "seq"),
    ("audit_checkpoints", "seq"),
    # a retry after the move still gets its first answer, not a second run
    ("idempotency_keys", "owner, idem_key"),
)
IDENTITY_TABLES = ("api_keys", "key_events", "execution_events", "errors")
BATCH = 1000


@dataclass
class TableReport:
    table: str
    source: int
    copied: int
    verified: int

    @property
    def ok(self) -> bool:
        return self.verified == self.source


def _columns(key: str) -> list[str]:
    """A primary key's columns: ``"id"`` or ``"owner, idem_key"``."""
    return [name.strip() for name in key.split(",")]


def _key_of(row, key: str) -> tuple:
    return tuple(row[name] for name in _columns(key))


def _batches(storage: Storage, table: str, key: str) -> Iterator[list]:
    """The source's rows in key order, a batch at a time (never the whole table at once)."""
    last = None
    marks = ", ".join("?" for _ in _columns(key))
    while True:
        where, args = ("", []) if last is None else (f" WHERE ({key}) > ({marks})", [*last])
        rows = storage.conn.execute(
            f"SELECT * FROM {table}{where} ORDER BY {key} LIMIT ?",  # noqa: S608 # nosec B608
            [*args, BATCH],
        ).fetchall()
        if not rows:
            return
        yield rows
        last = _key_of(rows[-1], key)


def copy_state(source: Storage, target: PostgresStorage) -> list[TableReport]:
    """Copy ``source`` into ``target``, a PostgreSQL storage (both migrated to the same
    version); one report per
    table. Each batch is its own transaction: an interrupted copy is resumed by running it
    again."""
    reports = []
    for table, key in TABLES:
        report = TableReport(table, 0, 0, 0)
        for rows in _batches(source, table, key):
            columns = list(rows[0].keys())
            names = ", ".join(columns)
            marks = ", ".join("?" for _ in columns)
            keys = [_key_of(row, key) for row in rows]
            # A row already there (an earlier run's) takes the source's values: the source is
            # the truth until the hosts move, and a key revoked or an idempotency key answered
            # between two runs must not come back as it was.
            fresh = ", ".join(
                f"{name} = excluded.{name}" for name in columns if name not in _columns(key)
            )
            with target.write() as conn:
                before = _present(conn, table, key, keys)
                conn.executemany(
                    f"INSERT INTO {table} ({names}) VALUES ({marks})"  # noqa: S608 # nosec B608
                    f" ON CONFLICT ({key}) DO UPDATE SET {fresh}",
                    [tuple(row) for row in rows],
                )
                after = _present(conn, table, key, keys)
            report.source += len(rows)
            report.copied += after - before
            report.verified += after
        reports.append(report)
    with target.write() as conn:
        _carry_totals(source, conn)
    return reports


def _present(conn, table: str, key: str, keys: list[tuple]) -> int:
    one = "(" + ", ".join("?" for _ in _columns(key)) + ")"
    return conn.execute(
        f"SELECT count(*) FROM {table} WHERE ({key}) IN (VALUES {', '.join([one] * len(keys))})",  # noqa: S608 # nosec B608
        [value for row in keys for value in row],
    ).fetchone()[0]


def _carry_totals(source: Storage, conn) -> None:
    """Statistics, row counts, identity sequences and the plugin generation, after the rows."""
    for row in source.conn.execute(
        "SELECT plugin, calls_total, errors_total, duration_ms_total FROM plugin_stats"
    ).fetchall():
        conn.execute(
            "INSERT INTO plugin_stats (plugin, calls_total, errors_total, duration_ms_total)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (plugin) DO UPDATE SET"
            " calls_total = excluded.calls_total, errors_total = excluded.errors_total,"
            " duration_ms_total = excluded.duration_ms_total",
            tuple(row),
        )
    for table in ("executions", "errors"):
        conn.execute(
            f"UPDATE row_counts SET n = (SELECT count(*) FROM {table}) WHERE name = ?",  # noqa: S608 # nosec B608
            (table,),
        )
    generation = source.conn.execute("SELECT generation FROM plugin_state WHERE id = 1").fetchone()[
        0
    ]
    conn.execute(
        "UPDATE plugin_state SET generation = CASE WHEN generation > ? THEN generation ELSE ?"
        " END WHERE id = 1",
        (generation, generation),
    )
    head = source.conn.execute(
        "SELECT seq, hash, started_at FROM audit_chain_head WHERE id = 1"
    ).fetchone()
    if head is not None:  # the chain goes on from the copied head (unless the target's is newer)
        conn.execute(
            "UPDATE audit_chain_head SET seq = ?, hash = ?, started_at = ? WHERE id = 1"
            " AND seq <= ?",
            (*tuple(head), head[0]),
        )
    for table in IDENTITY_TABLES:  # PostgreSQL's next id follows the copied ones
        conn.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"  # noqa: S608 # nosec B608
            f" coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"
        )
