"""Signed-in browsers (issues 27 and 28): one session store for the web console and sign-in
for people, kept in the database, so that any worker of any host knows them and a sign-out
ends them everywhere at once.

``signin_requests`` holds a started sign-in (by a digest of its ``state``) until the browser
comes back from the identity provider, whichever worker it reaches: the nonce and PKCE
verifier to check and use then, and where to go after. ``sessions`` holds a signed-in person
by a digest of the session cookie: who (a key, by ``key_id``, read again on every request;
or a person, with their permissions fixed at sign-in), and the idle and absolute deadlines.
See waygate/sessions.py."""

from .migration import Migration

SIGNIN_REQUESTS = """
CREATE TABLE signin_requests (
    state_hash TEXT PRIMARY KEY,
    nonce TEXT NOT NULL,
    code_verifier TEXT NOT NULL,
    next_path TEXT NOT NULL,
    expires_at TEXT NOT NULL
)
"""
SESSIONS = """
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    principal TEXT NOT NULL,
    key_id {integer},
    person TEXT,
    role TEXT NOT NULL,
    approver {integer} NOT NULL,
    allow TEXT,
    read_only {integer} NOT NULL,
    created_at TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
)
"""
INDEXES = [
    "CREATE INDEX sessions_expiry ON sessions(expires_at)",
    "CREATE INDEX signin_requests_expiry ON signin_requests(expires_at)",
]

migration = Migration(
    "m018_sessions",
    sqlite=[SIGNIN_REQUESTS, SESSIONS.format(integer="INTEGER"), *INDEXES],
    postgresql=[SIGNIN_REQUESTS, SESSIONS.format(integer="BIGINT"), *INDEXES],
)
