"""POST /mcp/execute: the MCPCommand and MCPResponse models, timeouts, failures, the pool,
batch and async execution, and the audit log they leave."""

import re
import threading
import time

import pytest

from tests.test_http import assert_envelope

pytestmark = pytest.mark.both_backends

RESPONSE_KEYS = {"status", "result", "error", "duration_ms", "command_id", "timestamp"}


@pytest.fixture
def engine(plugin_dist, make_app, keys):
    """An app that also has the Testing plugin (sleep, stuck, boom, pid)."""

    def build(**overrides):
        return make_app(**overrides).test_client()

    return build


@pytest.fixture
def api(engine, keys):
    client = engine()
    post_app = client.application

    def post(body, role="user", **kwargs):
        return client.post("/mcp/execute", json=body, headers=keys.headers(role), **kwargs)

    post.client = client
    post.services = post_app.extensions["waygate"]
    return post


@pytest.fixture
def app_services(api):
    return api.services


def test_success_is_the_mcp_response_model(api):
    response = api({"action": "test", "params": {"message": "Hello, Waygate!"}})
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == RESPONSE_KEYS
    assert body["status"] == "success" and body["error"] is None
    assert body["result"]["received"] == "Hello, Waygate!"
    assert isinstance(body["duration_ms"], int)
    assert re.fullmatch(r"cmd_[0-9a-f]{32}", body["command_id"])
    assert re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z$", body["timestamp"])


def test_command_ids_are_unique(api):
    ids = {
        api({"action": "echo", "params": {"message": "x"}}).get_json()["command_id"]
        for _ in range(20)
    }
    assert len(ids) == 20


def test_execute_without_a_key_is_401(engine):
    assert_envelope(engine().post("/mcp/execute", json={"action": "test"}), 401, "UNAUTHORIZED")


@pytest.mark.parametrize(
    "body, code, field",
    [
        ({"params": {}}, "MISSING_PARAMETER", "action"),
        ({"action": "test", "timeout": 0}, "INVALID_REQUEST", "timeout"),
        ({"action": "test", "timeout": 301}, "INVALID_REQUEST", "timeout"),
        ({"action": "test", "timeout": "30"}, "INVALID_REQUEST", "timeout"),
        ({"action": "test", "params": "message"}, "INVALID_REQUEST", "params"),
        ({"action": "test", "context": []}, "INVALID_REQUEST", "context"),
        ({"action": 7}, "INVALID_REQUEST", "action"),
    ],
)
def test_invalid_commands_are_400_with_per_field_details(api, body, code, field):
    error = assert_envelope(api(body), 400, code)
    assert field in error["details"]["fields"]


def test_a_command_must_be_an_object(api):
    assert_envelope(api("test"), 400, "INVALID_REQUEST")


def test_unknown_action_lists_the_available_commands(api):
    error = assert_envelope(api({"action": "launch_rockets"}), 400, "INVALID_REQUEST")
    assert error["details"]["action"] == "launch_rockets"
    assert {"test", "echo", "status", "process_data", "analyze", "sleep"} <= set(
        error["details"]["available"]
    )


def test_missing_params_are_missing_parameter_with_details(api):
    error = assert_envelope(api({"action": "echo", "params": {}}), 400, "MISSING_PARAMETER")
    assert error["details"]["params"] == {"message": ["Missing data for required field."]}


def test_unknown_and_mistyped_params_are_invalid_request(api):
    error = assert_envelope(
        api({"action": "echo", "params": {"message": 5, "extra": 1}}), 400, "INVALID_REQUEST"
    )
    assert set(error["details"]["params"]) == {"message", "extra"}


def test_a_handler_that_raises_is_500_failed_with_its_message(api):
    response = api({"action": "boom"})
    assert response.status_code == 500
    body = response.get_json()
    assert set(body) == RESPONSE_KEYS
    assert body["status"] == "failed" and body["error"] == "kaboom"
    assert "Traceback" not in response.get_data(as_text=True)


@pytest.mark.parametrize("action", ["sleep", "stuck"])
def test_timeout_is_408_within_the_timeout_plus_half_a_second(api, action):
    started = time.monotonic()
    response = api({"action": action, "params": {"seconds": 3}, "timeout": 1})
    elapsed = time.monotonic() - started
    assert response.status_code == 408
    body = response.get_json()
    assert body["status"] == "timeout" and "timeout of 1 s" in body["error"]
    assert 1.0 <= elapsed < 1.5


def test_a_full_pool_is_503_with_retry_after(engine, keys):
    client = engine(pool_size=1, pool_queue=0)
    blocker = threading.Thread(
        target=client.post,
        args=("/mcp/execute",),
        kwargs={"json": {"action": "stuck", "params": {"seconds": 1.0}}, "headers": keys.headers()},
    )
    blocker.start()
    time.sleep(0.2)
    health = client.get("/health").get_json()
    assert health["pool"]["in_use"] == 1 and health["pool"]["available"] == 0
    response = client.post(
        "/mcp/execute", json={"action": "echo", "params": {"message": "x"}}, headers=keys.headers()
    )
    assert_envelope(response, 503, "SERVICE_UNAVAILABLE")
    assert response.headers["Retry-After"] == "1"
    blocker.join()
    assert (
        client.post(
            "/mcp/execute",
            json={"action": "echo", "params": {"message": "x"}},
            headers=keys.headers(),
        ).status_code
        == 200
    )


