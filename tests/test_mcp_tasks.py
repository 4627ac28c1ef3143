"""MCP tasks for tools/call (issue 29 item 2): the io.modelcontextprotocol/tasks extension under
2026-07-28 and the experimental tasks of 2025-11-25, on the execution rows (m019), in-process
on both backends. Across real gunicorn workers: tests/test_mcp_tasks_server.py."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from waygate.retention import Retention

pytestmark = pytest.mark.both_backends

EXT = "io.modelcontextprotocol/tasks"
MODERN = "2026-07-28"
LEGACY = "2025-11-25"
WITH_EXT = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {"extensions": {EXT: {}}},
}
WITHOUT_EXT = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}
WEEK_MS = 7 * 86_400_000  # the default retention of executions


@pytest.fixture
def client(plugin_dist, make_app):
    plugin_dist.register(
        "ConformanceTasks", "tests.conformance_tasks_plugin:ConformanceTasksPlugin"
    )
    return make_app().test_client()


@pytest.fixture
def services(client, app_services_of):
    return app_services_of(client)


@pytest.fixture
def mcp(client, keys):
    """A 2026-07-28 request (with the extension unless told): its JSON body, or error."""

    def call(method, params=None, meta=WITH_EXT, key="user", name=None, id=1):
        params = dict(params or {})
        headers = {
            "Accept": "application/json, text/event-stream",
            "X-API-Key": getattr(keys, key),
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": method,
        }
        if method == "tools/call":
            headers["Mcp-Name"] = params["name"]
        elif method.startswith("tasks/") and isinstance(params.get("taskId"), str):
            headers["Mcp-Name"] = params["taskId"]
        if name is not None:
            headers["Mcp-Name"] = name
        body = {"jsonrpc": "2.0", "id": id, "method": method, "params": {**params, "_meta": meta}}
        return client.post("/mcp", json=body, headers=headers).get_json()

    return call


@pytest.fixture
def legacy(client, keys):
    """A 2025-11-25 request from a client that takes JSON only: its JSON body."""

    def call(method, params=None, key="user"):
        headers = {
            "Accept": "application/json",
            "X-API-Key": getattr(keys, key),
            "MCP-Protocol-Version": LEGACY,
        }
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}
        return client.post("/mcp", json=body, headers=headers).get_json()

    return call


def poll(mcp, task_id, until=("completed", "failed", "cancelled"), key="user", timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        task = mcp("tasks/get", {"taskId": task_id}, key=key)["result"]
        if task["status"] in until:
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} stayed {task['status']}")


def row(storage, command_id):
    return storage.conn.execute(
        "SELECT status, error, mode, task_ttl_ms, cancel_requested_at, decision_reason"
        " FROM executions WHERE command_id = ?",
        (command_id,),
    ).fetchone()


# -- the extension, 2026-07-28 -----------------------------------------------------------------


def test_a_call_of_a_task_supporting_tool_is_a_task_that_completes_with_its_result(mcp, storage):
    created = mcp("tools/call", {"name": "slow_compute", "arguments": {"seconds": 0.3}})["result"]
    assert created["resultType"] == "task" and created["status"] == "working"
    assert created["ttlMs"] == WEEK_MS and created["pollIntervalMs"] == 1000
    assert {"result", "error", "inputRequests", "task"}.isdisjoint(created)
    task_id = created["taskId"]
    assert task_id.startswith("cmd_")  # the task is the execution
    # durable before the answer: tasks/get resolves at once
    assert mcp("tasks/get", {"taskId": task_id})["result"]["taskId"] == task_id
    done = poll(mcp, task_id)
    assert done["status"] == "completed" and done["resultType"] == "complete"
    assert done["result"]["structuredContent"]["seconds"] == 0.3
    assert done["result"]["isError"] is False
    assert done["lastUpdatedAt"] >= done["createdAt"]
    stored = row(storage, task_id)
    assert stored["status"] == "success" and stored["mode"] == "async"
    assert stored["task_ttl_ms"] == WEEK_MS


def test_a_tool_error_is_a_completed_task_whose_result_is_an_error(mcp):
    created = mcp("tools/call", {"name": "failing_job", "arguments": {}})["result"]
    done = poll(mcp, created["taskId"])
    assert done["status"] == "completed" and done["result"]["isError"] is True
    assert "always fails" in done["result"]["content"][0]["text"]


def test_without_the_extension_a_call_is_answered_at_once_and_a_task_only_tool_refused(mcp):
    answered = mcp("tools/call", {"name": "slow_compute", "arguments": {}}, meta=WITHOUT_EXT)
    assert answered["result"]["resultType"] == "complete"
    assert "taskId" not in answered["result"] and answered["result"]["content"]
    refused = mcp("tools/call", {"name": "failing_job", "arguments": {}}, meta=WITHOUT_EXT)
    assert refused["error"]["code"] == -32021
    assert refused["error"]["data"] == {"requiredCapabilities": {"extensions": {EXT: {}}}}


def test_a_tool_without_task_support_is_answered_at_once_even_with_the_extension(mcp):
    answered = mcp(
        "tools/call",
        {"name": "greet", "arguments": {"name": "x"}, "task": {"ttl": 1000}},  # legacy hint
    )["result"]
    assert answered["resultType"] == "complete"
    assert answered["content"][0]["text"] == "Hello, x!"


@pytest.mark.parametrize("method", ["tasks/get", "tasks/update", "tasks/cancel"])
def test_the_tasks_methods_need_the_extension(mcp, method):
    params = {"taskId": "cmd_x", "inputResponses": {}}
    assert mcp(method, params, meta=WITHOUT_EXT)["error"]["code"] == -32021


@pytest.mark.parametrize("method", ["tasks/result", "tasks/list"])
def test_tasks_result_and_list_are_gone_from_the_extension(mcp, method):
    assert mcp(method, {"taskId": "cmd_x"})["error"]["code"] == -32601


@pytest.mark.parametrize(
    "task_id",
    [None, "", 42, ["cmd_x"], "cmd_nothing_here", "x" * 5000],
    ids=["missing", "empty", "number", "list", "unknown", "huge"],
)
@pytest.mark.parametrize("method", ["tasks/get", "tasks/cancel", "tasks/update"])
def test_a_bad_task_id_is_invalid_params(mcp, method, task_id):
    params = {"inputResponses": {}} if method == "tasks/update" else {}
    if task_id is not None:
        params["taskId"] = task_id
    name = task_id if isinstance(task_id, str) else ""
    error = mcp(method, params, name=name)["error"]
    assert error["code"] == -32602
    assert "Traceback" not in json.dumps(error)


def test_an_execution_that_is_not_a_task_is_no_task(mcp, client, keys):
    executed = client.post(
        "/mcp/execute", json={"action": "greet", "params": {}}, headers=keys.headers()
    ).get_json()
    error = mcp("tasks/get", {"taskId": executed["command_id"]})["error"]
    assert error == {"code": -32602, "message": "Failed to retrieve task: Task not found"}


def test_another_keys_task_is_indistinguishable_from_a_missing_one(mcp, keys, storage):
    _, other = keys.store.create("other-user", "user")
    keys.other = other
    created = mcp("tools/call", {"name": "slow_compute", "arguments": {"seconds": 30}})["result"]
    task_id = created["taskId"]
    missing = mcp("tasks/get", {"taskId": "cmd_000000000000" + "0" * 20})["error"]
    for method in ("tasks/get", "tasks/cancel"):
        assert mcp(method, {"taskId": task_id}, key="other")["error"] == missing
    update = mcp("tasks/update", {"taskId": task_id, "inputResponses": {}}, key="other")
    assert update["error"] == missing
    assert row(storage, task_id)["cancel_requested_at"] is None  # not cancelled by them
    assert ack_only(mcp("tasks/cancel", {"taskId": task_id})["result"])


def test_the_routing_header_must_name_the_task(mcp):
    created = mcp("tools/call", {"name": "slow_compute", "arguments": {}})["result"]
    error = mcp("tasks/get", {"taskId": created["taskId"]}, name="cmd_other")["error"]
    assert error["code"] == -32020


def test_cancelling_a_running_task_sets_its_cancel_flag(mcp, storage):
    created = mcp("tools/call", {"name": "slow_compute", "arguments": {"seconds": 60}})["result"]
    task_id = created["taskId"]
    deadline = time.monotonic() + 10
    while row(storage, task_id)["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    assert ack_only(mcp("tasks/cancel", {"taskId": task_id})["result"])
    task = mcp("tasks/get", {"taskId": task_id})["result"]
    assert task["status"] == "cancelled" and "result" not in task
    while row(storage, task_id)["status"] == "running" and time.monotonic() - started < 10:
        time.sleep(0.02)
    assert time.monotonic() - started < 5  # the handler saw its flag; it did not wait 60 s
    stored = row(storage, task_id)
    assert stored["status"] == "failed" and stored["error"] == "cancelled by its requester"
    # cancelling an ended task is acknowledged again (idempotent)
    assert ack_only(mcp("tasks/cancel", {"taskId": task_id})["result"])
    assert mcp("tasks/get", {"taskId": task_id})["result"]["status"] == "cancelled"


def test_a_held_call_is_a_working_task_until_approved_then_completes(mcp, client, keys):
    created = mcp("tools/call", {"name": "wipe", "arguments": {"target": "db1"}})["result"]
    assert created["resultType"] == "task" and created["status"] == "working"
    assert created["statusMessage"].startswith("waiting for approval")
    task_id = created["taskId"]
    approved = client.post(
        f"/mcp/executions/{task_id}/approve", headers=keys.headers("admin"), json={}
    )
    assert approved.status_code == 202
    done = poll(mcp, task_id)
    assert done["status"] == "completed"
    assert done["result"]["structuredContent"]["wiped"] == "db1"


def test_cancelling_a_held_call_withdraws_its_approval_request(mcp, client, keys, storage):
    created = mcp("tools/call", {"name": "wipe", "arguments": {"target": "db2"}})["result"]
    task_id = created["taskId"]
    assert ack_only(mcp("tasks/cancel", {"taskId": task_id})["result"])
    stored = row(storage, task_id)
    assert (
        stored["status"] == "denied" and stored["decision_reason"] == "withdrawn by the requester"
    )
    events = client.get(
        f"/mcp/executions/{task_id}/events", headers=keys.headers("admin")
    ).get_json()["events"]
    assert [e["event"] for e in events] == ["requested", "denied"]
    assert events[-1]["key_name"] == "ops-user"  # the requester took it back
    late = client.post(f"/mcp/executions/{task_id}/approve", headers=keys.headers("admin"), json={})
    assert late.status_code == 409  # nothing left to approve
    task = mcp("tasks/get", {"taskId": task_id})["result"]
    assert task["status"] == "cancelled" and "withdrawn" in task["statusMessage"]


def test_a_task_asks_its_client_and_completes_with_the_answers(mcp):
    created = mcp("tools/call", {"name": "multi_input", "arguments": {}})["result"]
    task_id = created["taskId"]
    waiting = poll(mcp, task_id, until=("input_required",))
    keys_asked = sorted(waiting["inputRequests"])
    assert len(keys_asked) == 2
    assert waiting["inputRequests"][keys_asked[0]]["method"] == "elicitation/create"
    answer = {"action": "accept", "content": {"confirm": True}}
    ack = mcp("tasks/update", {"taskId": task_id, "inputResponses": {keys_asked[0]: answer}})
    assert ack_only(ack["result"])
    partial = mcp("tasks/get", {"taskId": task_id})["result"]
    assert partial["status"] == "input_required"
    assert sorted(partial["inputRequests"]) == keys_asked[1:]  # the answered key is gone
    # an answer to a key never asked is ignored
    mcp("tasks/update", {"taskId": task_id, "inputResponses": {"nope": answer}})
    mcp("tasks/update", {"taskId": task_id, "inputResponses": {keys_asked[1]: answer}})
    done = poll(mcp, task_id)
    assert done["status"] == "completed"
    assert done["result"]["structuredContent"] == {"answered": ["first", "second"]}


def test_tasks_update_refuses_what_is_not_answers(mcp):
    created = mcp("tools/call", {"name": "slow_compute", "arguments": {"seconds": 5}})["result"]
    for bad in ([], "yes", {"k": "x" * 70_000}):
        error = mcp("tasks/update", {"taskId": created["taskId"], "inputResponses": bad})
        assert error["error"]["code"] == -32602
    mcp("tasks/cancel", {"taskId": created["taskId"]})


def test_a_pruned_task_is_gone_with_its_execution(mcp, storage):
    created = mcp("tools/call", {"name": "slow_compute", "arguments": {}})["result"]
    poll(mcp, created["taskId"])
    assert Retention(storage, retention=timedelta(0)).prune() >= 1
    assert mcp("tasks/get", {"taskId": created["taskId"]})["error"]["code"] == -32602


# -- 2025-11-25: tasks in core (experimental) -------------------------------------------------


def test_2025_11_25_tools_list_says_which_tools_take_tasks(legacy):
    tools = {t["name"]: t for t in legacy("tools/list")["result"]["tools"]}
    assert tools["slow_compute"]["execution"] == {"taskSupport": "optional"}
    assert tools["failing_job"]["execution"] == {"taskSupport": "required"}
    assert tools["greet"]["execution"] == {"taskSupport": "forbidden"}
    assert tools["wipe"]["execution"] == {"taskSupport": "optional"}  # held for approval
    assert "execution" not in tools["waygate_execution"]


def test_2025_11_25_a_held_call_as_a_task_completes_with_its_result_via_tasks_result(
    legacy, client, keys
):
    created = legacy(
        "tools/call", {"name": "wipe", "arguments": {"target": "db3"}, "task": {"ttl": 5000}}
    )["result"]
    task = created["task"]
    assert task["status"] == "working" and task["ttl"] == WEEK_MS and task["pollInterval"]
    assert "io.modelcontextprotocol/model-immediate-response" in created["_meta"]
    listed = legacy("tasks/list")["result"]["tasks"]
    assert [t["taskId"] for t in listed] == [task["taskId"]]
    client.post(f"/mcp/executions/{task['taskId']}/approve", headers=keys.headers("admin"), json={})
    result = legacy("tasks/result", {"taskId": task["taskId"]})["result"]  # blocks until done
    assert result["structuredContent"]["wiped"] == "db3"
    assert result["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task["taskId"]}
    assert legacy("tasks/get", {"taskId": task["taskId"]})["result"]["status"] == "completed"
    # a terminal task cannot be cancelled in 2025-11-25
    assert legacy("tasks/cancel", {"taskId": task["taskId"]})["error"]["code"] == -32602


def test_2025_11_25_cancel_answers_the_cancelled_task_and_lists_are_the_callers_own(legacy, keys):
    _, other = keys.store.create("other-user", "user")
    keys.other = other
    task = legacy("tools/call", {"name": "slow_compute", "arguments": {"seconds": 60}, "task": {}})[
        "result"
    ]["task"]
    assert legacy("tasks/list", key="other")["result"]["tasks"] == []
    assert legacy("tasks/get", {"taskId": task["taskId"]}, key="other")["error"]["code"] == -32602
    cancelled = legacy("tasks/cancel", {"taskId": task["taskId"]})["result"]
    assert cancelled["taskId"] == task["taskId"] and cancelled["status"] == "cancelled"
    error = legacy("tasks/result", {"taskId": task["taskId"]})["error"]
    assert error["code"] == -32602 and "cancelled" in error["message"]


def test_2025_11_25_a_tool_error_fails_the_task(legacy):
    task = legacy("tools/call", {"name": "failing_job", "arguments": {}, "task": {}})["result"]
    result = legacy("tasks/result", {"taskId": task["task"]["taskId"]})["result"]
    assert result["isError"] is True
    assert legacy("tasks/get", {"taskId": task["task"]["taskId"]})["result"]["status"] == "failed"


def test_2025_11_25_task_support_is_kept(legacy):
    as_task = legacy("tools/call", {"name": "greet", "arguments": {}, "task": {}})
    assert as_task["error"]["code"] == -32601
    not_as_task = legacy("tools/call", {"name": "failing_job", "arguments": {}})
    assert not_as_task["error"]["code"] == -32601


def test_2025_11_25_tasks_result_on_a_stream_tells_each_status_then_the_result(client, keys):
    headers = {
        "Accept": "application/json, text/event-stream",
        "X-API-Key": keys.user,
        "MCP-Protocol-Version": LEGACY,
    }

    def post(method, params):
        body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": params}
        return client.post("/mcp", json=body, headers=headers)

    created = post(
        "tools/call", {"name": "slow_compute", "arguments": {"seconds": 0.5}, "task": {}}
    )
    task_id = created.get_json()["result"]["task"]["taskId"]
    streamed = post("tasks/result", {"taskId": task_id})
    assert streamed.mimetype == "text/event-stream"
    events = [
        json.loads(line[len("data: ") :])
        for line in streamed.get_data(as_text=True).splitlines()
        if line.startswith("data: ")
    ]
    statuses = [e["params"]["status"] for e in events if e.get("method")]
    assert statuses[0] == "working" and statuses[-1] == "completed"
    assert all(e["method"] == "notifications/tasks/status" for e in events[:-1])
    assert events[-1]["id"] == 7 and events[-1]["result"]["structuredContent"]["seconds"] == 0.5


@pytest.mark.parametrize("version", ["2025-03-26", "2025-06-18"])
def test_revisions_before_2025_11_25_have_no_tasks(client, keys, version):
    headers = {"X-API-Key": keys.user, "MCP-Protocol-Version": version}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    body["params"] = {"name": "slow_compute", "arguments": {}, "task": {}}
    answered = client.post("/mcp", json=body, headers=headers).get_json()["result"]
    assert answered["content"] and "task" not in answered
    body.update(method="tasks/get", params={"taskId": "cmd_x"})
    assert client.post("/mcp", json=body, headers=headers).get_json()["error"]["code"] == -32601


def test_stdio_pushes_the_status_of_a_2025_11_25_task_until_it_ends(services):
    """Over stdio a handshake-era client names its revision once (initialize); a task it asks
    for then reports each status by itself, without polling."""
    import os
    import threading

    from waygate.commands import Caller
    from waygate.mcp.stdio import serve

    read_in, write_in = os.pipe()
    read_out, write_out = os.pipe()
    stdin, client_out = os.fdopen(read_in, "r"), os.fdopen(write_in, "w")
    stdout, client_in = os.fdopen(write_out, "w"), os.fdopen(read_out, "r")
    session = threading.Thread(
        target=serve,
        args=(services.mcp, Caller("desktop", principal="stdio:desktop")),
        kwargs={"stdin": stdin, "stdout": stdout},
        daemon=True,
    )
    session.start()

    def send(message):
        client_out.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
        client_out.flush()

    send({"id": 1, "method": "initialize", "params": {"protocolVersion": LEGACY}})
    assert json.loads(client_in.readline())["result"]["capabilities"]["tasks"]
    send(
        {
            "id": 2,
            "method": "tools/call",
            "params": {"name": "slow_compute", "arguments": {"seconds": 0.5}, "task": {}},
        }
    )
    created = json.loads(client_in.readline())
    task_id = created["result"]["task"]["taskId"]
    statuses = []
    while not statuses or statuses[-1] not in ("completed", "failed", "cancelled"):
        line = client_in.readline()
        assert line, "stdio ended before the task did"
        pushed = json.loads(line)
        assert pushed["method"] == "notifications/tasks/status"
        assert pushed["params"]["taskId"] == task_id
        statuses.append(pushed["params"]["status"])
    assert statuses[-1] == "completed"
    client_out.close()
    session.join(10)
    stdout.close()


def test_a_call_that_asks_for_progress_is_still_a_task_or_refused_for_want_of_one(mcp):
    streamed_meta = {**WITH_EXT, "progressToken": "p1"}
    created = mcp("tools/call", {"name": "slow_compute", "arguments": {}}, meta=streamed_meta)
    assert created["result"]["resultType"] == "task"
    refused = mcp(
        "tools/call",
        {"name": "failing_job", "arguments": {}},
        meta={**WITHOUT_EXT, "progressToken": "p2"},
    )
    assert refused["error"]["code"] == -32021


def test_a_held_task_approved_with_the_cli_completes_with_its_result(mcp, runner):
    created = mcp("tools/call", {"name": "wipe", "arguments": {"target": "db5"}})["result"]
    code, out, err = runner("approvals", "approve", created["taskId"], "--as", "ops-admin")
    assert code == 0, out + err
    done = poll(mcp, created["taskId"])
    assert done["status"] == "completed"
    assert done["result"]["structuredContent"]["wiped"] == "db5"


def test_the_extensions_notifications_carry_the_whole_task_for_subscriptions(mcp, services, keys):
    """The hook subscriptions/listen serves notifications/tasks from: each change of the
    caller's task, the last with its result inlined."""
    from waygate.commands import Caller

    created = mcp("tools/call", {"name": "slow_compute", "arguments": {"seconds": 0.3}})["result"]
    key = keys.store.authenticate(keys.user)
    caller = Caller(key.name, key.id)
    pushed = list(
        services.mcp.tasks.notifications(
            {"taskId": created["taskId"]}, caller, told="", legacy=False
        )
    )
    assert {n["method"] for n in pushed} == {"notifications/tasks"}
    assert pushed[-1]["params"]["status"] == "completed"
    assert pushed[-1]["params"]["result"]["structuredContent"]["seconds"] == 0.3


