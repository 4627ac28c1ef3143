"""Executions keep the id of their OpenTelemetry trace (NULL while tracing is off), so an
operator goes from an audit row to its trace."""

from .migration import Migration

_BOTH = ["ALTER TABLE executions ADD COLUMN trace_id TEXT"]

migration = Migration("m013_execution_trace_id", sqlite=_BOTH, postgresql=_BOTH)
