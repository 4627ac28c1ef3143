"""Least privilege for keys: an allow-list of command patterns (JSON; NULL: every command), a
read-only flag, an expiry, a per-key execute limit, and the previous secret of a rotated key
with the end of its grace period. Existing keys keep working unscoped."""

from . import migrations


@migrations()
def m009_key_scopes(db):
    for column in (
        "allow TEXT",
        "read_only INTEGER NOT NULL DEFAULT 0",
        "expires_at TEXT",
        "rate_limit TEXT",
        "previous_hash TEXT",
        "previous_valid_until TEXT",
        "updated_at TEXT",
    ):
        db.execute(f"ALTER TABLE api_keys ADD COLUMN {column}")
    db.execute(
        "CREATE UNIQUE INDEX api_keys_previous_hash ON api_keys(previous_hash) "
        "WHERE previous_hash IS NOT NULL"
    )
