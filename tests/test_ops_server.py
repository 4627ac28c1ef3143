"""Operations across real gunicorn workers: exact limits, metrics, Redis, diagnostics,
graceful stop and reload."""

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.test_engine_server import SPREAD, pids_serving
from tests.test_metrics import sample


@pytest.fixture
def ops_server(plugin_dist, server_factory, keys):
    def start(workers=4, **env):
        env.setdefault("GUNICORN_CMD_ARGS", SPREAD)
        return server_factory(workers=workers, PYTHONPATH=str(plugin_dist.root), **env)

    return start


def execute(server, keys, body, role="user"):
    return requests.post(
        server.url + "/mcp/execute", json=body, headers=keys.headers(role), timeout=10
    )


def test_150_calls_on_one_key_over_4_workers_give_exactly_100_and_50(ops_server, keys):
    server = ops_server(workers=4)
    with ThreadPoolExecutor(8) as pool:
        responses = list(
            pool.map(
                lambda _: execute(server, keys, {"action": "pid", "params": {"seconds": 0.05}}),
                range(150),
            )
        )
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 100, 429: 50}
    pids = {r.json()["result"]["pid"] for r in responses if r.status_code == 200}
    assert len(pids) >= 2, "the calls should have reached several workers"
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "RATE_LIMITED"
    assert int(refused.headers["Retry-After"]) > 0
    assert refused.headers["X-RateLimit-Limit"] == "100"
    assert refused.headers["X-RateLimit-Remaining"] == "0"


def test_metrics_add_up_over_workers_and_survive_a_replaced_worker(ops_server, keys):
    server = ops_server(workers=3)
    pids = pids_serving(server, keys, 30)
    assert len(pids) >= 2
    text = requests.get(server.url + "/metrics", timeout=5).text
    assert sample(text, "waygate_commands_total", action="pid", status="success") == 30
    assert (
        sample(text, "waygate_requests_total", method="POST", endpoint="/mcp/execute", status="200")
        == 30
    )
    os.kill(next(iter(pids)), signal.SIGKILL)
    deadline = time.monotonic() + 15
    while len(server.worker_pids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    text = requests.get(server.url + "/metrics", timeout=5).text
    assert sample(text, "waygate_commands_total", action="pid", status="success") == 30
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_diagnostics_count_every_worker(ops_server, keys):
    server = ops_server(workers=3)
    admin = keys.headers("admin")
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda _: requests.get(server.url + "/health", timeout=5), range(20)))
        statuses = set(
            pool.map(
                lambda _: (
                    execute(
                        server, keys, {"action": "boom", "params": {"seconds": 0.2}}
                    ).status_code
                ),
                range(9),
            )
        )
    assert statuses == {500}
    time.sleep(1.2)  # every worker writes its recent response times once a second
    perf = requests.get(server.url + "/diagnostics/performance", headers=admin, timeout=10).json()
    assert len(perf["processes"]["workers"]) == 3
    assert perf["processes"]["master"]["pid"] == server.proc.pid
    assert perf["threads"] >= 3 * 2
    assert perf["response_times"]["samples"] >= 29
    conn = requests.get(server.url + "/diagnostics/connection", headers=admin, timeout=5).json()
    assert conn["port"] == server.port
    assert conn["network"]["listening_on"] == f"127.0.0.1:{server.port}"
    assert conn["connections"]["total"] >= 31
    assert conn["connections"]["active"] >= 1  # this very request
    assert conn["connections"]["max"] == 3 * 2  # workers x --worker-connections
    errors = requests.get(
        server.url + "/diagnostics/errors?limit=100", headers=admin, timeout=5
    ).json()
    assert errors["total"] == 9
    assert len({e["worker_pid"] for e in errors["errors"]}) >= 2


def test_redis_backed_limits_are_exact_across_workers(ops_server, keys, redis_server):
    uri, _ = redis_server
    server = ops_server(
        workers=3, WAYGATE_RATELIMIT_STORAGE_URI=uri, WAYGATE_RATE_LIMIT_EXECUTE="20/minute"
    )
    with ThreadPoolExecutor(6) as pool:
        statuses = Counter(
            pool.map(lambda _: execute(server, keys, {"action": "pid"}).status_code, range(30))
        )
    assert statuses == {200: 20, 429: 10}


