"""Storage's group commit: statements of concurrent threads share a transaction, every one of
them is committed before its caller returns, and one bad statement fails only its caller.
And the data files: the owner's alone, whatever the umask."""

import os
import sqlite3
import subprocess
import threading
import time

import pytest
import requests

from tests.conftest import BIN
from waygate.storage import SqliteStorage

INSERT = "INSERT INTO t (n) VALUES (?)"


def storage_with(path, table):
    storage = SqliteStorage(path)
    storage.conn.execute(f"CREATE TABLE {table}")
    return storage


@pytest.fixture
def storage(tmp_path):
    storage = storage_with(tmp_path / "group.db", "t (n INTEGER NOT NULL CHECK (n >= 0))")
    yield storage
    storage.close()


def committed(storage):
    # a separate connection sees only what was committed
    conn = sqlite3.connect(storage.path)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 't'").fetchone():
            return []
        return sorted(n for (n,) in conn.execute("SELECT n FROM t"))
    finally:
        conn.close()


def queue_behind_the_lock(storage, values):
    """Start one thread per value while the write lock is held, so that all of them queue and
    the first to get the lock commits them together. Returns the threads and their errors."""
    errors: dict[int, BaseException] = {}

    def write(n):
        try:
            storage.execute_grouped(INSERT, (n,))
        except BaseException as exc:
            errors[n] = exc

    lock = storage._process_lock()
    with lock:
        threads = [threading.Thread(target=write, args=(n,)) for n in values]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 5
        while len(storage._group) < len(values) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(storage._group) == len(values)
        assert committed(storage) == []  # nothing is written while the lock is held
    for thread in threads:
        thread.join(5)
    return errors


def test_queued_statements_are_all_committed(storage):
    assert queue_behind_the_lock(storage, [1, 2, 3, 4, 5]) == {}
    assert committed(storage) == [1, 2, 3, 4, 5]


def test_a_bad_statement_fails_only_its_own_caller(storage):
    errors = queue_behind_the_lock(storage, [1, -1, 2])
    assert list(errors) == [-1]
    assert isinstance(errors[-1], sqlite3.IntegrityError)
    assert committed(storage) == [1, 2]


