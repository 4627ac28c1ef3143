"""Least privilege for keys: an allow-list of command patterns (JSON; NULL: every command), a
read-only flag, an expiry, a per-key execute limit, and the previous secret of a rotated key
with the end of its grace period. Existing keys keep working unscoped."""

from .migration import Migration

_INDEX = (
    "CREATE UNIQUE INDEX api_keys_previous_hash ON api_keys(previous_hash) "
    "WHERE previous_hash IS NOT NULL"
)

migration = Migration(
    "m009_key_scopes",
    sqlite=[
        *(
            f"ALTER TABLE api_keys ADD COLUMN {column}"
            for column in (
                "allow TEXT",
                "read_only INTEGER NOT NULL DEFAULT 0",
                "expires_at TEXT",
                "rate_limit TEXT",
                "previous_hash TEXT",
                "previous_valid_until TEXT",
                "updated_at TEXT",
            )
        ),
        _INDEX,
    ],
    postgresql=[
        "ALTER TABLE api_keys ADD COLUMN allow TEXT, "
        "ADD COLUMN read_only BIGINT NOT NULL DEFAULT 0, ADD COLUMN expires_at TEXT, "
        "ADD COLUMN rate_limit TEXT, ADD COLUMN previous_hash TEXT, "
        "ADD COLUMN previous_valid_until TEXT, ADD COLUMN updated_at TEXT",
        _INDEX,
    ],
)
