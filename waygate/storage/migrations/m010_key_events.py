"""The trail of key events (created, changed, rotated, revoked, expired_use), with the acting
key's name and id. Never a secret."""

from . import migrations


@migrations()
def m010_key_events(db):
    db.execute(
        """
        CREATE TABLE key_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            event TEXT NOT NULL,
            key_id INTEGER NOT NULL,
            key_name TEXT NOT NULL,
            actor_id INTEGER,
            actor_name TEXT NOT NULL,
            details TEXT
        )
        """
    )
    db.execute("CREATE INDEX key_events_by_key ON key_events(key_name, id)")
