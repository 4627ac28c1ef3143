"""The web console's sign-ins (waygate/web/console_sessions.py): one row per signed-in browser,
found by the SHA-256 of the random token its cookie carries, so that every worker and host
agrees on who is signed in and a sign-out or a revoked key ends the session everywhere. The
instance's signing secret (cookies, CSRF tokens) is one row every worker reads, made once.
The executions list filters by key, newest first: an index keeps that a range read.

(Numbered 16: 15 is the key creators' migration of issue 25.)"""

from .migration import Migration


def _forms(integer: str) -> list[str]:
    return [
        f"""
        CREATE TABLE console_sessions (
            token_hash TEXT PRIMARY KEY,
            key_id {integer} NOT NULL,
            created_at TEXT NOT NULL,
            seen_at TEXT NOT NULL
        )
        """,
        "CREATE INDEX console_sessions_key ON console_sessions(key_id)",
        "CREATE TABLE instance_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE INDEX executions_key_created ON executions(key_name, created_at)",
    ]


migration = Migration(
    "m016_console_sessions", sqlite=_forms("INTEGER"), postgresql=_forms("BIGINT")
)
