"""Executions keep the id of their OpenTelemetry trace (NULL while tracing is off), so an
operator goes from an audit row to its trace."""

from . import migrations


@migrations()
def m013_execution_trace_id(db):
    db.execute("ALTER TABLE executions ADD COLUMN trace_id TEXT")