def test_a_timed_out_stuck_handler_keeps_its_thread_counted(engine, keys):
    client = engine(pool_size=2, pool_queue=0)
    response = client.post(
        "/mcp/execute",
        json={"action": "stuck", "params": {"seconds": 1.5}, "timeout": 1},
        headers=keys.headers(),
    )
    assert response.status_code == 408
    assert client.get("/health").get_json()["pool"]["in_use"] == 1
    time.sleep(0.7)
    assert client.get("/health").get_json()["pool"]["in_use"] == 0


# -- batch -------------------------------------------------------------------------------------


def test_batch_answers_in_order_with_a_failed_response_for_an_invalid_item(api):
    response = api(
        [
            {"action": "echo", "params": {"message": "one"}},
            {"action": "no_such_command"},
            {"action": "echo", "params": {}},
            "not an object",
            {"action": "echo", "params": {"message": "two"}},
        ]
    )
    assert response.status_code == 200
    items = response.get_json()
    assert [i["status"] for i in items] == ["success", "failed", "failed", "failed", "success"]
    assert items[0]["result"] == {"result": "one"} and items[4]["result"] == {"result": "two"}
    assert "unknown action" in items[1]["error"]
    assert "MISSING_PARAMETER" in items[2]["error"]
    assert all(set(i) == RESPONSE_KEYS for i in items)


def test_batch_items_run_concurrently(api):
    started = time.monotonic()
    response = api([{"action": "sleep", "params": {"seconds": 0.5}} for _ in range(4)])
    assert [i["status"] for i in response.get_json()] == ["success"] * 4
    assert time.monotonic() - started < 1.5


def test_a_batch_larger_than_the_pool_still_completes(engine, keys):
    client = engine(pool_size=2, pool_queue=0)
    response = client.post(
        "/mcp/execute",
        headers=keys.headers(),
        json=[{"action": "echo", "params": {"message": str(i)}} for i in range(10)],
    )
    assert [i["result"]["result"] for i in response.get_json()] == [str(i) for i in range(10)]


def test_an_oversize_batch_is_400(engine, keys):
    client = engine(batch_max=3)
    response = client.post("/mcp/execute", headers=keys.headers(), json=[{"action": "test"}] * 4)
    error = assert_envelope(response, 400, "INVALID_REQUEST")
    assert error["details"] == {"max_items": 3, "items": 4}


def test_an_empty_batch_is_400(api):
    assert_envelope(api([]), 400, "INVALID_REQUEST")


# -- async -------------------------------------------------------------------------------------


def poll(client, location, headers, until=("success", "failed", "timeout"), within=5.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        body = client.get(location, headers=headers).get_json()
        if body["status"] in until:
            return body
        time.sleep(0.05)
    raise AssertionError(f"still {body['status']} after {within} s")


def test_async_is_202_with_location_then_the_result(api, keys):
    response = api({"action": "sleep", "params": {"seconds": 0.3}, "async": True})
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "pending"
    assert response.headers["Location"] == f"/mcp/executions/{body['command_id']}"
    early = api.client.get(response.headers["Location"], headers=keys.headers()).get_json()
    assert early["status"] in ("pending", "running")
    done = poll(api.client, response.headers["Location"], keys.headers())
    assert done["status"] == "success" and done["result"] == {"slept": 0.3}
    assert done["command_id"] == body["command_id"]


def test_a_polled_async_execution_shows_its_latest_progress(api, keys):
    location = api(
        {"action": "steps", "params": {"count": 3, "pause": 0.6}, "async": True}
    ).headers["Location"]
    deadline = time.monotonic() + 10
    seen = []
    while time.monotonic() < deadline:
        body = api.client.get(location, headers=keys.headers()).get_json()
        if body["status"] == "success":
            break
        if "progress" in body:
            seen.append(body["progress"])
        time.sleep(0.1)
    assert body["status"] == "success" and "progress" not in body
    assert seen and seen[0]["total"] == 3 and seen[0]["message"].startswith("step ")
    assert [p["progress"] for p in seen] == sorted(p["progress"] for p in seen)


def test_async_failure_is_reported(api, keys):
    location = api({"action": "boom", "async": True}).headers["Location"]
    done = poll(api.client, location, keys.headers())
    assert done["status"] == "failed" and done["error"] == "kaboom"


def test_an_async_command_past_its_timeout_ends_as_timeout(api, keys):
    location = api(
        {"action": "sleep", "params": {"seconds": 3}, "timeout": 1, "async": True}
    ).headers["Location"]
    done = poll(api.client, location, keys.headers())
    assert done["status"] == "timeout"


def test_another_users_execution_is_not_found_but_admins_see_it(api, keys):
    keys.store.create("someone-else", "user")
    location = api({"action": "test", "async": True}, role="admin").headers["Location"]
    assert_envelope(api.client.get(location, headers=keys.headers("user")), 404, "NOT_FOUND")
    assert api.client.get(location, headers=keys.headers("admin")).status_code == 200


def test_unknown_execution_is_404(api, keys):
    assert_envelope(
        api.client.get("/mcp/executions/cmd_nope", headers=keys.headers()), 404, "NOT_FOUND"
    )


def test_an_execution_whose_worker_died_is_failed_with_a_reason(api, keys, app_services):
    command_id = "cmd_from_a_dead_worker"
    app_services.audit.accept(
        command_id=command_id,
        action="sleep",
        plugin="Testing",
        key_name="ops-user",
        key_id=keys.store.authenticate(keys.user).id,
        timeout_s=300,
        created_at="2026-01-01T00:00:00.000Z",
    )
    app_services.storage.conn.execute(
        "UPDATE executions SET worker_pid = 999999999 WHERE command_id = ?", (command_id,)
    )
    body = api.client.get(f"/mcp/executions/{command_id}", headers=keys.headers()).get_json()
    assert body["status"] == "failed"
    assert "worker (pid 999999999)" in body["error"]
