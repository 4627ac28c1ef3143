"""Errors persisted from every worker for /diagnostics/errors: each 5xx answer and each
ERROR log record. Never keys or request bodies: code, message and a small context."""

from . import migrations


@migrations()
def m003_errors(db):
    db.execute(
        """
        CREATE TABLE errors (
            id INTEGER PRIMARY KEY,
            timestamp TEXT NOT NULL,
            level TEXT NOT NULL,
            code TEXT NOT NULL,
            message TEXT NOT NULL,
            context TEXT NOT NULL DEFAULT '{}',
            request_id TEXT,
            worker_pid INTEGER
        )
        """
    )
    db.execute("CREATE INDEX errors_timestamp ON errors(timestamp)")
