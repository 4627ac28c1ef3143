"""The one SQL dialect Waygate's queries are written in, and its translation for psycopg.

Every query outside this package is written once and runs on both backends. The rules:

- Placeholders are ``?`` (positional) or ``:name`` (named), as sqlite3 takes them;
  ``translate`` turns them into psycopg's ``%s`` and ``%(name)s`` (a literal ``%`` doubled).
  Quoted strings and identifiers are left alone, so ``'?'`` stays a question mark.
- Only what both SQLite (3.39 or later) and PostgreSQL read alike: ``ON CONFLICT ... DO
  UPDATE`` with ``excluded.``, ``RETURNING``, ``IS NOT DISTINCT FROM`` (never SQLite's
  ``IS`` for values), ``coalesce``, ``CASE``, ``LIMIT``. A parameter whose type PostgreSQL
  cannot infer (``? IS NULL``) is given one: ``CAST(? AS TEXT)``.
- Timestamps are ISO-8601 TEXT in UTC (waygate.clock), compared and sorted as text, never
  with a backend's date functions. Flags are integers 0/1. Ids come from the database.
- ``LIKE`` is left out: SQLite's ignores ASCII case and PostgreSQL's does not.

A query that cannot follow them does not belong outside this package: the storage interface
(waygate/storage/interface.py) grows a method that each backend implements its own way.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """Waygate's SQL (``?`` and ``:name`` placeholders) in psycopg's style (``%s``,
    ``%(name)s``, a literal ``%`` doubled). Quoted strings and identifiers are left alone."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in ("'", '"'):
            end = sql.find(c, i + 1)
            while end != -1 and end + 1 < n and sql[end + 1] == c:  # '' inside a literal
                end = sql.find(c, end + 2)
            end = n - 1 if end == -1 else end
            out.append(sql[i : end + 1].replace("%", "%%"))
            i = end + 1
            continue
        if c == "?":
            out.append("%s")
        elif c == "%":
            out.append("%%")
        elif (
            c == ":"
            and i + 1 < n
            and (sql[i + 1].isalpha() or sql[i + 1] == "_")
            and (i == 0 or sql[i - 1] != ":")
        ):
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            out.append(f"%({sql[i + 1 : j]})s")
            i = j
            continue
        else:
            out.append(c)
        i += 1
    return "".join(out)


def where_clause(
    equals: dict[str, Any], since_column: str, since: str | None
) -> tuple[str, list[Any]]:
    """`` WHERE a = ? AND ... AND <since_column> >= ?`` for the given filters (None or empty:
    not filtered), and its arguments. Only the caller's fixed column names are spliced in."""
    where, args = [], []
    for column, value in equals.items():
        if value:
            where.append(f"{column} = ?")
            args.append(value)
    if since:
        where.append(f"{since_column} >= ?")
        args.append(since)
    return (" WHERE " + " AND ".join(where)) if where else "", args