def test_an_async_rest_execution_is_no_task_and_cannot_ask(client, keys, storage):
    accepted = client.post(
        "/mcp/execute",
        json={"action": "confirm_delete", "params": {}, "async": True},
        headers=keys.headers(),
    ).get_json()
    deadline = time.monotonic() + 10
    while row(storage, accepted["command_id"])["status"] in ("pending", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    stored = row(storage, accepted["command_id"])
    assert stored["status"] == "failed" and "call it as a task" in stored["error"]
    assert stored["task_ttl_ms"] is None


def test_2025_11_25_tasks_list_pages_by_an_opaque_cursor(legacy, monkeypatch):
    from waygate.mcp import tasks

    monkeypatch.setattr(tasks, "LIST_PAGE", 2)
    made = [
        legacy("tools/call", {"name": "slow_compute", "arguments": {}, "task": {}})["result"][
            "task"
        ]["taskId"]
        for _ in range(3)
    ]
    first = legacy("tasks/list")["result"]
    second = legacy("tasks/list", {"cursor": first["nextCursor"]})["result"]
    listed = [t["taskId"] for t in first["tasks"] + second["tasks"]]
    assert sorted(listed) == sorted(made) and len(first["tasks"]) == 2
    assert "nextCursor" not in second
    for bad in ("cmd_nothing", 7, ""):
        assert legacy("tasks/list", {"cursor": bad})["error"]["code"] == -32602


def ack_only(result: dict) -> bool:
    """A tasks/cancel ack: ``resultType: complete`` and the server's identity, no task fields."""
    return (
        result
        == {
            "resultType": "complete",
            "_meta": {
                "io.modelcontextprotocol/serverInfo": result["_meta"][
                    "io.modelcontextprotocol/serverInfo"
                ]
            },
        }
        and result["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "waygate"
    )
