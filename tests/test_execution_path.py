"""The one execution path: who owns an execution, deadlines in batches, admission control under
a flood of slow commands, and the MCP tool timeout."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = pytest.mark.both_backends


@pytest.fixture
def testing_client(plugin_dist, make_app):
    return make_app().test_client()


def test_a_new_key_with_a_revoked_keys_name_cannot_read_its_executions(testing_client, keys):
    _, alice = keys.store.create("alice", "user")
    accepted = testing_client.post(
        "/mcp/execute",
        json={"action": "echo", "params": {"message": "secret"}, "async": True},
        headers={"X-API-Key": alice},
    )
    location = accepted.headers["Location"]
    time.sleep(0.3)
    assert testing_client.get(location, headers={"X-API-Key": alice}).status_code == 200
    keys.store.revoke("alice")
    _, new_alice = keys.store.create("alice", "user")
    answer = testing_client.get(location, headers={"X-API-Key": new_alice})
    assert answer.status_code == 404
    assert "secret" not in answer.get_data(as_text=True)
    # an admin still sees it, with the key id that owns it
    admin_view = testing_client.get("/mcp/executions?action=echo", headers=keys.headers("admin"))
    (row,) = admin_view.get_json()["executions"]
    assert row["key_name"] == "alice"
    assert row["key_id"] != keys.store.authenticate(new_alice).id


def test_every_batch_item_is_answered_by_its_own_deadline(testing_client, keys):
    # Twice as many slow items as the pool holds (8 threads + 16 queued) and more: each has
    # 1 s; the ones that cannot finish in time are timeouts, none a late success.
    batch = [{"action": "stuck", "params": {"seconds": 0.6}, "timeout": 1} for _ in range(40)]
    started = time.monotonic()
    answer = testing_client.post("/mcp/execute", json=batch, headers=keys.headers())
    elapsed = time.monotonic() - started
    assert answer.status_code == 200
    items = answer.get_json()
    assert len(items) == 40
    assert elapsed < 1 + 1.0, elapsed  # the longest item timeout plus slack
    statuses = {item["status"] for item in items}
    assert statuses <= {"success", "timeout"}  # no room in the pool by its deadline: a timeout
    for item in items:
        if item["status"] == "success":
            assert item["duration_ms"] <= 1000, item
    assert any(item["status"] == "success" for item in items)
    assert any(item["status"] != "success" for item in items)


def test_a_batch_item_is_timed_by_its_own_job_not_by_when_it_was_collected(testing_client, keys):
    batch = [
        {"action": "stuck", "params": {"seconds": 0.5}, "timeout": 5},
        {"action": "echo", "params": {"message": "quick"}},
    ]
    items = testing_client.post("/mcp/execute", json=batch, headers=keys.headers()).get_json()
    assert [i["status"] for i in items] == ["success", "success"]
    assert items[1]["duration_ms"] < 300, items[1]


def user_keys(keys, count: int) -> list[dict]:
    """``count`` more user keys' headers (each key holds at most its share of the slots)."""
    return [{"X-API-Key": keys.store.create(f"caller-{n}", "user")[1]} for n in range(count)]


def test_command_requests_beyond_the_admission_cap_are_refused_at_once(plugin_dist, make_app, keys):
    from waygate.metrics import counter_total

    app = make_app(command_requests=2)
    refused_before = counter_total("waygate_admission_refused_total")
    client_calls = []

    def call(headers):
        with app.test_client() as c:
            started = time.monotonic()
            answer = c.post(
                "/mcp/execute",
                json={"action": "stuck", "params": {"seconds": 1}, "timeout": 3},
                headers=headers,
            )
            client_calls.append((answer.status_code, time.monotonic() - started, answer))

    with ThreadPoolExecutor(6) as pool:  # six keys, one call each: none over its own share
        list(pool.map(call, user_keys(keys, 6)))
    codes = sorted(code for code, _, _ in client_calls)
    assert codes == [200, 200, 503, 503, 503, 503], codes
    for code, waited, answer in client_calls:
        if code == 503:
            assert waited < 0.5, waited
            assert answer.headers["Retry-After"] == "1"
            assert answer.get_json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert counter_total("waygate_admission_refused_total") - refused_before == 4
    assert "waygate_admission_refused_total" in app.test_client().get("/metrics").get_data(
        as_text=True
    )


