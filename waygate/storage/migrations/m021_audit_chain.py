"""The audit hash chain (issue 31): every finished execution and every execution event is an
entry of one chain, ordered by the database, each entry's hash covering its row's canonical
content and the previous entry's hash (waygate/auditchain.py defines both), with checkpoints
signed by an Ed25519 key.

- ``audit_chain``: the entries, by sequence number; ``command_id`` names the execution (for an
  event, the execution it belongs to) and ``event_id`` the event.
- ``audit_chain_head``: one row, the newest entry's number and hash. A writer updates it first
  in its transaction, which locks it (PostgreSQL) or is already the only writer (SQLite): the
  chain's order is the database's commit order, across workers and hosts. A trigger keeps its
  hash in step with the entry inserted.
- ``audit_checkpoints``: signed (sequence number, hash, time); verification starts at the
  oldest one kept, so pruning keeps the chain verifiable.
- ``chain_seq`` on executions and events: the entry that covers the row, part of its content;
  the partial indexes hold the finished rows not yet chained (the housekeeping seals them,
  e.g. those finished by a path that does not chain in its own transaction, or rows written
  before this migration), so finding them costs nothing while there are none.
- ``arguments_hash``: the SHA-256 of an execution's canonical arguments, so the chain and the
  export cover what was asked without storing the arguments themselves.
"""

from .migration import Migration

ZERO_HASH = "0" * 64
_FINISHED = "status NOT IN ('pending', 'running', 'awaiting_approval')"
_COMMON = [
    "ALTER TABLE executions ADD COLUMN chain_seq {integer}",
    "ALTER TABLE executions ADD COLUMN arguments_hash TEXT",
    "ALTER TABLE execution_events ADD COLUMN chain_seq {integer}",
    """CREATE TABLE audit_chain (
        seq {integer} PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('execution', 'event')),
        command_id TEXT NOT NULL,
        event_id {integer},
        hash TEXT NOT NULL
    )""",
    """CREATE TABLE audit_chain_head (
        id {integer} PRIMARY KEY CHECK (id = 1),
        seq {integer} NOT NULL,
        hash TEXT NOT NULL,
        started_at TEXT NOT NULL
    )""",
    """CREATE TABLE audit_checkpoints (
        seq {integer} PRIMARY KEY,
        hash TEXT NOT NULL,
        at TEXT NOT NULL,
        public_key TEXT NOT NULL,
        signature TEXT NOT NULL
    )""",
    f"CREATE INDEX executions_unchained ON executions(finished_at) WHERE chain_seq IS NULL"
    f" AND {_FINISHED}",
    "CREATE INDEX execution_events_unchained ON execution_events(id) WHERE chain_seq IS NULL",
]


# the head before the first entry: entry 0, whose hash is 64 zeros, and when the chain began
_GENESIS = (
    "INSERT INTO audit_chain_head (id, seq, hash, started_at) VALUES (1, 0, '"  # noqa: S608 # nosec B608 - constants
    + ZERO_HASH
    + "', {now})"
)


def _common(integer: str) -> list[str]:
    return [statement.format(integer=integer) for statement in _COMMON]


migration = Migration(
    "m021_audit_chain",
    sqlite=[
        *_common("INTEGER"),
        _GENESIS.format(now="strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"),
        "CREATE TRIGGER audit_chain_advances AFTER INSERT ON audit_chain BEGIN"
        " UPDATE audit_chain_head SET hash = NEW.hash WHERE id = 1 AND seq = NEW.seq; END",
    ],
    postgresql=[
        *_common("BIGINT"),
        _GENESIS.format(
            now="""to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""
        ),
        """CREATE FUNCTION waygate_audit_chain_advances() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE audit_chain_head SET hash = NEW.hash WHERE id = 1 AND seq = NEW.seq;
            RETURN NULL;
        END $$""",
        "CREATE TRIGGER audit_chain_advances AFTER INSERT ON audit_chain"
        " FOR EACH ROW EXECUTE FUNCTION waygate_audit_chain_advances()",
    ],
)
