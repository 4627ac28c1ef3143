"""Input requests (issue 29): an MCP round that ended asking its caller for input
(``input_required``) is an execution of its own, with its own status.

The handler ran (up to its question), so the round is recorded like any other run; its status
says it neither succeeded nor failed. ``executions`` accepts the status ``input_required``:
SQLite cannot change a CHECK constraint in place, so the table is rebuilt as m012 did it (new
table, copy, drop, rename) and its indexes and triggers are made again from their own SQL;
PostgreSQL changes the constraint in place. Such a row is a call in the statistics (the
handler ran), counted by the existing trigger.
"""

from .m012_approvals import _NEW_STATUSES as _OLD_STATUSES
from .migration import Migration

_NEW_STATUSES = _OLD_STATUSES.replace("'expired'))", "'expired', 'input_required'))")


def _sqlite(db):
    table_sql = db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'executions'"
    ).fetchone()[0]
    if _OLD_STATUSES not in table_sql:
        raise RuntimeError("m024: the executions table's statuses are not the ones m012 made")
    dependents = [
        row[0]
        for row in db.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'executions' "
            "AND type IN ('index', 'trigger') AND sql IS NOT NULL ORDER BY rowid"
        ).fetchall()
    ]
    # m012's rename left the name quoted in the stored SQL: CREATE TABLE "executions"
    head, body = table_sql.split("(", 1)
    new_sql = "CREATE TABLE executions_m024 (" + body.replace(_OLD_STATUSES, _NEW_STATUSES)
    if head.split()[:2] != ["CREATE", "TABLE"]:
        raise RuntimeError("m024: unexpected executions table SQL")
    db.execute(new_sql)
    db.execute("INSERT INTO executions_m024 SELECT * FROM executions")
    db.execute("DROP TABLE executions")
    db.execute("ALTER TABLE executions_m024 RENAME TO executions")
    for sql in dependents:
        db.execute(sql)


migration = Migration(
    "m024_input_required",
    sqlite=_sqlite,
    postgresql=[
        "ALTER TABLE executions DROP CONSTRAINT executions_status_check, "
        f"ADD CONSTRAINT executions_status_check {_NEW_STATUSES}",
    ],
)