def test_mcp_tool_calls_beyond_the_cap_are_503_with_retry_after(plugin_dist, make_app, keys):
    app = make_app(command_requests=1)
    answers = []

    def call(headers):
        with app.test_client() as c:
            answers.append(
                c.post(
                    "/mcp",
                    json={
                        "jsonrpc": "2.0",
                        "id": 7,
                        "method": "tools/call",
                        "params": {"name": "stuck", "arguments": {"seconds": 1}},
                    },
                    headers={**headers, "MCP-Protocol-Version": "2025-06-18"},
                )
            )

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(call, user_keys(keys, 3)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 503, 503], codes
    refused = next(a for a in answers if a.status_code == 503)
    assert refused.headers["Retry-After"] == "1"
    body = refused.get_json()
    assert body["id"] == 7 and body["error"]["data"]["code"] == "SERVICE_UNAVAILABLE"


def _until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_one_key_holds_at_most_its_share_of_a_workers_command_slots(
    plugin_dist, make_app, keys, caplog
):
    """4 slots, 2 per key: a key's third concurrent call is 429 at once while another key's
    calls are still admitted; a batch and an MCP tool call count alike."""
    app = make_app(command_requests=4)
    flooder, other = user_keys(keys, 2)
    held = {"action": "sleep", "params": {"seconds": 1.5}, "timeout": 5}
    answers = []

    def call(body):
        with app.test_client() as c:
            answers.append(c.post("/mcp/execute", json=body, headers=flooder))

    with ThreadPoolExecutor(6) as pool:
        floods = [pool.submit(call, held) for _ in range(2)]
        _until(lambda: app.extensions["waygate"].commands.pool.stats().in_use == 2)
        refused = [pool.submit(call, body) for body in (held, [held], {"action": "test"})]
        for f in refused:
            f.result()
        assert [a.status_code for a in answers] == [429, 429, 429]
        with app.test_client() as c:  # the other key is admitted meanwhile
            started = time.monotonic()
            echo = {"action": "echo", "params": {"message": "mine"}}
            assert c.post("/mcp/execute", json=echo, headers=other).status_code == 200
            assert c.post("/mcp/execute", json=[echo, echo], headers=other).status_code == 200
            assert time.monotonic() - started < 1
            tool = c.post(
                "/mcp",
                json={
                    "jsonrpc": "2.0",
                    "id": 3,
                    "method": "tools/call",
                    "params": {"name": "echo", "arguments": {"message": "x"}},
                },
                headers={**flooder, "MCP-Protocol-Version": "2025-06-18"},
            )
        for f in floods:
            f.result()
    for answer in answers[:3]:
        error = answer.get_json()["error"]
        assert error["code"] == "RATE_LIMITED"
        assert error["details"] == {"key_share": 2, "worker_slots": 4}
        assert answer.headers["Retry-After"] == "1"
    assert sorted(a.status_code for a in answers[3:]) == [200, 200]
    assert tool.status_code == 429 and tool.headers["Retry-After"] == "1"
    rpc_error = tool.get_json()
    assert rpc_error["id"] == 3 and rpc_error["error"]["data"]["code"] == "RATE_LIMITED"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    errors = app.test_client().get("/diagnostics/errors", headers=keys.headers("admin"))
    assert errors.get_json()["total"] == 0
    # the slots came back: the flooder is admitted again
    echo = {"action": "echo", "params": {"message": "again"}}
    assert app.test_client().post("/mcp/execute", json=echo, headers=flooder).status_code == 200


def test_a_burst_over_a_keys_share_waits_for_its_own_quick_calls(plugin_dist, make_app, keys):
    """4 slots, 2 per key: a third call while the key's two quick ones run is not refused, it
    waits (briefly) for one of them to end; quick bursts that land on one worker all pass."""
    app = make_app(command_requests=4)
    (caller,) = user_keys(keys, 1)
    quick = {"action": "sleep", "params": {"seconds": 0.1}, "timeout": 5}

    def call(_):
        with app.test_client() as c:
            return c.post("/mcp/execute", json=quick, headers=caller).status_code

    with ThreadPoolExecutor(3) as pool:
        codes = list(pool.map(call, range(3)))
    assert codes == [200, 200, 200]


