"""Principals (issue 27): who acted, as one string for a key or a person.

A person is ``<issuer>#<subject>`` (an issuer URL never has a fragment, so the first ``#``
splits it); an API key without an owner is ``key:<id>``; a key with an owner acts as its
owner. Executions record who asked (and who decided), execution and key events who acted,
and a key may name the person who owns it (``owner``, with a display name for listings).
An execution's ``key_name`` stays the display name: a key's name or a person's.
The index serves ``/mcp/executions?principal=`` and a person's own executions."""

from .migration import Migration

COLUMNS = (
    ("executions", "principal"),
    ("executions", "decided_by_principal"),
    ("execution_events", "principal"),
    ("key_events", "actor_principal"),
    ("api_keys", "owner"),
    ("api_keys", "owner_name"),
)
STATEMENTS = [
    *(f"ALTER TABLE {table} ADD COLUMN {column} TEXT" for table, column in COLUMNS),
    "CREATE INDEX executions_by_principal ON executions(principal, created_at)",
]

migration = Migration("m017_principals", sqlite=STATEMENTS, postgresql=STATEMENTS)
