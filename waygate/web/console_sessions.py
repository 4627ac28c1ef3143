"""The instance's secret for signing the web console's cookies and CSRF tokens: one row every
worker and host reads, made by whichever comes first. (Who is signed in lives in the one
session store, :mod:`waygate.sessions`.)

Framework-free (no Flask here): ``console_auth.py`` uses it.
"""

from __future__ import annotations

import secrets

from ..storage import Storage


def signing_secret(storage: Storage) -> str:
    """The same in every worker and host, made by the first to ask."""
    read = "SELECT value FROM instance_secrets WHERE name = 'console'"
    row = storage.conn.execute(read).fetchone()
    if row is None:
        storage.execute_write(
            "INSERT INTO instance_secrets (name, value) VALUES ('console', ?)"
            " ON CONFLICT (name) DO NOTHING",
            (secrets.token_urlsafe(48),),
        )
        row = storage.conn.execute(read).fetchone()
    return row[0]