@pytest.mark.sqlite_only
def test_one_key_holding_60_hung_calls_leaves_another_keys_calls_answered(
    plugin_dist, server_factory, keys
):
    """The hold-out check on real gunicorn, 2 workers, default settings: while one key holds
    60 hung calls (REST and MCP), another key's 10 echo calls all succeed within 1 s."""
    server = server_factory(
        workers=2, PYTHONPATH=str(plugin_dist.root), WAYGATE_RATE_LIMIT_EXECUTE="10000/minute"
    )
    flooder, other = user_keys(keys, 2)
    hung: list[int] = []

    def hang(n):
        if n % 2:
            answer = requests.post(
                server.url + "/mcp/execute",
                json={"action": "wait", "params": {"seconds": 6}, "timeout": 10},
                headers=flooder,
                timeout=30,
            )
        else:
            answer = requests.post(
                server.url + "/mcp",
                json={
                    "jsonrpc": "2.0",
                    "id": n,
                    "method": "tools/call",
                    "params": {"name": "wait", "arguments": {"seconds": 6}},
                },
                headers={**flooder, "MCP-Protocol-Version": "2025-06-18"},
                timeout=30,
            )
        hung.append(answer.status_code)
        return answer

    def echo(n):
        started = time.monotonic()
        answer = requests.post(
            server.url + "/mcp/execute",
            json={"action": "echo", "params": {"message": f"m{n}"}},
            headers=other,
            timeout=10,
        )
        return answer.status_code, time.monotonic() - started

    with ThreadPoolExecutor(70) as pool:
        flood = [pool.submit(hang, n) for n in range(60)]
        # the refusals come at once (at least 60 - 2 x 14, even with no share at all); once
        # they have stopped coming, whatever is admitted is held
        _until(lambda: len(hung) >= 60 - 2 * 14, seconds=5)
        seen = -1
        while seen != len(hung):
            seen = len(hung)
            time.sleep(0.3)
        assert len(hung) < 60  # still holding
        started = time.monotonic()
        echoes = list(pool.map(echo, range(10)))
        elapsed = time.monotonic() - started
        answers = [f.result() for f in flood]
    assert [code for code, _ in echoes] == [200] * 10, echoes
    assert elapsed < 1, (elapsed, echoes)
    codes = sorted(a.status_code for a in answers)
    # each worker admits the key its share, 7 (14 when both took at least 7 of the 60);
    # beyond it 429, never a 503 of a full worker
    assert set(codes) == {200, 429} and 7 <= codes.count(200) <= 2 * 7, codes
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["Retry-After"] == "1"
    assert " ERROR " not in server.log()


