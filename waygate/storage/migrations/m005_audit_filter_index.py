"""An index for the audit log filtered by action and status together (without it the planner
scans one filter's rows to test the other; figures in bench/README.md)."""

from .migration import Migration

_BOTH = ["CREATE INDEX executions_action_status_created ON executions(action, status, created_at)"]

migration = Migration("m005_audit_filter_index", sqlite=_BOTH, postgresql=_BOTH)
