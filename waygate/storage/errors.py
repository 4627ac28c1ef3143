"""What a storage raises, whichever the backend: exception tuples for ``except`` clauses and
error handlers, so that no caller names sqlite3 or psycopg, and ``Unsupported`` for a
capability one backend lacks."""

from __future__ import annotations

import sqlite3

import psycopg

DatabaseError: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error)
IntegrityError: tuple[type[Exception], ...] = (sqlite3.IntegrityError, psycopg.IntegrityError)
# The database cannot serve now (locked, read-only, unreachable, timed out): a 503, not a bug.
UnavailableError: tuple[type[Exception], ...] = (
    sqlite3.OperationalError,
    psycopg.OperationalError,
)


class Unsupported(Exception):
    """This backend cannot do what was asked; the message says what to do instead."""
