"""Execution leases, for several hosts sharing one database (PostgreSQL): an execution names
the host whose worker runs it, and each worker renews a lease every few seconds. A host that
dies stops renewing; another host's housekeeping then ends its executions as failed (the
sweep), where a pid check could only ever see its own host's processes."""

from . import migrations


@migrations()
def m014_worker_leases(db):
    db.execute("ALTER TABLE executions ADD COLUMN host TEXT")
    db.execute(
        """
        CREATE TABLE worker_leases (
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started_at TEXT NOT NULL,
            renewed_at REAL NOT NULL,
            PRIMARY KEY (host, pid)
        )
        """
    )
