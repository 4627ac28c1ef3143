"""The key generation (issue 32): one row whose counter moves with every change to a key that
can narrow or remove what it may do, in the transaction that makes the change.

A process that keeps keys it looked up (``KeyStore``'s cache, PostgreSQL only) trusts one only
while the generation it was read with is still the current one; the rate-limit statement every
request makes reads the current one in passing (waygate/keystore.py says how).

Triggers bump it, so no writer of ``api_keys`` can forget to: an UPDATE that sets any column
but ``last_used_at`` (revoke, rotate, update, owner changes, ...) or a DELETE. Recording a
key's last use must not, or every active key would empty every cache once a minute. Inserting
a key need not: a key no process has accepted is in no cache. A migration that adds a column
to ``api_keys`` adds it to ``_WATCHED`` in a new migration (drop and create the triggers).
"""

from .migration import Migration

_WATCHED = (
    "id, name, role, key_hash, created_at, revoked_at, allow, read_only, expires_at,"
    " rate_limit, previous_hash, previous_valid_until, updated_at, created_by_key_id,"
    " created_by, owner, owner_name"
)
_BUMP = "UPDATE key_generation SET generation = generation + 1 WHERE id = 1;"

_FUNCTION = f"""
CREATE FUNCTION waygate_bump_key_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {_BUMP}
    RETURN NULL;
END $$
"""

migration = Migration(
    "m025_key_generation",
    sqlite=[
        "CREATE TABLE key_generation (id INTEGER PRIMARY KEY CHECK (id = 1), "
        "generation INTEGER NOT NULL)",
        "INSERT INTO key_generation (id, generation) VALUES (1, 1)",
        f"CREATE TRIGGER api_keys_generation_update AFTER UPDATE OF {_WATCHED} ON api_keys "
        f"BEGIN {_BUMP} END",
        f"CREATE TRIGGER api_keys_generation_delete AFTER DELETE ON api_keys BEGIN {_BUMP} END",
    ],
    postgresql=[
        "CREATE TABLE key_generation (id BIGINT PRIMARY KEY CHECK (id = 1), "
        "generation BIGINT NOT NULL)",
        "INSERT INTO key_generation (id, generation) VALUES (1, 1)",
        _FUNCTION,
        f"CREATE TRIGGER api_keys_generation_update AFTER UPDATE OF {_WATCHED} ON api_keys "
        "FOR EACH ROW EXECUTE FUNCTION waygate_bump_key_generation()",
        "CREATE TRIGGER api_keys_generation_delete AFTER DELETE ON api_keys "
        "FOR EACH ROW EXECUTE FUNCTION waygate_bump_key_generation()",
    ],
)
