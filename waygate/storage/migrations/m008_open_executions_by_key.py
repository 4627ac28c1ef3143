"""Open (pending or running) executions per key, for the per-key cap on async executions:
a partial index, so it holds only the few open rows, never the whole audit log."""

from .migration import Migration

_BOTH = [
    "CREATE INDEX executions_open_by_key ON executions(key_id) "
    "WHERE status IN ('pending', 'running')"
]

migration = Migration("m008_open_executions_by_key", sqlite=_BOTH, postgresql=_BOTH)
