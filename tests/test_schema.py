"""One schema on both backends: the migrations' SQLite and PostgreSQL forms make the same
tables, columns, types, NOT NULLs, defaults, keys, unique constraints, indexes and triggers,
and a database made before the migrations moved (a stored dump of one) upgrades cleanly."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import psycopg

from waygate.storage import PostgresStorage, SqliteStorage
from waygate.storage.migrations import RATE_LIMITS, STATE

FIXTURES = Path(__file__).parent / "fixtures"
# each backend's column types, as the one word the schema means by them
SQLITE_TYPES = {"INTEGER": "integer", "REAL": "real", "TEXT": "text"}
POSTGRESQL_TYPES = {"bigint": "integer", "double precision": "real", "text": "text"}
BOOKKEEPING = {"_sqlite_migrations", "_waygate_migrations", "sqlite_sequence"}
# SQLite numbers every lone INTEGER PRIMARY KEY (its rowid) and cannot be told not to; these
# are never numbered (one row, CHECK (id = 1); or the audit chain's entry numbers, which the
# chain's writer gives) and are a plain key on PostgreSQL.
NEVER_NUMBERED = {
    ("plugin_state", "id"),
    ("audit_chain_head", "id"),
    ("key_generation", "id"),
    ("audit_chain", "seq"),
    ("audit_checkpoints", "seq"),
}
# SQLite has no TRUNCATE, so nothing there to fire on it (m027)
POSTGRESQL_ONLY_TRIGGERS = {"api_keys_generation_truncate"}


def sqlite_schema(path: Path) -> dict:
    conn = sqlite3.connect(path)
    try:
        tables = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if r[0] not in BOOKKEEPING
        ]
        return {table: _sqlite_table(conn, table) for table in sorted(tables)}
    finally:
        conn.close()


def _sqlite_table(conn: sqlite3.Connection, table: str) -> dict:
    info = conn.execute(f"PRAGMA table_info({table})").fetchall()  # cid name type notnull dflt pk
    pk = [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]
    # a lone INTEGER PRIMARY KEY is SQLite's rowid: the database numbers it, as an identity
    rowid = len(pk) == 1 and any(r[1] == pk[0] and r[2] == "INTEGER" for r in info)
    identity = pk if rowid and (table, pk[0]) not in NEVER_NUMBERED else []
    columns = {
        name: (
            SQLITE_TYPES[kind],
            bool(notnull or name in pk),  # PostgreSQL's keys are NOT NULL by nature
            _default(default),
            name in identity,
        )
        for _, name, kind, notnull, default, _ in info
    }
    unique, indexes = set(), set()
    for _, name, is_unique, origin, partial in conn.execute(f"PRAGMA index_list({table})"):
        cols = tuple(r[2] for r in conn.execute(f"PRAGMA index_info({name})"))
        if origin == "u":
            unique.add(cols)
        elif origin == "c":
            indexes.add((name, cols, bool(is_unique), bool(partial)))
    triggers = {
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?", (table,)
        )
    }
    return {
        "columns": columns,
        "primary key": pk,
        "unique": unique,
        "indexes": indexes,
        "triggers": triggers,
    }


def postgresql_schema(url: str) -> dict:
    with psycopg.connect(url) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
            if r[0] not in BOOKKEEPING
        ]
        return {table: _postgresql_table(conn, table) for table in sorted(tables)}


def _postgresql_table(conn: psycopg.Connection, table: str) -> dict:
    columns = {
        name: (POSTGRESQL_TYPES[kind], nullable == "NO", _default(default), identity == "YES")
        for name, kind, nullable, default, identity in conn.execute(
            "SELECT column_name, data_type, is_nullable, column_default, is_identity"
            " FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = %s",
            (table,),
        )
    }
    keys: dict[str, list] = {"p": [], "u": []}
    for kind, cols in conn.execute(
        "SELECT c.contype, array(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY"
        " k(n, i) JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n"
        " ORDER BY k.i) FROM pg_constraint c"
        " WHERE c.conrelid = %s::regclass AND c.contype IN ('p', 'u')",
        (table,),
    ):
        keys[kind].append(tuple(cols))
    indexes = {
        (name, tuple(cols), unique, partial)
        for name, cols, unique, partial in conn.execute(
            "SELECT i.relname, array(SELECT a.attname FROM unnest(x.indkey::int2[])"
            " WITH ORDINALITY k(n, o) JOIN pg_attribute a ON a.attrelid = x.indrelid"
            " AND a.attnum = k.n ORDER BY k.o), x.indisunique, x.indpred IS NOT NULL"
            " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
            " WHERE x.indrelid = %s::regclass"
            " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = x.indexrelid)",
            (table,),
        )
    }
    triggers = {
        r[0]
        for r in conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
            (table,),
        )
    } - POSTGRESQL_ONLY_TRIGGERS
    return {
        "columns": columns,
        "primary key": list(keys["p"][0]) if keys["p"] else [],
        "unique": set(keys["u"]),
        "indexes": indexes,
        "triggers": triggers,
    }


def _default(value: str | None) -> str | None:
    """A default as both backends write it: ``'{}'::text`` is ``'{}'``."""
    return None if value is None else re.sub(r"::[a-z ]+$", "", value)


def migrated_sqlite(tmp_path: Path) -> Path:
    storage = SqliteStorage(tmp_path / "fresh.db")
    storage.migrate(STATE)
    storage.migrate(RATE_LIMITS)
    storage.close()
    return storage.path


def migrated_postgresql(url: str) -> str:
    storage = PostgresStorage(url)
    storage.migrate(STATE)
    storage.migrate(RATE_LIMITS)
    storage.close()
    return url


def test_both_backends_migrate_to_one_schema(tmp_path, pg_url):
    on_sqlite = sqlite_schema(migrated_sqlite(tmp_path))
    on_postgresql = postgresql_schema(migrated_postgresql(pg_url))
    assert on_sqlite == on_postgresql
    # every table the code uses is there, the rate-limit counters' included
    assert {"api_keys", "executions", "rate_limits", "worker_leases"} <= set(on_sqlite)


def _newer_than_the_fixtures() -> list[str]:
    """The migrations added since the fixtures were dumped (they end at m014): only these
    apply to a database made then; none that it recorded runs again."""
    return STATE.names[STATE.names.index("m014_worker_leases") + 1 :]


def _load_sqlite(path: Path, fixture: str) -> None:
    conn = sqlite3.connect(path)
    conn.executescript((FIXTURES / fixture).read_text())
    conn.close()


def test_a_sqlite_data_dir_made_before_the_schema_moved_upgrades_in_place(tmp_path):
    """Dumps of the data dir's two databases as the code before issue 26 left them
    (tests/fixtures/*-before-issue-26.sqlite.sql)."""
    state, counters = tmp_path / "waygate.db", tmp_path / "ratelimits.db"
    _load_sqlite(state, "waygate-before-issue-26.sqlite.sql")
    _load_sqlite(counters, "ratelimits-before-issue-26.sqlite.sql")
    assert SqliteStorage(state).migrate(STATE) == _newer_than_the_fixtures()
    assert SqliteStorage(counters).migrate(RATE_LIMITS) == ["r001_rate_limits"]
    fresh = sqlite_schema(migrated_sqlite(tmp_path))
    upgraded = {**sqlite_schema(state), **sqlite_schema(counters)}
    assert upgraded == fresh
    conn = sqlite3.connect(state)
    assert conn.execute("SELECT name FROM api_keys").fetchall() == [("ops",)]
    assert conn.execute("SELECT n FROM row_counts WHERE name = 'executions'").fetchone() == (1,)
    conn.close()
    conn = sqlite3.connect(counters)
    assert conn.execute("SELECT key, value FROM rate_limits").fetchall() == [("execute/ops", 1)]
    conn.close()


def test_a_postgresql_database_made_before_the_schema_moved_upgrades_in_place(tmp_path, pg_url):
    """A pg_dump of a database the code before issue 26 migrated and served rate limits from
    (tests/fixtures/waygate-before-issue-26.postgresql.sql)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute((FIXTURES / "waygate-before-issue-26.postgresql.sql").read_text())
    storage = PostgresStorage(pg_url)
    assert storage.migrate(STATE) == _newer_than_the_fixtures()
    assert storage.migrate(RATE_LIMITS) == ["r001_rate_limits"]
    assert storage.conn.execute("SELECT value FROM rate_limits").fetchone()[0] == 1
    new_key = storage.execute_write(
        "INSERT INTO api_keys (name, role, key_hash, created_at)"
        " VALUES ('new', 'user', 'c3d4', '2026-12-01T00:00:00.000Z') RETURNING id"
    ).rows[0][0]
    assert new_key == 2  # the identity carried on after the dump's rows
    storage.close()
    upgraded = postgresql_schema(pg_url)
    assert upgraded == sqlite_schema(migrated_sqlite(tmp_path))
