"""Waygate's schema, for SQLite and PostgreSQL alike: one list of migrations per database.

Each module holds one migration: why it exists (its docstring), then its SQLite and its
PostgreSQL form side by side, applied in order and recorded by name once applied
(``_sqlite_migrations`` on SQLite, ``_waygate_migrations`` on PostgreSQL). To change the
schema, add a module with the next number and its line below; never edit or rename one that
has shipped. tests/test_schema.py migrates both backends and fails when their tables,
columns, types, constraints or indexes differ.

Where PostgreSQL says a thing differently: integers are BIGINT (SQLite's INTEGER holds 64
bits) and ids identity columns; timestamps stay ISO-8601 TEXT, so the code compares and sorts
them alike; trigger bodies are PL/pgSQL functions; a CHECK changes in place where SQLite
rebuilds its table (m012).
"""

from . import (
    m001_api_keys,
    m002_executions,
    m003_errors,
    m004_stats_triggers,
    m005_audit_filter_index,
    m006_row_counts,
    m007_execution_key_id,
    m008_open_executions_by_key,
    m009_key_scopes,
    m010_key_events,
    m011_execution_progress,
    m012_approvals,
    m013_execution_trace_id,
    m014_worker_leases,
    m015_key_created_by,
    m016_console_sessions,
    m017_principals,
    m018_sessions,
    m019_tasks,
    m020_idempotency_keys,
    m021_audit_chain,
    m022_totals_without_row_triggers,
    m024_input_required,
    m025_key_generation,
    m026_partial_predicates,
    m027_key_generation_truncate,
    r001_rate_limits,
)
from .migration import Migration, Schema

# Waygate's state: waygate.db in the data dir, or the database several hosts share.
STATE = Schema(
    "waygate",
    (
        m001_api_keys.migration,
        m002_executions.migration,
        m003_errors.migration,
        m004_stats_triggers.migration,
        m005_audit_filter_index.migration,
        m006_row_counts.migration,
        m007_execution_key_id.migration,
        m008_open_executions_by_key.migration,
        m009_key_scopes.migration,
        m010_key_events.migration,
        m011_execution_progress.migration,
        m012_approvals.migration,
        m013_execution_trace_id.migration,
        m014_worker_leases.migration,
        m015_key_created_by.migration,
        m016_console_sessions.migration,
        m017_principals.migration,
        m018_sessions.migration,
        m019_tasks.migration,
        m020_idempotency_keys.migration,
        m021_audit_chain.migration,
        m022_totals_without_row_triggers.migration,
        m024_input_required.migration,
        m025_key_generation.migration,
        m026_partial_predicates.migration,
        m027_key_generation_truncate.migration,
    ),
)

# The rate-limit counters' database (WAYGATE_RATELIMIT_STORAGE_URI): ratelimits.db beside the
# state on SQLite, by default the shared database itself on PostgreSQL.
RATE_LIMITS = Schema("waygate_rate_limits", (r001_rate_limits.migration,))

__all__ = ["RATE_LIMITS", "STATE", "Migration", "Schema"]
