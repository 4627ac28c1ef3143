"""Execution leases, for several hosts sharing one database (PostgreSQL): an execution names
the host whose worker runs it, and each worker renews a lease every few seconds. A host that
dies stops renewing; another host's housekeeping then ends its executions as failed (the
sweep), where a pid check could only ever see its own host's processes."""

from .migration import Migration

migration = Migration(
    "m014_worker_leases",
    sqlite=[
        "ALTER TABLE executions ADD COLUMN host TEXT",
        """
        CREATE TABLE worker_leases (
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started_at TEXT NOT NULL,
            renewed_at REAL NOT NULL,
            PRIMARY KEY (host, pid)
        )
        """,
    ],
    postgresql=[
        "ALTER TABLE executions ADD COLUMN host TEXT",
        """
        CREATE TABLE worker_leases (
            host TEXT NOT NULL,
            pid BIGINT NOT NULL,
            started_at TEXT NOT NULL,
            renewed_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (host, pid)
        )
        """,
    ],
)
