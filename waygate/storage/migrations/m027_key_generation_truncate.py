"""The key generation moves on ``TRUNCATE api_keys`` too (PostgreSQL).

m025's row triggers bump it for every UPDATE and DELETE, but PostgreSQL fires no row trigger
for a TRUNCATE: an operator emptying the table by hand would have left every worker's cached
keys confirmed until they aged out (KEY_CACHE_TTL_S). A statement trigger covers it. SQLite
has no TRUNCATE and no key cache: nothing to do there."""

from .migration import Migration

migration = Migration(
    "m027_key_generation_truncate",
    sqlite=[],
    postgresql=[
        "CREATE TRIGGER api_keys_generation_truncate AFTER TRUNCATE ON api_keys"
        " FOR EACH STATEMENT EXECUTE FUNCTION waygate_bump_key_generation()",
    ],
)