def test_a_flood_of_stuck_commands_leaves_health_answering_fast(plugin_dist, server_factory, keys):
    """84 concurrent calls of a command that ignores its 2 s deadline (sleeps 3 s) against 3
    real gthread workers: no caller waits past its deadline plus 1 s, and /health keeps
    answering within 100 ms meanwhile."""
    server = server_factory(
        workers=3, PYTHONPATH=str(plugin_dist.root), WAYGATE_RATE_LIMIT_EXECUTE="10000/minute"
    )
    waits: list[tuple[int, float]] = []

    def flood(_):
        started = time.monotonic()
        try:
            code = requests.post(
                server.url + "/mcp/execute",
                json={"action": "stuck", "params": {"seconds": 3}, "timeout": 2},
                headers=keys.headers(),
                timeout=10,
            ).status_code
        except requests.RequestException:
            code = 0
        waits.append((code, time.monotonic() - started))

    health: list[float] = []

    def probe():
        time.sleep(0.5)  # the flood is in place
        end = time.monotonic() + 2
        while time.monotonic() < end:
            started = time.monotonic()
            assert requests.get(server.url + "/health", timeout=5).status_code in (200, 503)
            health.append(time.monotonic() - started)
            time.sleep(0.05)

    with ThreadPoolExecutor(85) as pool:
        futures = [pool.submit(flood, n) for n in range(84)]
        prober = pool.submit(probe)
        for f in futures:
            f.result()
        prober.result()
    codes = {code for code, _ in waits}
    assert codes <= {408, 429, 503}, codes  # 429: the key's own share of a worker's slots
    assert max(w for _, w in waits) < 2 + 1, sorted(w for _, w in waits)[-5:]
    health.sort()
    assert health[len(health) // 2] < 0.1, health
    assert health[-1] < 0.5, health
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    refused = [
        line for line in metrics.splitlines() if line.startswith("waygate_admission_refused_total")
    ]
    assert refused and float(refused[0].split()[-1]) > 0


def test_mcp_tool_timeout_comes_from_config_and_a_client_may_ask_for_less(
    plugin_dist, make_app, keys
):
    app = make_app(mcp_tool_timeout=1, mcp_tool_timeout_max=2)
    client = app.test_client()

    def call(seconds, meta=None):
        params = {"name": "sleep", "arguments": {"seconds": seconds}}
        if meta:
            params["_meta"] = meta
        body = client.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params},
            headers={**keys.headers(), "MCP-Protocol-Version": "2025-06-18"},
        ).get_json()
        return body["result"]

    assert call(1.5)["isError"] is True  # the configured 1 s
    assert call(1.5, {"waygate/timeout": 2})["isError"] is False  # up to the maximum
    capped = call(2.5, {"waygate/timeout": 60})  # asked beyond the maximum: the maximum
    assert capped["isError"] is True and "timeout" in capped["content"][0]["text"]
    executions = client.get("/mcp/executions", headers=keys.headers("admin")).get_json()
    assert [e["timeout_s"] for e in executions["executions"]][:3] == [2, 2, 1]
    assert json.dumps(executions)  # plain JSON, statuses as strings


