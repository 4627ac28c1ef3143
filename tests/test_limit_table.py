"""The rate-limit table shared by a host's workers (waygate/limit_table.py): exact across
processes, bounded, honest when full, kept over a worker's restart and not over a reboot."""

import multiprocessing
import os
import signal
import time
from types import SimpleNamespace

import pytest
from limits.storage import storage_from_string

from waygate import limit_counters, limit_table
from waygate.limit_table import LimitTable, TableLimitStorage


class FakeClock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def time(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    for module in (limit_table, limit_counters):  # the table and its SQLite overflow
        monkeypatch.setattr(module, "time", SimpleNamespace(time=fake.time, monotonic=fake.time))
    return fake


def _hits(path, key, count, queue):
    storage = storage_from_string(f"table:///{path}")
    queue.put([storage.incr_window(key, 60)[0] for _ in range(count)])


def test_four_processes_hitting_one_counter_count_every_hit_once(tmp_path):
    path = tmp_path / "ratelimits.table"
    TableLimitStorage(f"table:///{path}")  # made before the processes race to open it
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    procs = [context.Process(target=_hits, args=(path, "k", 500, queue)) for _ in range(4)]
    for proc in procs:
        proc.start()
    seen = [count for _ in procs for count in queue.get(timeout=60)]
    for proc in procs:
        proc.join(timeout=30)
    assert sorted(seen) == list(range(1, 2001))  # each hit got its own count: none lost
    assert TableLimitStorage(f"table:///{path}").get("k") == 2000


def test_a_window_ends_and_starts_afresh(tmp_path, clock):
    storage = TableLimitStorage(f"table:///{tmp_path / 't'}")
    assert storage.incr_window("k", 60)[:2] == (1, clock.now + 60)
    assert storage.incr_window("k", 60)[0] == 2
    clock.now += 59.9
    assert storage.get("k") == 2
    clock.now += 0.1
    assert storage.get("k") == 0
    assert storage.incr_window("k", 60)[:2] == (1, clock.now + 60)


def test_windows_survive_a_reopened_table_but_not_a_reboot(tmp_path, monkeypatch):
    uri = f"table:///{tmp_path / 't'}"
    TableLimitStorage(uri).incr_window("k", 60)
    assert TableLimitStorage(uri).get("k") == 1  # a worker restarted
    monkeypatch.setattr(limit_table, "_boot_id", lambda: b"another boot....")
    assert TableLimitStorage(uri).get("k") == 0  # the host restarted


def test_a_damaged_table_file_is_made_again(tmp_path):
    path = tmp_path / "t"
    path.write_bytes(b"not a table" * 1000)
    storage = TableLimitStorage(f"table:///{path}")
    assert storage.incr_window("k", 60)[0] == 1
    assert storage.incr_window("k", 60)[0] == 2


def test_expired_windows_give_their_slots_to_new_counters(tmp_path, clock):
    storage = TableLimitStorage(f"table:///{tmp_path / 't'}", slots=16, probe=16)
    for round_ in range(5):
        for i in range(16):
            assert storage.incr_window(f"{round_}-{i}", 60)[0] == 1
        clock.now += 61
    assert not (tmp_path / "t.db").exists()  # every counter fitted the 16 slots


def test_a_full_table_counts_new_counters_in_sqlite_and_never_splits_one(tmp_path, clock):
    storage = TableLimitStorage(f"table:///{tmp_path / 't'}", slots=16, probe=16)
    for i in range(16):
        storage.incr_window(f"held-{i}", 60)
    assert storage.incr_window("late", 60)[0] == 1  # no slot: counted in the SQLite file
    assert (tmp_path / "t.db").exists()
    clock.now += 30
    storage.clear("held-0")  # a slot frees up while the overflow window lives
    assert storage.incr_window("late", 60)[0] == 2  # still where its window is
    assert storage.incr_window("other", 60)[0] == 1  # new ones follow it there
    assert storage.get("late") == 2 and storage.get("other") == 1
    assert storage.incr_window("held-1", 60)[0] == 2  # the table's own keep counting there
    clock.now += 61 + limit_table.OVERFLOW_MARGIN_S  # every overflow window has ended
    assert storage.incr_window("late", 60)[0] == 1
    assert storage.table.read("late") is not None  # back in the table
    assert storage.reset() >= 1 and storage.get("held-1") == 0


def test_a_worker_killed_while_holding_the_lock_does_not_block_the_others(tmp_path):
    table = LimitTable(tmp_path / "t")
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child takes the lock and dies holding it
        child = LimitTable(tmp_path / "t")
        child._lock.__enter__()
        os.write(ready_w, b"x")
        time.sleep(60)
        os._exit(0)
    assert os.read(ready_r, 1) == b"x"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert table.hit("k", 60, 1)[0][0] == 1


def test_a_hit_reads_another_counter_in_the_same_step_wherever_it_lives(tmp_path, clock):
    storage = TableLimitStorage(f"table:///{tmp_path / 't'}", slots=16, probe=16)
    assert storage.incr_window("k", 60, 1, "budget") == (1, clock.now + 60, 0)
    storage.incr_window("budget", 60)
    storage.incr_window("budget", 60)
    assert storage.incr_window("k", 60, 1, "budget")[::2] == (2, 2)
    for i in range(16):
        storage.incr_window(f"held-{i}", 60)
    storage.incr_window("late-budget", 60)  # in the SQLite file: the table is full
    assert storage.incr_window("k", 60, 1, "late-budget")[::2] == (3, 1)
    assert storage.incr_window("late", 60, 1, "budget")[::2] == (1, 2)
