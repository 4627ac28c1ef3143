"""Who created each key, kept on the key: the creating key's id (NULL when the host's CLI made
it) and name. The two-person rule of approvals follows this chain: a key created by the
requester's key, directly or through keys it created, is the requester's own and may not
approve. Keys made before this migration take it from their ``created`` key event."""

from .migration import Migration

BACKFILL = """
UPDATE api_keys SET
    created_by_key_id = (
        SELECT e.actor_id FROM key_events e
        WHERE e.key_id = api_keys.id AND e.event = 'created' ORDER BY e.id LIMIT 1
    ),
    created_by = (
        SELECT e.actor_name FROM key_events e
        WHERE e.key_id = api_keys.id AND e.event = 'created' ORDER BY e.id LIMIT 1
    )
"""

migration = Migration(
    "m015_key_created_by",
    sqlite=[
        "ALTER TABLE api_keys ADD COLUMN created_by_key_id INTEGER",
        "ALTER TABLE api_keys ADD COLUMN created_by TEXT",
        BACKFILL,
    ],
    postgresql=[
        "ALTER TABLE api_keys ADD COLUMN created_by_key_id BIGINT, ADD COLUMN created_by TEXT",
        BACKFILL,
    ],
)
