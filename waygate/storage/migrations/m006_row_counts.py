"""Row counts kept by triggers, so an unfiltered list's X-Total-Count is one lookup instead of
a count over every row, which grows with the table (figures in bench/README.md)."""

from . import migrations


@migrations()
def m006_row_counts(db):
    db.execute("CREATE TABLE row_counts (name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID")
    for table in ("executions", "errors"):
        db.execute(
            f"INSERT INTO row_counts (name, n) SELECT '{table}', count(*) FROM {table}"  # noqa: S608 # nosec B608
        )
        db.execute(
            f"CREATE TRIGGER {table}_count_up AFTER INSERT ON {table} BEGIN "  # noqa: S608 # nosec B608
            f"UPDATE row_counts SET n = n + 1 WHERE name = '{table}'; END"
        )
        db.execute(
            f"CREATE TRIGGER {table}_count_down AFTER DELETE ON {table} BEGIN "  # noqa: S608 # nosec B608
            f"UPDATE row_counts SET n = n - 1 WHERE name = '{table}'; END"
        )
