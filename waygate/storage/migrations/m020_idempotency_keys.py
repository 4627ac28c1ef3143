"""Idempotency keys (issue 31): a request sent with an ``Idempotency-Key`` (REST) or
``params._meta["waygate/idempotencyKey"]`` (MCP tools/call) runs once per caller and key;
a retry gets the first execution back. See waygate/idempotency.py.

One row per (owner, key): the primary key is the unique constraint that makes the first
claim win across workers and hosts. ``owner`` is whose key it is (``key:<id>`` for an API
key, ``person:<principal>`` for a person with an access token), ``fingerprint`` the SHA-256
of the canonical request, ``answer`` the first answer as its door presented it (NULL while
the first request runs), ``live`` whether a replay shows the execution's current state
(async and held executions), ``claimed_until`` the first request's deadline (a claim left
without an answer past it was lost with its worker) and ``expires_at`` the end of the window
(past it the key is forgotten; the housekeeping deletes such rows)."""

from .migration import Migration

TABLE = """
CREATE TABLE idempotency_keys (
    owner TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    command_id TEXT NOT NULL,
    answer TEXT,
    live {integer} NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    claimed_until TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (owner, idem_key)
)
"""
INDEXES = ["CREATE INDEX idempotency_keys_expiry ON idempotency_keys(expires_at)"]

migration = Migration(
    "m020_idempotency_keys",
    sqlite=[TABLE.format(integer="INTEGER"), *INDEXES],
    postgresql=[TABLE.format(integer="BIGINT"), *INDEXES],
)
