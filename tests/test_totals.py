"""The audit's totals without per-row triggers (waygate/totals.py, migration m022): exact at
rest, a process's own at once, another process's within a moment, nothing lost when a fold
fails."""

import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from waygate import totals as totals_module
from waygate.audit import AuditLog
from waygate.clock import isoformat
from waygate.storage import SqliteStorage


def record(audit: AuditLog, n: int, status: str = "success", plugin: str = "Core") -> None:
    now = isoformat()
    audit.record(
        command_id=f"cmd_{plugin}_{status}_{n}_{time.monotonic_ns()}", action="echo",
        plugin=plugin, key_name=None, mode="sync", status=status, duration_ms=2, error=None,
        timeout_s=30, created_at=now, started_at=now,
    )  # fmt: skip


def total_rows(audit: AuditLog) -> int:
    return audit.query(limit=1)[1]


def test_a_process_reads_its_own_rows_in_the_totals_at_once(storage):
    audit = AuditLog(storage)
    for n in range(3):
        record(audit, n)
    record(audit, 3, status="failed")
    stats = audit.statistics("Core")
    assert (stats.calls_total, stats.errors_total, stats.avg_duration_ms) == (4, 1, 2)
    assert total_rows(audit) == 4


def test_another_process_sees_the_totals_within_a_second(tmp_path):
    path = tmp_path / "waygate.db"
    writer, reader = AuditLog(SqliteStorage(path)), AuditLog(SqliteStorage(path))
    writer.storage.migrate()
    record(writer, 0)
    started = time.monotonic()
    while reader.statistics("Core").calls_total != 1:
        assert time.monotonic() - started < 1.0, "not folded within a second"
        time.sleep(0.01)
    assert total_rows(reader) == 1


def test_rows_from_many_threads_add_up_exactly(storage):
    audit = AuditLog(storage)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: record(audit, n, "success" if n % 4 else "timeout"), range(400)))
    audit.totals.fold()
    stats = audit.statistics("Core")
    assert (stats.calls_total, stats.errors_total) == (400, 100)
    assert total_rows(audit) == 400


def test_a_fold_the_database_refuses_is_kept_for_the_next(storage, monkeypatch):
    audit = AuditLog(storage)
    monkeypatch.setattr(totals_module, "FOLD_AFTER_S", 60)  # no fold but ours
    record(audit, 0)

    def refused():
        raise sqlite3.OperationalError("database is locked")

    with monkeypatch.context() as patched:
        patched.setattr(storage, "write", refused)
        with pytest.raises(sqlite3.OperationalError):
            audit.totals.fold()
    record(audit, 1, status="failed")
    audit.totals.fold()
    stats = audit.statistics("Core")
    assert (stats.calls_total, stats.errors_total) == (2, 1)
    assert total_rows(audit) == 2
