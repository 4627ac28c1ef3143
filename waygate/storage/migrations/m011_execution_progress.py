"""An async execution's latest progress report (ExecutionContext.report_progress), as JSON,
shown when it is polled while it runs."""

from .migration import Migration

_BOTH = ["ALTER TABLE executions ADD COLUMN progress TEXT"]

migration = Migration("m011_execution_progress", sqlite=_BOTH, postgresql=_BOTH)
