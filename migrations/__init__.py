"""Waygate's schema migrations, applied in order by sqlite-utils' built-in ``Migrations``.

Each numbered module registers one migration; applied ones are recorded in
``_sqlite_migrations``. Add a new module with the next number and import it below; never edit
a migration that has shipped.
"""

from sqlite_utils import Migrations

migrations = Migrations("waygate")

# Importing registers; registration order is application order (zero-padded names sort so).
from . import (  # noqa: E402
    m001_api_keys,  # noqa: F401
    m002_executions,  # noqa: F401
    m003_errors,  # noqa: F401
    m004_stats_triggers,  # noqa: F401
    m005_audit_filter_index,  # noqa: F401
    m006_row_counts,  # noqa: F401
    m007_execution_key_id,  # noqa: F401
    m008_open_executions_by_key,  # noqa: F401
    m009_key_scopes,  # noqa: F401
    m010_key_events,  # noqa: F401
    m011_execution_progress,  # noqa: F401
    m012_approvals,  # noqa: F401
    m013_execution_trace_id,  # noqa: F401
    m014_worker_leases,  # noqa: F401
    m015_principals,  # noqa: F401
    m016_sessions,  # noqa: F401
)