def test_many_threads_lose_nothing(storage):
    def write(base):
        for i in range(25):
            storage.execute_grouped(INSERT, (base * 100 + i,))

    threads = [threading.Thread(target=write, args=(b,)) for b in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert committed(storage) == sorted(b * 100 + i for b in range(12) for i in range(25))


def test_a_failing_database_fails_every_caller(storage, tmp_path):
    storage.conn.execute("DROP TABLE t")  # every statement of the group now fails
    errors = queue_behind_the_lock(storage, [1, 2, 3])
    assert sorted(errors) == [1, 2, 3]
    assert all(isinstance(e, sqlite3.OperationalError) for e in errors.values())
    assert all("no such table" in str(e) for e in errors.values())


def test_an_interrupted_leader_does_not_report_the_others_as_committed(storage, monkeypatch):
    commit = storage._commit

    def interrupted(batch):
        if len(batch) > 1:
            raise SystemExit()  # e.g. gunicorn stopping the worker thread mid-commit
        commit(batch)

    monkeypatch.setattr(storage, "_commit", interrupted)
    errors = queue_behind_the_lock(storage, [1, 2, 3])
    # the leader saw SystemExit; every other caller is told its row was not written
    assert len(errors) == 3
    assert sum(isinstance(e, SystemExit) for e in errors.values()) == 1
    assert sum(isinstance(e, sqlite3.OperationalError) for e in errors.values()) == 2
    assert committed(storage) == []


def private(root):
    """Paths under ``root`` that someone other than their owner may read or write."""
    return {
        str(path.relative_to(root)): oct(path.stat().st_mode & 0o777)
        for path in [root, *root.rglob("*")]
        if path.stat().st_mode & 0o077
    }


def test_the_service_writes_owner_only_files_whatever_the_umask(server_factory, tmp_path):
    data = tmp_path / "fresh" / "data"
    old = os.umask(0)  # the most permissive umask, inherited by gunicorn
    try:
        server = server_factory(workers=1, WAYGATE_DATA_DIR=str(data))
    finally:
        os.umask(old)
    for path in ("/health", "/metrics", "/mcp/commands"):
        requests.get(server.url + path, timeout=5)
    assert (data / "waygate.db").exists() and (data / "ratelimits.table").exists()
    assert private(tmp_path / "fresh") == {}


def test_the_cli_creates_owner_only_databases_whatever_the_umask(tmp_path):
    data = tmp_path / "data"
    for command in (["migrate"], ["keys", "create", "--name", "alice", "--role", "user"]):
        result = subprocess.run(
            [str(BIN / "waygate"), *command],
            env={**os.environ, "WAYGATE_DATA_DIR": str(data)},
            preexec_fn=lambda: os.umask(0),  # noqa: PLW1509 - no threads in the child yet
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
    assert (data / "waygate.db").exists()
    assert private(data) == {}


def test_an_app_made_in_process_keeps_its_data_dir_private_whatever_the_umask(tmp_path):
    """As `waygate mcp stdio` and any WSGI server other than gunicorn build it."""
    from waygate.app import create_app
    from waygate.config import Config

    old = os.umask(0)
    try:
        create_app(Config(data_dir=tmp_path / "data", housekeeping_interval_s=0))
    finally:
        os.umask(old)
    assert (tmp_path / "data" / "waygate.db").exists()
    assert private(tmp_path / "data") == {}


def test_processes_opening_a_new_database_at_once_all_get_wal(tmp_path):
    """Workers that first open the same new database together (the rate-limit counters) race
    to switch it to WAL while another already writes; SQLite answers such a loser "locked"
    without waiting: none may fail."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(6)

    def open_it(path, results):
        start.wait()
        try:
            conn = SqliteStorage(path).connect()
            conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
            conn.execute("INSERT INTO t VALUES (1)")
            results.put(conn.execute("PRAGMA journal_mode").fetchone()[0])
        except Exception as exc:  # reported, not raised in the child
            results.put(repr(exc))

    for n in range(15):
        results = ctx.Queue()
        path = tmp_path / f"race{n}.db"
        procs = [ctx.Process(target=open_it, args=(path, results)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        assert sorted(results.get(timeout=5) for _ in procs) == ["wal"] * 6


# -- WAL checkpoints: in a background thread, never inside a request's commit ----------------

PAGE_ROW = "INSERT INTO pages (blob) VALUES (?)"


def wal_frames(path):
    """Frames in the WAL, and how many of them are copied into the database file."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        # a checkpoint that waits for nothing and copies nothing new: NOOP is not a pragma
        # mode, so ask with PASSIVE on a WAL whose writers have all finished
        busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return frames, copied
    finally:
        conn.close()


PAGES = "pages (id INTEGER PRIMARY KEY, blob BLOB NOT NULL)"


@pytest.fixture
def pages(tmp_path):
    storage = storage_with(tmp_path / "wal.db", PAGES)
    yield storage
    storage.close()


def test_a_commit_never_runs_the_checkpoint_itself(pages, monkeypatch):
    # SQLite's default would checkpoint inside the commit that crosses 1,000 pages, with every
    # writer queued behind it; with the background thread kept asleep, 1,500 commits of a
    # page each leave all their frames in the WAL.
    monkeypatch.setattr("waygate.storage.sqlite.CHECKPOINT_AFTER_COMMITS", 10**9)
    for _ in range(1500):
        pages.execute_grouped(PAGE_ROW, (os.urandom(3000),))
    frames, _ = wal_frames(pages.path)
    assert frames >= 1500


def test_the_checkpointer_copies_the_wal_and_keeps_it_bounded(pages, monkeypatch):
    monkeypatch.setattr("waygate.storage.sqlite.CHECKPOINT_CAP_FRAMES", 200)
    wal = pages.path.with_name(pages.path.name + "-wal")
    largest = 0
    for n in range(6000):  # a page each: 6,000 frames written in all
        pages.execute_grouped(PAGE_ROW, (os.urandom(3000),))
        if n % 100 == 0:
            largest = max(largest, wal.stat().st_size)
            time.sleep(0.002)  # as requests do between commits: a loaded machine's scheduler
            # may otherwise leave the checkpointer thread no turn in a tight loop of commits
    assert pages.conn.execute("SELECT count(*) FROM pages").fetchone()[0] == 6000
    # the WAL restarted from its beginning again and again: never half of what was written
    # (SQLite's own fallback would let it reach 10,000 frames)
    assert largest < 3000 * 4096, largest
    assert pages._checkpointer.thread.is_alive()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        frames, copied = wal_frames(pages.path)
        if frames == copied:
            break
        for _ in range(32):  # wake it once more
            pages.execute_grouped(PAGE_ROW, (b"x",))
        time.sleep(0.05)
    assert frames == copied


def test_closing_the_storage_stops_its_checkpointer(tmp_path):
    storage = storage_with(tmp_path / "stop.db", PAGES)
    for _ in range(64):
        storage.execute_grouped(PAGE_ROW, (b"x",))
    thread = storage._checkpointer.thread
    assert thread.is_alive()
    storage.close()
    thread.join(5)
    assert not thread.is_alive()
