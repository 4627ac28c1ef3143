"""Storage on SQLite: the embedded default, one file in the data dir (``waygate.db``).

One connection per process and thread, opened lazily after fork (a connection inherited
through fork is never reused). WAL mode lets readers run beside the single writer; the busy
timeout makes writers from several gunicorn workers queue instead of failing with
"database is locked". WAL checkpoints run in a background thread (``_Checkpointer``), not in
the commit of whichever request happens to cross SQLite's threshold.

The files it creates (the database, and so its WAL and shared-memory files, which SQLite
gives the database's mode; the lock files; the data dir) are the owner's alone, whatever the
umask (waygate/storage/files.py).
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from ..forksafe import reset_after_fork
from .files import create_private, make_private_dir, open_private
from .interface import Params, WriteResult
from .migrations import STATE, Schema

log = logging.getLogger(__name__)


class _FileLocked:
    """The flock of the write-lock file held, and a connection that turned out read-only
    dropped on the way out. On every request's path (the rate-limit hit, the audit row), so a
    class: the two @contextmanager generators it replaced cost more than the statement's own
    locking (the rate-limit UPSERT's write 32.9 -> 22 us)."""

    __slots__ = ("_storage",)

    def __init__(self, storage: SqliteStorage):
        self._storage = storage

    def __enter__(self) -> None:
        fcntl.flock(self._storage._lock_file, fcntl.LOCK_EX)

    def __exit__(self, kind, exc, traceback) -> bool:
        fcntl.flock(self._storage._lock_file, fcntl.LOCK_UN)
        if isinstance(exc, sqlite3.OperationalError):
            self._storage._forget_if_readonly(exc)
        return False


class _Grouped:
    __slots__ = ("sql", "params", "done", "error")

    def __init__(self, sql: str, params):
        self.sql, self.params = sql, params
        self.done = False
        self.error: Exception | None = None


def sqlite_migrations(schema: Schema) -> sqlite_utils.Migrations:
    """``schema`` as sqlite-utils' migration set, which applies each pending migration in a
    transaction with its record in ``_sqlite_migrations``."""
    migrations = sqlite_utils.Migrations(schema.name)
    for migration in schema.migrations:
        migrations(name=migration.name)(migration.apply_sqlite)
    return migrations


def is_readonly(exc: sqlite3.Error) -> bool:
    """SQLITE_READONLY or one of its extended codes (e.g. SQLITE_READONLY_DBMOVED)."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_READONLY


class SqliteStorage:
    """A Storage (waygate/storage/interface.py) on one SQLite file."""

    shared_by_hosts = False  # one host's workers; their liveness is checked by pid

    def __init__(self, path: Path, busy_timeout_ms: int = 5000, synchronous: str = "NORMAL"):
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self._forked()
        reset_after_fork(self, SqliteStorage._forked)

    def _forked(self) -> None:
        """A new process has no connection and no write lock yet: both are made on first use
        (a connection or an flock'd file must not be shared across a fork)."""
        self._local = threading.local()
        self._thread_lock: threading.Lock | None = None
        self._init_lock = threading.Lock()
        self._commits = 0  # since the checkpointer was last woken
        self._checkpointer: _Checkpointer | None = None

    def connect(self) -> sqlite3.Connection:
        """A new connection with Waygate's pragmas; the caller owns it."""
        make_private_dir(self.path.parent)
        create_private(self.path)
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_ms / 1000,
            isolation_level=None,  # autocommit; transactions are explicit (BEGIN / db.atomic())
            check_same_thread=False,
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        self._use_wal(conn)
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        # Checkpoints are the background thread's (_Checkpointer); SQLite's own, run inside a
        # commit, stays as the safety net should that thread ever fall behind.
        conn.execute(f"PRAGMA wal_autocheckpoint = {FALLBACK_AUTOCHECKPOINT_PAGES}")
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """Switch a new database to WAL (the mode stays with the file). Workers that open a
        new database at the same moment race for it, and SQLite answers the losers "database
        is locked" at once, without its busy handler: they retry within the busy timeout."""
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                busy = (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (a forked child makes its own)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.connect()
        return conn

    @contextmanager
    def _writer(self) -> Iterator[None]:
        """Be the only writer of this database among Waygate's threads and processes.

        SQLite admits one writer at a time and makes the others sleep-and-retry in growing
        steps (1, 2, 5, 10 ... up to 100 ms), which turns contention between gunicorn workers
        into long tail latency. Writers queue here instead: on a thread lock within the
        process, then on an flock(2) of a lock file beside the database across processes,
        which the kernel hands to the next waiter the moment it is released. Other programs
        (the CLI, sqlite3) still meet SQLite's own busy timeout, so they stay safe.
        """
        with self._process_lock(), self._locked:
            yield

    def _process_lock(self) -> threading.Lock:
        if self._thread_lock is not None:
            return self._thread_lock
        with self._init_lock:  # the first writers of a process race to get here
            if self._thread_lock is not None:
                return self._thread_lock
            # Made after fork: flock belongs to an open file, threads to their process.
            try:
                self._lock_file = open_private(self.path.with_suffix(".writelock"))
            except OSError as exc:
                raise sqlite3.OperationalError(f"cannot open the write lock: {exc}") from exc
            self._group_lock = threading.Lock()
            self._group: list[_Grouped] = []
            self._locked = _FileLocked(self)
            self._thread_lock = threading.Lock()  # last: its presence says all is made
            return self._thread_lock

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front, so it never fails half-way."""
        conn = self.conn
        with self._writer():
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")
        self._committed()

    def execute_write(self, sql: str, params: Params = ()) -> WriteResult:
        """One writing statement in its own transaction (RETURNING rows are fetched here)."""
        conn = self.conn
        with self._process_lock(), self._locked:
            cursor = conn.execute(sql, params)
            rows = cursor.fetchall()
        self._committed()
        return WriteResult(cursor.rowcount, rows)

    def execute_grouped(self, sql: str, params: Params = ()) -> None:
        """One writing statement, committed before this returns, in a transaction it may share
        with other threads' statements (group commit).

        The first thread to get the write lock writes every statement queued so far, its own
        and those of the threads queued behind it, in one transaction; those threads then find
        theirs committed and return without touching the database. Under load this turns many
        small transactions (each a lock hand-over and a WAL commit) into a few larger ones.
        When the shared transaction fails, each statement is retried in its own, so one bad
        statement fails only its own caller."""
        self._grouped(_Grouped(sql, params))

    def write_grouped(self, work: Callable[[sqlite3.Connection], object]) -> None:
        """``work`` (statements on the transaction it is given), committed before this
        returns, in a transaction it may share with other threads' (as execute_grouped); on
        a failure of the shared transaction it runs again in one of its own, so it must
        start from nothing each time it is called."""
        self._grouped(_Grouped(work, None))

    def _grouped(self, entry: _Grouped) -> None:
        lock = self._process_lock()
        with self._group_lock:
            self._group.append(entry)
        with lock:
            if not entry.done:
                with self._group_lock:
                    batch, self._group = self._group, []
                self._commit_group(batch)
                if entry.error is not None:
                    raise entry.error
        if entry.error is not None:  # the leader's exception is its own; each thread gets a copy
            raise type(entry.error)(*entry.error.args) from entry.error

    def _commit_group(self, batch: list[_Grouped]) -> None:
        settled: set[int] = set()  # entries committed or given their own error
        try:
            self._commit(batch)
            settled.update(range(len(batch)))
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
                settled.add(0)
            else:  # one statement's failure is not the others': each in its own transaction
                for n, entry in enumerate(batch):
                    try:
                        self._commit([entry])
                    except Exception as own:
                        entry.error = own
                    settled.add(n)
        finally:
            for n, entry in enumerate(batch):
                if n not in settled:  # the leader was interrupted (e.g. SystemExit) mid-way
                    entry.error = sqlite3.OperationalError("the write was interrupted")
                entry.done = True

    def _commit(self, batch: list[_Grouped]) -> None:
        conn = self.conn
        with self._locked:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for entry in batch:
                    if entry.params is None:  # write_grouped's work
                        entry.sql(conn)
                    else:
                        conn.execute(entry.sql, entry.params)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        self._committed()

    def _committed(self) -> None:
        """Count a commit; every CHECKPOINT_AFTER_COMMITS of them wake the checkpointer."""
        self._commits += 1  # a lost increment under a race only delays a wake-up
        if self._commits < CHECKPOINT_AFTER_COMMITS:
            return
        self._commits = 0
        checkpointer = self._checkpointer
        if checkpointer is None:
            with self._init_lock:
                if self._checkpointer is None:
                    self._checkpointer = _Checkpointer(self)
                checkpointer = self._checkpointer
        checkpointer.wake()

    def checkpoint(self) -> int:
        """Copy the WAL's committed pages into the database file; the WAL frames left.

        Run by the checkpointer thread. First without any lock, beside the writers (the
        copying and both fsyncs happen here, off every request's path). SQLite restarts the
        WAL from its start only when a writer finds every frame copied, which a steady stream
        of commits may never allow, so once the WAL holds CHECKPOINT_CAP_FRAMES the few frames
        written meanwhile are copied again with the writers held back for that moment."""
        with self._checkpoint_lock() as mine:
            if not mine:
                return -1  # another process's checkpointer is at it
            conn = self.conn
            frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
            if frames >= CHECKPOINT_CAP_FRAMES:
                with self._writer():
                    frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
            return frames

    @contextmanager
    def _checkpoint_lock(self) -> Iterator[bool]:
        """One checkpointer at a time among the processes; the others skip their round."""
        with open_private(self.path.with_suffix(".checkpointlock")) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True

    def _forget_if_readonly(self, exc: sqlite3.OperationalError) -> None:
        # A connection opened while the data dir was read-only stays read-only for good;
        # dropping it lets the next use reconnect once the directory is writable again.
        if is_readonly(exc):
            self._local = threading.local()

    def migrate(self, schema: Schema = STATE) -> list[str]:
        """Apply pending migrations once; safe to call from several processes at once."""
        make_private_dir(self.path.parent)
        if self.path.exists() and not self.pending_migrations(schema):
            return []  # nothing to do, and nothing written (a read-only data dir still starts)
        lock_path = self.path.with_suffix(".migrate.lock")
        with open_private(lock_path) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            conn = self.connect()
            try:
                db = sqlite_utils.Database(conn)
                migrations = sqlite_migrations(schema)
                pending = [m.name for m in migrations.pending(db)]
                if pending:
                    migrations.apply(db)
                return pending
            finally:
                conn.close()

    def pending_migrations(self, schema: Schema = STATE) -> list[str]:
        conn = self.connect()
        try:
            return [m.name for m in sqlite_migrations(schema).pending(sqlite_utils.Database(conn))]
        finally:
            conn.close()

    def used_bytes(self) -> int:
        """Bytes the database's live pages take (freed pages are reused, not counted)."""
        conn = self.conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * conn.execute("PRAGMA page_size").fetchone()[0]

    def ping(self) -> None:
        self.conn.execute("SELECT count(*) FROM _sqlite_migrations").fetchone()

    def describe(self) -> str:
        return str(self.path.resolve())

    def backup_to(self, target: Path) -> None:
        """Copy the database to ``target`` with SQLite's online backup API: a consistent
        snapshot, taken while the service keeps reading and writing. The copy is written
        beside ``target`` and renamed into place, so ``target`` is never half-written."""
        target = Path(target)
        partial = target.with_name(f".{target.name}.partial")
        partial.unlink(missing_ok=True)  # left by a copy that was killed
        # the copy holds every key hash and audit row: its owner's alone, as the data dir's
        # files are, whatever the umask (created private before SQLite writes a byte into it)
        create_private(partial)
        source = self.connect()
        try:
            copy = sqlite3.connect(partial)
            try:
                # Copying in steps lets the service's writers in between them.
                source.backup(copy, pages=1024)
                copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            finally:
                copy.close()
            partial.replace(target)
        finally:
            source.close()
            partial.unlink(missing_ok=True)

    def close_thread_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.close()

    def close(self) -> None:
        """Close this thread's connection and this process's write-lock file, and stop the
        checkpointer."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local = threading.local()
        if self._thread_lock is not None:
            self._lock_file.close()
            self._thread_lock = None


# A WAL checkpoint copies the committed pages into the database file and fsyncs both files
# (synchronous=NORMAL): milliseconds of waiting on the disk. SQLite runs it inside the commit
# that crosses wal_autocheckpoint (1,000 pages by default), with every writer of every worker
# queued behind that one request. Measured on an audit row (bench/README.md): mean commit
# 205-214 us with SQLite's checkpoints, 120-131 us with them in this thread; the slowest in a
# thousand 11 ms against 4 ms.
CHECKPOINT_AFTER_COMMITS = 32  # commits between two rounds
CHECKPOINT_CAP_FRAMES = 2000  # ~8 MB of WAL: copy the rest with the writers held back
FALLBACK_AUTOCHECKPOINT_PAGES = 10_000  # SQLite's own, should this thread ever fall behind
CHECKPOINT_IDLE_S = 5.0  # how often an idle checkpointer looks whether its storage is gone
CHECKPOINT_STOP_WAIT_S = 10.0  # a round waits on the write lock at most the busy timeout


class _Checkpointer:
    """A process's WAL checkpoints, in a thread of their own, woken by the commits.

    Holds its storage weakly: a storage that is dropped (tests make many) ends the thread."""

    def __init__(self, storage: SqliteStorage):
        self._storage = weakref.ref(storage)
        self._wake = threading.Event()
        self._stopped = False
        self._failing = False
        self.thread = threading.Thread(target=self._run, name="waygate-checkpoint", daemon=True)
        self.thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """End the thread and wait for a round under way: the storage closes the files that
        round may be writing through (its write lock) right after this returns."""
        self._stopped = True
        self._wake.set()
        if self.thread is not threading.current_thread():
            self.thread.join(CHECKPOINT_STOP_WAIT_S)

    def _run(self) -> None:
        storage = None
        try:
            while True:
                woken = self._wake.wait(CHECKPOINT_IDLE_S)
                self._wake.clear()
                storage = self._storage()
                if self._stopped or storage is None:
                    return
                if woken:
                    self._round(storage)
                storage = None  # held only during a round
        finally:
            if storage is not None:
                storage.close_thread_connection()

    def _round(self, storage: SqliteStorage) -> None:
        try:
            storage.checkpoint()
        except (sqlite3.Error, OSError) as exc:  # retried at the next round; said once
            if not self._failing:
                log.warning("WAL checkpoint failed, retried after the next commits: %s", exc)
            self._failing = True
        else:
            self._failing = False
