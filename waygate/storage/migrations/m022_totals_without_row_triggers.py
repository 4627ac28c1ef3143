"""The audit row's totals without a trigger statement per row (issue 32).

Each finished execution's INSERT ran two trigger statements (the row count of m006 and the
plugin's totals of m004/m012): 40 of a row's 130 us on SQLite (bench/README.md), and on
PostgreSQL a plpgsql call each and an update of the one ``row_counts`` row that every
concurrent INSERT of every host then waits for until it commits. The process that writes such
a row now adds it to its totals in memory, and folds them into ``row_counts`` and
``plugin_stats`` in one transaction within a moment (waygate/totals.py); a read of the totals
folds its own process's first. The triggers stay for the rows they still serve: a row
inserted open (async, held for approval) counts by trigger, an execution that finishes later
counts its plugin's totals by trigger (m004), and deletes count down (m006)."""

from .migration import Migration

migration = Migration(
    "m022_totals_without_row_triggers",
    sqlite=[
        "DROP TRIGGER executions_count_insert",
        "DROP TRIGGER executions_count_up",
        "CREATE TRIGGER executions_count_up AFTER INSERT ON executions"
        " WHEN NEW.status IN ('pending', 'running', 'awaiting_approval') BEGIN"
        " UPDATE row_counts SET n = n + 1 WHERE name = 'executions'; END",
    ],
    postgresql=[
        "DROP TRIGGER executions_count_insert ON executions",
        "DROP TRIGGER executions_count_up ON executions",
        "CREATE TRIGGER executions_count_up AFTER INSERT ON executions FOR EACH ROW"
        " WHEN (NEW.status IN ('pending', 'running', 'awaiting_approval'))"
        " EXECUTE FUNCTION waygate_executions_count()",
    ],
)
