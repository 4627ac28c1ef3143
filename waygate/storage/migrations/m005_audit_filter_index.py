"""An index for the audit log filtered by action and status together (without it the planner
scans one filter's rows to test the other; figures in bench/README.md)."""

from . import migrations


@migrations()
def m005_audit_filter_index(db):
    db.execute(
        "CREATE INDEX executions_action_status_created ON executions(action, status, created_at)"
    )
