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

PostgreSQL changes the CHECK constraint in place; its trigger bodies are functions.
"""

from .m004_stats_triggers import COUNT_SQLITE
from .migration import Migration

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
_COLUMNS = (
    "params TEXT",
    "params_hash TEXT",
    "client_context TEXT",
    "approval_expires_at TEXT",
    "decided_by TEXT",
    "decided_by_key_id {integer}",
    "decided_at TEXT",
    "decision_reason TEXT",
)
_COUNTED = (
    "NEW.plugin IS NOT NULL AND NEW.status NOT IN ('pending', 'running', 'awaiting_approval')"
)
_INDEXES = [
    "CREATE INDEX executions_unfinished_by_key ON executions(key_id) "
    "WHERE status IN ('pending', 'running', 'awaiting_approval')",
    "CREATE INDEX executions_awaiting ON executions(approval_expires_at) "
    "WHERE status = 'awaiting_approval'",
]
_EVENTS = """
    CREATE TABLE execution_events (
        id {id},
        command_id TEXT NOT NULL,
        event TEXT NOT NULL
            CHECK (event IN ('requested', 'approved', 'denied', 'expired', 'executed')),
        key_id {integer},
        key_name TEXT,
        reason TEXT,
        worker_pid {integer},
        at TEXT NOT NULL
    )
"""
_EVENTS_INDEX = "CREATE INDEX execution_events_command ON execution_events(command_id, id)"


def _sqlite(db):
    _allow_new_statuses(db)
    for column in _COLUMNS:
        db.execute(f"ALTER TABLE executions ADD COLUMN {column.format(integer='INTEGER')}")
    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in _REQUEST_COLUMNS)
    for statement in (
        "CREATE TRIGGER executions_request_immutable BEFORE UPDATE ON executions "
        f"WHEN OLD.params_hash IS NOT NULL AND ({changed}) "
        "BEGIN SELECT RAISE(ABORT, 'a stored request cannot change'); END",
        "DROP TRIGGER executions_count_insert",
        f"CREATE TRIGGER executions_count_insert AFTER INSERT ON executions WHEN {_COUNTED} "
        f"BEGIN {COUNT_SQLITE} END",
        "DROP INDEX executions_open_by_key",
        *_INDEXES,
        _EVENTS.format(id="INTEGER PRIMARY KEY", integer="INTEGER"),
        _EVENTS_INDEX,
        "CREATE TRIGGER executions_events_gone AFTER DELETE ON executions BEGIN "
        "DELETE FROM execution_events WHERE command_id = OLD.command_id; END",
    ):
        db.execute(statement)


def _allow_new_statuses(db):
    """SQLite cannot change a CHECK in place: the table is rebuilt from its own SQL."""
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


migration = Migration(
    "m012_approvals",
    sqlite=_sqlite,
    postgresql=[
        "ALTER TABLE executions DROP CONSTRAINT executions_status_check, "
        f"ADD CONSTRAINT executions_status_check {_NEW_STATUSES}",
        "ALTER TABLE executions "
        + ", ".join(f"ADD COLUMN {column.format(integer='BIGINT')}" for column in _COLUMNS),
        """CREATE FUNCTION waygate_request_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'a stored request cannot change'
                USING ERRCODE = 'integrity_constraint_violation';
        END $$""",
        "CREATE TRIGGER executions_request_immutable BEFORE UPDATE ON executions "
        "FOR EACH ROW WHEN (OLD.params_hash IS NOT NULL AND ("
        + " OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in _REQUEST_COLUMNS)
        + ")) EXECUTE FUNCTION waygate_request_immutable()",
        "DROP TRIGGER executions_count_insert ON executions",
        f"CREATE TRIGGER executions_count_insert AFTER INSERT ON executions FOR EACH ROW "
        f"WHEN ({_COUNTED}) EXECUTE FUNCTION waygate_count_execution()",
        "DROP INDEX executions_open_by_key",
        *_INDEXES,
        _EVENTS.format(id="BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", integer="BIGINT"),
        _EVENTS_INDEX,
        """CREATE FUNCTION waygate_execution_events_gone() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM execution_events WHERE command_id = OLD.command_id;
            RETURN NULL;
        END $$""",
        "CREATE TRIGGER executions_events_gone AFTER DELETE ON executions "
        "FOR EACH ROW EXECUTE FUNCTION waygate_execution_events_gone()",
    ],
)
