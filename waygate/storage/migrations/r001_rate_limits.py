"""The rate-limit counters (waygate/limit_counters.py): one row per caller and window.

They live in a database of their own on SQLite (``ratelimits.db``, written without fsync: a
counter lives a minute) and, on PostgreSQL, in the shared database unless
WAYGATE_RATELIMIT_STORAGE_URI names another; there the table is UNLOGGED (no WAL: a server
crash empties it, never corrupts it). Before this migration the limiter made the table itself,
so existing databases have it already: IF NOT EXISTS.
"""

from .migration import Migration

migration = Migration(
    "r001_rate_limits",
    sqlite=[
        "CREATE TABLE IF NOT EXISTS rate_limits ("
        " key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires_at REAL NOT NULL"
        ") WITHOUT ROWID"
    ],
    postgresql=[
        "CREATE UNLOGGED TABLE IF NOT EXISTS rate_limits ("
        " key TEXT PRIMARY KEY, value BIGINT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)"
    ],
)