def test_redis_down_fails_open_and_health_names_cache(ops_server, keys, redis_server):
    uri, proc = redis_server
    server = ops_server(workers=2, WAYGATE_RATELIMIT_STORAGE_URI=uri)
    assert execute(server, keys, {"action": "pid"}).status_code == 200
    proc.kill()
    proc.wait()
    assert execute(server, keys, {"action": "pid"}).status_code == 200  # fail open
    health = requests.get(server.url + "/health", timeout=10)
    assert health.status_code == 503
    assert health.json()["checks"]["cache"].startswith("failed")


def test_redis_down_fails_closed_when_configured(ops_server, keys, redis_server):
    uri, proc = redis_server
    server = ops_server(
        workers=1, WAYGATE_RATELIMIT_STORAGE_URI=uri, WAYGATE_RATELIMIT_FAIL_OPEN="false"
    )
    proc.kill()
    proc.wait()
    response = execute(server, keys, {"action": "pid"})
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"


def test_sigterm_turns_ready_to_503_and_lets_in_flight_requests_finish(ops_server, keys):
    server = ops_server(workers=1, WAYGATE_DRAIN_SECONDS="2")
    result = {}
    slow = threading.Thread(
        target=lambda: result.update(
            response=execute(server, keys, {"action": "sleep", "params": {"seconds": 1.5}})
        )
    )
    slow.start()
    time.sleep(0.3)
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    ready = requests.get(server.url + "/ready", timeout=5)
    assert ready.status_code == 503
    assert ready.json()["error"]["details"] == {"state": "draining"}
    slow.join()
    assert result["response"].status_code == 200
    assert server.proc.wait(timeout=15) == 0


def test_sighup_replaces_workers_without_a_failed_request(ops_server, keys):
    server = ops_server(workers=2, WAYGATE_RATE_LIMIT_HEALTH="1000000/minute")
    before = set(server.worker_pids())
    failures, statuses = [], Counter()
    stop = threading.Event()

    def load():
        while not stop.is_set():
            try:
                statuses[requests.get(server.url + "/health", timeout=10).status_code] += 1
            except requests.RequestException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        now = set(server.worker_pids())
        if len(now) == 2 and not now & before:
            break
        time.sleep(0.1)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert not set(server.worker_pids()) & before, "the workers should have been replaced"
    assert failures == []
    assert set(statuses) == {200} and sum(statuses.values()) > 20


def cpus_of(pid):
    """The CPUs each thread of ``pid`` may run on."""
    masks = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status") as status:
            for line in status:
                if line.startswith("Cpus_allowed_list:"):
                    masks.append(line.split(":", 1)[1].strip())
    return masks


def cpu_list(cpus):
    return ",".join(str(c) for c in sorted(cpus))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_workers_are_spread_over_the_cpus_and_a_replacement_takes_the_free_one(server_factory):
    allowed = sorted(os.sched_getaffinity(0))
    server = server_factory(workers=len(allowed))
    pinned = {pid: cpus_of(pid) for pid in server.worker_pids()}
    # every thread of a worker (request threads, command pool) is on its worker's one CPU
    assert all(len(set(masks)) == 1 for masks in pinned.values())
    assert sorted(int(masks[0]) for masks in pinned.values()) == allowed
    victim = next(iter(pinned))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        pids = set(server.worker_pids())
        if victim not in pids and len(pids) == len(allowed):
            break
        time.sleep(0.1)
    (replacement,) = set(server.worker_pids()) - set(pinned)
    time.sleep(0.5)  # its threads start with the app
    assert set(cpus_of(replacement)) == set(pinned[victim])


def assert_unpinned(server):
    everywhere = cpu_list(os.sched_getaffinity(0))
    for pid in server.worker_pids():
        masks = cpus_of(pid)
        # /proc writes ranges ("0-1"); compare as sets of CPUs
        assert {expand(m) for m in masks} == {everywhere}


def test_pinning_can_be_turned_off(server_factory):
    assert_unpinned(server_factory(workers=2, WAYGATE_PIN_WORKERS="false"))


def test_more_workers_than_cpus_are_left_to_the_kernel(server_factory):
    # pinned, a worker waits for its CPU while another CPU idles (bench/README.md)
    assert_unpinned(server_factory(workers=len(os.sched_getaffinity(0)) + 1))


def expand(mask):
    cpus = set()
    for part in mask.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpu_list(cpus)