def _wait_done(client, location, headers, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        body = client.get(location, headers=headers).get_json()
        if body["status"] not in ("pending", "running"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"{location} still open")


@pytest.mark.sqlite_only
def test_large_async_results_are_stored_as_a_marked_preview(make_app, keys, data_dir):
    client = make_app(result_max_bytes=4096).test_client()
    rows = "host,cpu\n" + "".join(f"web{n},0.{n % 10}\n" for n in range(60_000))  # ~0.9 MB
    db = data_dir / "waygate.db"
    before = db.stat().st_size + (data_dir / "waygate.db-wal").stat().st_size
    locations = [
        client.post(
            "/mcp/execute",
            json={
                "action": "process_data",
                "params": {"input": rows, "format": "csv"},
                "async": True,
            },
            headers=keys.headers(),
        ).headers["Location"]
        for _ in range(3)
    ]
    for location in locations:
        body = _wait_done(client, location, keys.headers())
        assert body["status"] == "success"
        assert body["result"]["truncated"] is True
        assert body["result"]["max_bytes"] == 4096
        assert body["result"]["size_bytes"] > 1_000_000
        assert len(body["result"]["preview"]) <= 2048
    after = db.stat().st_size + (data_dir / "waygate.db-wal").stat().st_size
    assert after - before < 512 * 1024, after - before  # not three megabyte-sized results


def test_a_key_may_have_only_so_many_async_executions_open(plugin_dist, make_app, keys):
    client = make_app(async_max_open_per_key=2).test_client()
    slow = {"action": "sleep", "params": {"seconds": 1}, "timeout": 5, "async": True}
    answers = [client.post("/mcp/execute", json=slow, headers=keys.headers()) for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 429]
    refused = answers[2]
    assert refused.headers["Retry-After"] == "1"
    assert refused.get_json()["error"]["code"] == "RATE_LIMITED"
    assert refused.get_json()["error"]["details"]["max_open"] == 2
    # another key is not held back by this one's executions
    assert client.post("/mcp/execute", json=slow, headers=keys.headers("admin")).status_code == 202
    _wait_done(client, answers[0].headers["Location"], keys.headers())
    _wait_done(client, answers[1].headers["Location"], keys.headers())
    assert client.post("/mcp/execute", json=slow, headers=keys.headers()).status_code == 202


@pytest.mark.sqlite_only
def test_the_audit_database_is_pruned_oldest_first_to_its_budget(app_services_of, make_app):
    app = make_app(audit_max_bytes=2 * 1024 * 1024)
    services = app_services_of(app.test_client())
    audit = services.audit
    for n in range(400):  # ~4 MB of finished executions, oldest first
        audit.record(
            command_id=f"cmd_{n:05d}",
            action="echo",
            plugin="Core",
            key_name="k",
            mode="sync",
            status="failed",
            duration_ms=1,
            error="x" * 10_000,
            timeout_s=30,
            created_at=f"2026-01-01T00:{n // 60:02d}:{n % 60:02d}.000Z",
            started_at=None,
        )
    assert audit.storage.used_bytes() > 2 * 1024 * 1024
    services.housekeeper.run_once(prune=False)
    assert audit.storage.used_bytes() <= 2 * 1024 * 1024
    assert audit.get("cmd_00000") is None  # the oldest went first
    assert audit.get("cmd_00399") is not None  # the newest stayed


def plan_of(data_dir, query: str, params: tuple) -> str:
    """SQLite's plan for ``query`` on a migrated database, as one text."""
    from waygate.storage import SqliteStorage

    storage = SqliteStorage(data_dir / "waygate.db")
    storage.migrate()
    return " | ".join(
        row[-1] for row in storage.conn.execute("EXPLAIN QUERY PLAN " + query, params)
    )


def test_the_unfinished_executions_query_uses_the_partial_index(data_dir):
    from waygate import audit
    from waygate.outcomes import ExecutionStatus

    literal = " OR ".join(f"status = '{s.value}'" for s in ExecutionStatus.unfinished())
    assert f"({literal})" in audit._ACCEPT_SQL
    query = audit._ACCEPT_SQL.partition("WHERE (")[2].rpartition(") < ?")[0]
    assert "executions_unfinished_by_key" in plan_of(data_dir, query, (1,))


def test_the_chains_batch_finds_unchained_rows_by_the_partial_index(data_dir):
    from waygate import auditchain
    from waygate.outcomes import ExecutionStatus

    for status in ExecutionStatus.unfinished():
        assert f"status <> '{status.value}'" in auditchain._UNCHAINED
    query = auditchain._NUMBER_SQL.partition("FROM (")[2].partition(") AS numbered")[0]
    assert "executions_unchained" in plan_of(data_dir, query, (500,))


def test_an_audit_rows_indexes_and_triggers_build_no_temporary_b_tree(data_dir):
    """SQLite evaluates a constant IN list of three or more values through a temporary
    b-tree built each time the statement runs (m026): the conditions of the indexes and
    triggers the INSERT that records an execution runs must not."""
    from waygate.audit import AuditLog
    from waygate.storage import SqliteStorage

    storage = SqliteStorage(data_dir / "waygate.db")
    storage.migrate()
    ran = []  # the statement record() writes with
    grouped = storage.execute_grouped

    def recording(sql, params=()):
        ran.append((sql, params))
        grouped(sql, params)

    storage.execute_grouped = recording
    AuditLog(storage).record(
        command_id="cmd_1", action="echo", plugin="Core", key_name="k", mode="sync",
        status="success", duration_ms=1, error=None, timeout_s=30,
        created_at="2026-12-07T00:00:00.000Z", started_at=None,
    )  # fmt: skip
    ((sql, params),) = ran
    program = storage.conn.execute("EXPLAIN " + sql, params).fetchall()
    built = [row[4] for row in program if row[1] == "OpenEphemeral"]
    # only the table's two CHECK constraints' (mode, status): 3 us, not worth a rebuild
    assert len(built) == 2, program


def test_a_streamed_tool_call_takes_a_slot_of_its_callers_own_share():
    # a person with an access token has no key: their streamed tool calls (a progress token)
    # count against their own share, as every other call of theirs does, not against one
    # share for everybody without a key
    from waygate.admission import Admission
    from waygate.commands import Caller
    from waygate.mcp.server import ToolStream

    class Commands:
        admission = Admission(4, per_key=1)
        held: list = []

        def start(self, *args, **kwargs):
            self.held.append(dict(self.admission._held_by_key))
            raise RuntimeError("not run here")

    commands = Commands()
    for person in ("https://sso#alice", "https://sso#bob"):
        with pytest.raises(RuntimeError):
            ToolStream(commands, None, Caller("p", principal=person), 1, lambda r: r)
    assert commands.held == [{"https://sso#alice": 1}, {"https://sso#bob": 1}]
