"""The one execution path: who owns an execution, deadlines in batches, admission control under
a flood of slow commands, and the MCP tool timeout."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests


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
    assert statuses <= {"success", "timeout", "failed"}
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


def test_command_requests_beyond_the_admission_cap_are_refused_at_once(plugin_dist, make_app, keys):
    from waygate.metrics import counter_total

    app = make_app(command_requests=2)
    refused_before = counter_total("waygate_admission_refused_total")
    client_calls = []

    def call(_):
        with app.test_client() as c:
            started = time.monotonic()
            answer = c.post(
                "/mcp/execute",
                json={"action": "stuck", "params": {"seconds": 1}, "timeout": 3},
                headers=keys.headers(),
            )
            client_calls.append((answer.status_code, time.monotonic() - started, answer))

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(call, range(6)))
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

    def call(_):
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
                    headers={**keys.headers(), "MCP-Protocol-Version": "2025-06-18"},
                )
            )

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(call, range(3)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 503, 503], codes
    refused = next(a for a in answers if a.status_code == 503)
    assert refused.headers["Retry-After"] == "1"
    body = refused.get_json()
    assert body["id"] == 7 and body["error"]["data"]["code"] == "SERVICE_UNAVAILABLE"


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
    assert codes <= {408, 503}, codes
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
