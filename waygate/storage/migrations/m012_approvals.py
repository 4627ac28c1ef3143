"""Human approval for destructive commands (issue 17).

- ``executions`` accepts the statuses ``awaiting_approval``, ``denied`` and ``expired``. SQLite
  cannot change a CHECK constraint in place, so the table is rebuilt the documented way (new
  table, copy, drop, rename) and its indexes and triggers are made again from their own SQL.
- An execution awaiting approval stores its request: ``params`` (canonical JSON),
  ``params_hash`` (SHA-256 of it), ``client_context``; a trigger refuses any change to the
  stored request (action, params, hash, context, key, timeout) once it is stored.
- The decision: ``approval_expires_at``, ``decided_by`` / ``decided_by_key_id``,
  ``decided_at``, ``decision_reason``.
- ``execution_events``: the approval trail (requested, approved, denied, expired, executed),
  each with the key that acted and the worker that wrote it; deleted with its execution.
- A row inserted awaiting approval is no call yet: the statistics trigger skips it (the call
  counts once it ends, as an async one does).
- The per-key cap counts executions awaiting approval too, so its partial index covers them.
"""

from . import migrations
from .m004_stats_triggers import _COUNT

_OLD_STATUSES = "CHECK (status IN ('pending', 'running', 'success', 'failed', 'timeout'))"
_NEW_STATUSES = (
    "CHECK (status IN ('pending', 'running', 'success', 'failed', 'timeout',"
    " 'awaiting_approval', 'denied', 'expired'))"
)
_REQUEST_COLUMNS = (
    "action",
    "plugin",
    "key_id",
    "params",
    "params_hash",
    "client_context",
    "timeout_s",
)


@migrations()
def m012_approvals(db):
    _allow_new_statuses(db)
    for column in (
        "params TEXT",
        "params_hash TEXT",
        "client_context TEXT",
        "approval_expires_at TEXT",
        "decided_by TEXT",
        "decided_by_key_id INTEGER",
        "decided_at TEXT",
        "decision_reason TEXT",
    ):
        db.execute(f"ALTER TABLE executions ADD COLUMN {column}")
    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in _REQUEST_COLUMNS)
    db.execute(
        "CREATE TRIGGER executions_request_immutable BEFORE UPDATE ON executions "
        f"WHEN OLD.params_hash IS NOT NULL AND ({changed}) "
        "BEGIN SELECT RAISE(ABORT, 'a stored request cannot change'); END"
    )
    db.execute("DROP TRIGGER executions_count_insert")
    db.execute(
        "CREATE TRIGGER executions_count_insert AFTER INSERT ON executions "
        "WHEN NEW.plugin IS NOT NULL "
        "AND NEW.status NOT IN ('pending', 'running', 'awaiting_approval') "
        f"BEGIN {_COUNT} END"
    )
    db.execute("DROP INDEX executions_open_by_key")
    db.execute(
        "CREATE INDEX executions_unfinished_by_key ON executions(key_id) "
        "WHERE status IN ('pending', 'running', 'awaiting_approval')"
    )
    db.execute(
        "CREATE INDEX executions_awaiting ON executions(approval_expires_at) "
        "WHERE status = 'awaiting_approval'"
    )
    db.execute(
        """
        CREATE TABLE execution_events (
            id INTEGER PRIMARY KEY,
            command_id TEXT NOT NULL,
            event TEXT NOT NULL
                CHECK (event IN ('requested', 'approved', 'denied', 'expired', 'executed')),
            key_id INTEGER,
            key_name TEXT,
            reason TEXT,
            worker_pid INTEGER,
            at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX execution_events_command ON execution_events(command_id, id)")
    db.execute(
        "CREATE TRIGGER executions_events_gone AFTER DELETE ON executions BEGIN "
        "DELETE FROM execution_events WHERE command_id = OLD.command_id; END"
    )


def _allow_new_statuses(db):
    table_sql = db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'executions'"
    ).fetchone()[0]
    if _OLD_STATUSES not in table_sql:
        raise RuntimeError("m012: the executions table is not the one m002 made")
    dependents = [
        row[0]
        for row in db.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'executions' "
            "AND type IN ('index', 'trigger') AND sql IS NOT NULL ORDER BY rowid"
        ).fetchall()
    ]
    new_sql = table_sql.replace(_OLD_STATUSES, _NEW_STATUSES).replace(
        "CREATE TABLE executions", "CREATE TABLE executions_m012", 1
    )
    db.execute(new_sql)
    db.execute("INSERT INTO executions_m012 SELECT * FROM executions")
    db.execute("DROP TABLE executions")
    db.execute("ALTER TABLE executions_m012 RENAME TO executions")
    for sql in dependents:
        db.execute(sql)
