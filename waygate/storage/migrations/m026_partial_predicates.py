"""Partial-index and trigger conditions without constant IN lists (issue 32).

SQLite evaluates a constant ``IN`` list of three or more values through a temporary b-tree
built when the statement runs, and every INSERT into ``executions`` evaluated three: the WHERE
of the partial indexes ``executions_unfinished_by_key`` (m012) and ``executions_unchained``
(m021) and the WHEN of the trigger ``executions_count_up`` (m022). Written as comparisons
joined by OR / AND they build none. ``AuditLog.record``, databases migrated with and without
this migration, 10 alternating blocks of 1,000: 90.7 against 93.0 us of CPU a record, every
block pair the same way (bench/README.md). Same indexes, same rows, same meaning.

A query uses a partial index only when its WHERE has the index's condition word for word
(SQLite): ``waygate/audit.py`` (``_ACCEPT_SQL``) and ``waygate/auditchain.py``
(``_UNCHAINED``) say them as here, and tests/test_execution_path.py checks both plans.
PostgreSQL gets the same indexes (one text for both); its trigger stays as it was.
"""

from .migration import Migration

UNFINISHED = "(status = 'pending' OR status = 'running' OR status = 'awaiting_approval')"
UNCHAINED = (
    "chain_seq IS NULL AND status <> 'pending' AND status <> 'running'"
    " AND status <> 'awaiting_approval'"
)
_INDEXES = [
    "DROP INDEX executions_unfinished_by_key",
    f"CREATE INDEX executions_unfinished_by_key ON executions(key_id) WHERE {UNFINISHED}",
    "DROP INDEX executions_unchained",
    f"CREATE INDEX executions_unchained ON executions(finished_at) WHERE {UNCHAINED}",
]

migration = Migration(
    "m026_partial_predicates",
    sqlite=[
        *_INDEXES,
        "DROP TRIGGER executions_count_up",
        "CREATE TRIGGER executions_count_up AFTER INSERT ON executions"
        " WHEN NEW.status = 'pending' OR NEW.status = 'running'"
        " OR NEW.status = 'awaiting_approval' BEGIN"
        " UPDATE row_counts SET n = n + 1 WHERE name = 'executions'; END",
    ],
    postgresql=_INDEXES,
)
