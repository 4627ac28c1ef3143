"""Row counts kept by triggers, so an unfiltered list's X-Total-Count is one lookup instead of
a count over every row, which grows with the table (figures in bench/README.md)."""

from .migration import Migration

_TABLES = ("executions", "errors")


def _count_now(table: str) -> str:
    return f"INSERT INTO row_counts (name, n) SELECT '{table}', count(*) FROM {table}"  # noqa: S608 # nosec B608 - the table names are this module's own


def _sqlite(table: str) -> list[str]:
    return [
        _count_now(table),
        f"CREATE TRIGGER {table}_count_up AFTER INSERT ON {table} BEGIN "  # noqa: S608 # nosec B608
        f"UPDATE row_counts SET n = n + 1 WHERE name = '{table}'; END",
        f"CREATE TRIGGER {table}_count_down AFTER DELETE ON {table} BEGIN "  # noqa: S608 # nosec B608
        f"UPDATE row_counts SET n = n - 1 WHERE name = '{table}'; END",
    ]


def _postgresql(table: str) -> list[str]:
    return [
        _count_now(table),
        f"""CREATE FUNCTION waygate_{table}_count() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE row_counts SET n = n + CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE -1 END
            WHERE name = '{table}';
            RETURN NULL;
        END $$""",  # noqa: S608 # nosec B608 - the table names are this module's own
        f"CREATE TRIGGER {table}_count_up AFTER INSERT ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION waygate_{table}_count()",
        f"CREATE TRIGGER {table}_count_down AFTER DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION waygate_{table}_count()",
    ]


migration = Migration(
    "m006_row_counts",
    sqlite=[
        "CREATE TABLE row_counts (name TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
        *(statement for table in _TABLES for statement in _sqlite(table)),
    ],
    postgresql=[
        "CREATE TABLE row_counts (name TEXT PRIMARY KEY, n BIGINT NOT NULL)",
        *(statement for table in _TABLES for statement in _postgresql(table)),
    ],
)
