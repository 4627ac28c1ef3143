"""API keys: stored only as SHA-256 hashes of the random key; names are what users see."""

from . import migrations


@migrations()
def m001_api_keys(db):
    db.execute(
        """
        CREATE TABLE api_keys (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            role TEXT NOT NULL CHECK (role IN ('admin', 'user')),
            key_hash TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            last_used_at TEXT,
            revoked_at TEXT
        )
        """
    )
    # A name is unique among live keys; a revoked key's name can be given to its successor.
    db.execute("CREATE UNIQUE INDEX api_keys_live_name ON api_keys(name) WHERE revoked_at IS NULL")
