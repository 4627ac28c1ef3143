"""An async execution's latest progress report (ExecutionContext.report_progress), as JSON,
shown when it is polled while it runs."""

from . import migrations


@migrations()
def m011_execution_progress(db):
    db.execute("ALTER TABLE executions ADD COLUMN progress TEXT")
