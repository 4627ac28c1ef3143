"""Executions belong to a key's id, never reused, instead of its name, which a revoked key's
successor may take. Existing rows get the id of the key that bore the name when they were
created (the newest such key created before them)."""

from .migration import Migration

_FILL = """
    UPDATE executions SET key_id = (
        SELECT k.id FROM api_keys k
        WHERE k.name = executions.key_name AND k.created_at <= executions.created_at
        ORDER BY k.id DESC LIMIT 1
    )
    WHERE key_name IS NOT NULL
"""

migration = Migration(
    "m007_execution_key_id",
    sqlite=["ALTER TABLE executions ADD COLUMN key_id INTEGER", _FILL],
    postgresql=["ALTER TABLE executions ADD COLUMN key_id BIGINT", _FILL],
)
