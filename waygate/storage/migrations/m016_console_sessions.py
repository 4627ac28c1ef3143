"""The web console (issue 28): the instance's signing secret (cookies, CSRF tokens) is one row
every worker reads, made once. The executions list filters by key, newest first: an index
keeps that a range read. (Who is signed in: the one ``sessions`` table of m018, shared with
sign-in for people.)

(Numbered 16: 15 is the key creators' migration of issue 25.)"""

from .migration import Migration

STATEMENTS = [
    "CREATE TABLE instance_secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE INDEX executions_key_created ON executions(key_name, created_at)",
]

migration = Migration("m016_console_sessions", sqlite=STATEMENTS, postgresql=STATEMENTS)
