"""The command pool: results reach their waiter and are not kept alive by idle threads."""

import gc
import threading
import time
import weakref

import pytest

from waygate.pool import CommandPool, PoolFull


class Result:
    """Stands for a large command result (process_data's can be tens of MiB)."""


def test_an_idle_thread_does_not_keep_the_last_result_alive():
    pool = CommandPool(size=2, queue_size=0)
    job = pool.submit(Result)
    result = job.result(timeout=5)
    alive = weakref.ref(result)
    del job, result
    deadline = time.monotonic() + 2  # the thread finishes its bookkeeping after the waiter wakes
    while alive() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    assert alive() is None


def test_results_and_exceptions_reach_the_waiter():
    pool = CommandPool(size=1, queue_size=1)
    assert pool.submit(lambda: 42).result(timeout=5) == 42

    def fail():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        pool.submit(fail).result(timeout=5)


def test_a_full_pool_refuses_and_a_slow_job_times_out_its_waiter():
    pool = CommandPool(size=1, queue_size=0)
    release = threading.Event()
    slow = pool.submit(release.wait)
    with pytest.raises(PoolFull):
        pool.submit(lambda: None)
    with pytest.raises(TimeoutError):
        slow.result(timeout=0.05)
    release.set()
    assert slow.result(timeout=5) is True
    assert pool.submit(lambda: "room again", wait=5).result(timeout=5) == "room again"
