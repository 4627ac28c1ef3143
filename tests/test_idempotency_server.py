"""Idempotency keys across real gunicorn workers: concurrent duplicates of one request, sent
over separate connections that the workers share, run exactly once (issue 31)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.test_engine_server import SPREAD
from tests.test_idempotency import MARK_PLUGIN, mark, runs

DUPLICATES = 8


@pytest.fixture
def server(plugin_dist, server_factory, tmp_path):
    plugin_dist.write_module("mark_plugin", MARK_PLUGIN)
    plugin_dist.register("Mark", "mark_plugin:Mark")
    return server_factory(
        workers=2,
        PYTHONPATH=str(plugin_dist.root),
        GUNICORN_CMD_ARGS=SPREAD,
        WAYGATE_IDEMPOTENCY_WAIT_S="1",
        WAYGATE_RATE_LIMIT_EXECUTE="10000/minute",
    )


def send_together(server, keys, body, key, n=DUPLICATES, role="user"):
    """``n`` identical requests released at once, each on its own connection."""
    start = threading.Barrier(n)

    def send(_):
        start.wait()
        return requests.post(
            server.url + "/mcp/execute",
            json=body,
            headers=keys.headers(role, **{"Idempotency-Key": key}),
            timeout=30,
        )

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(send, range(n)))


def audit(server, keys, action):
    listed = requests.get(
        f"{server.url}/mcp/executions?action={action}&limit=100",
        headers=keys.headers("admin"),
        timeout=10,
    ).json()
    return listed["executions"]


def test_concurrent_duplicates_on_two_workers_run_once(server, keys, tmp_path):
    marked = tmp_path / "marks.txt"
    # quick: the duplicates wait for the first (up to 1 s) and get its answer
    answers = send_together(server, keys, mark(marked, seconds=0.2), "quick")
    assert {a.status_code for a in answers} <= {200, 409}, [a.text for a in answers]
    done = [a.json() for a in answers if a.status_code == 200]
    assert len({d["command_id"] for d in done}) == 1 and done
    assert {d["result"]["runs"] for d in done} == {1}
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == len(done) - 1
    assert runs(marked) == 1
    # slow: the first outlasts the wait; the others are told to come back (409, Retry-After)
    slow_marks = tmp_path / "slow.txt"
    answers = send_together(server, keys, mark(slow_marks, seconds=2.5), "slow")
    # (a duplicate that found no free connection until the first had ended is replayed)
    assert {a.status_code for a in answers} == {200, 409}, [a.text for a in answers]
    ran = [a for a in answers if a.status_code == 200 and "Idempotent-Replayed" not in a.headers]
    assert len(ran) == 1
    first = ran[0].json()
    assert {a.json()["command_id"] for a in answers if a.status_code == 200} == {
        first["command_id"]
    }
    for answer in (a for a in answers if a.status_code == 409):
        assert answer.headers["Retry-After"] == "1"
        assert answer.json()["error"]["code"] == "IDEMPOTENCY_KEY_IN_PROGRESS"
        assert answer.json()["error"]["details"]["command_id"] == first["command_id"]
    assert runs(slow_marks) == 1
    # exactly one audit row per key, whichever worker ran it
    rows = audit(server, keys, "mark")
    assert sorted(r["command_id"] for r in rows) == sorted(
        {done[0]["command_id"], first["command_id"]}
    )
    # another caller's identical key is its own
    mine = send_together(server, keys, mark(marked, seconds=0.2), "quick", n=2, role="admin")
    assert {a.json()["command_id"] for a in mine if a.ok} != {done[0]["command_id"]}
    assert runs(marked) == 2


def test_a_held_request_sent_concurrently_opens_one_ticket(server, keys):
    wipe = {"action": "wipe", "params": {"target": "db1", "seconds": 0}}
    answers = send_together(server, keys, wipe, "wipe-once")
    held = [a.json() for a in answers if a.status_code == 202]
    assert {a.status_code for a in answers} <= {202, 409}
    assert held and {h["status"] for h in held} == {"awaiting_approval"}
    assert len({h["command_id"] for h in held}) == 1
    rows = audit(server, keys, "wipe")
    assert [r["command_id"] for r in rows] == [held[0]["command_id"]]
    events = requests.get(
        f"{server.url}/mcp/executions/{held[0]['command_id']}/events",
        headers=keys.headers("admin"),
        timeout=10,
    ).json()["events"]
    assert [e["event"] for e in events] == ["requested"]
    again = send_together(server, keys, wipe, "wipe-once", n=1)[0]  # a retry later
    assert again.status_code == 202 and again.json()["command_id"] == held[0]["command_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
