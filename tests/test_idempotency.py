"""Idempotency keys (issue 31): ``Idempotency-Key`` on ``POST /mcp/execute`` and
``params._meta["waygate/idempotencyKey"]`` on MCP ``tools/call`` run a request once per
caller and key. In-process, on SQLite and PostgreSQL; across gunicorn workers in
test_idempotency_server.py and across hosts in test_multihost.py.

The Mark plugin's ``mark`` appends a line to a file per run and answers how many lines the
file has: the file says how often it ran, and two runs never answer alike."""

from __future__ import annotations

import threading
import time

import pytest

pytestmark = pytest.mark.both_backends

MARK_PLUGIN = """
import time
from pathlib import Path
from marshmallow import Schema, fields
from waygate.sdk import Command, Plugin


class MarkParams(Schema):
    path = fields.String(required=True)
    seconds = fields.Float(load_default=0)


class Mark(Plugin):
    name = "Mark"
    version = "1.0.0"
    description = "appends a line to a file each time it runs"
    author = "tests"

    def commands(self):
        def mark(params, ctx):
            time.sleep(params["seconds"])
            with open(params["path"], "a") as out:
                out.write(ctx.command_id + "\\n")
            return {"runs": len(Path(params["path"]).read_text().splitlines())}

        return [Command("mark", "Append a line to a file", MarkParams, mark)]
"""
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}
META_KEY = "waygate/idempotencyKey"


@pytest.fixture
def marked(plugin_dist, tmp_path):
    """The Mark plugin installed; the file it marks."""
    plugin_dist.write_module("mark_plugin", MARK_PLUGIN)
    plugin_dist.register("Mark", "mark_plugin:Mark")
    return tmp_path / "marks.txt"


@pytest.fixture
def client(marked, make_app):
    return make_app().test_client()


def runs(marked) -> int:
    return len(marked.read_text().splitlines()) if marked.exists() else 0


def mark(marked, seconds=0.0, **extra) -> dict:
    return {"action": "mark", "params": {"path": str(marked), "seconds": seconds}, **extra}


def execute(client, keys, body, key="key-1", role="user", **headers):
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post("/mcp/execute", json=body, headers=keys.headers(role, **headers))


def tool_call(client, keys, arguments, key="tool-key-1", name="mark", role="user", **meta):
    if key is not None:
        meta[META_KEY] = key
    message = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments, "_meta": meta},
    }
    response = client.post("/mcp", json=message, headers=keys.headers(role, **MCP_HEADERS))
    return response


# -- REST ----------------------------------------------------------------------------------


def test_a_retry_gets_the_first_answer_marked_replayed_and_runs_nothing(client, keys, marked, db):
    first = execute(client, keys, mark(marked))
    assert first.status_code == 200 and first.get_json()["result"] == {"runs": 1}
    assert "Idempotent-Replayed" not in first.headers
    retry = execute(client, keys, mark(marked))
    assert retry.status_code == 200
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.get_json() == first.get_json()  # same command_id, result, timestamp
    assert runs(marked) == 1
    assert len(db("SELECT command_id FROM executions")) == 1
    fresh = execute(client, keys, mark(marked), key="key-2")  # a new key is a new request
    assert fresh.get_json()["result"] == {"runs": 2} and runs(marked) == 2
    plain = execute(client, keys, mark(marked), key=None)  # without a key: runs every time
    assert plain.get_json()["result"] == {"runs": 3}


def test_the_same_request_spelled_differently_is_the_same_request(client, keys, marked):
    first = execute(client, keys, mark(marked, context={"a": 1, "b": [1, 2]}))
    body = (  # other spacing, key order, and 0 for 0.0
        '{ "context" : {"b":[1,2],"a":1},\n "params": {"seconds": 0, "path": "'
        + str(marked)
        + '"}, "action":"mark"}'
    )
    retry = client.post(
        "/mcp/execute",
        data=body,
        content_type="application/json",
        headers=keys.headers(**{"Idempotency-Key": '"key-1"'}),  # as a Structured Field string
    )
    assert retry.headers.get("Idempotent-Replayed") == "true", retry.get_json()
    assert retry.get_json()["command_id"] == first.get_json()["command_id"]
    assert runs(marked) == 1


def test_the_same_key_with_another_request_is_422_and_runs_nothing(client, keys, marked):
    first = execute(client, keys, mark(marked))
    other = execute(client, keys, mark(marked, seconds=0.01))
    assert other.status_code == 422
    error = other.get_json()["error"]
    assert error["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert "another request" in error["message"]
    assert error["details"]["command_id"] == first.get_json()["command_id"]
    assert runs(marked) == 1


def test_another_callers_identical_key_is_its_own(client, keys, marked, db):
    as_user = execute(client, keys, mark(marked), role="user")
    as_admin = execute(client, keys, mark(marked), role="admin")
    assert "Idempotent-Replayed" not in as_admin.headers
    assert as_admin.get_json()["command_id"] != as_user.get_json()["command_id"]
    assert runs(marked) == 2
    owners = {row["owner"] for row in db("SELECT owner FROM idempotency_keys")}
    assert len(owners) == 2


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("", "empty"),
        ("k" * 256, "longer than 255"),
        ("bad\x01key", "printable ASCII"),
        ("tab\tkey", "printable ASCII"),
        ("caf\u00e9", "printable ASCII"),
        ('"unterminated', "quoted string"),
        ('"a"b"', 'unescaped "'),
        ('""', "empty"),
    ],
)
def test_a_bad_key_is_400_in_the_error_envelope_and_runs_nothing(client, keys, marked, key, why):
    response = execute(client, keys, mark(marked), key=key)
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "INVALID_IDEMPOTENCY_KEY"
    assert why in error["message"]
    assert runs(marked) == 0


def test_a_key_of_255_characters_is_taken(client, keys, marked):
    key = "k" * 254 + "~"
    assert execute(client, keys, mark(marked), key=key).status_code == 200
    assert execute(client, keys, mark(marked), key=key).headers["Idempotent-Replayed"] == "true"
    assert runs(marked) == 1


def test_a_key_on_a_batch_is_refused(client, keys, marked):
    response = execute(client, keys, [mark(marked)])
    assert response.status_code == 400
    assert "batch" in response.get_json()["error"]["message"]
    assert runs(marked) == 0


def test_a_request_refused_before_it_runs_leaves_the_key_free(client, keys, marked):
    refused = execute(client, keys, {"action": "mark", "params": {}})  # path missing
    assert refused.status_code == 400
    assert execute(client, keys, {"action": "no_such_command"}).status_code == 400
    ran = execute(client, keys, mark(marked))  # another request, same key: not a reuse
    assert ran.status_code == 200 and "Idempotent-Replayed" not in ran.headers
    assert runs(marked) == 1


def test_a_failed_execution_is_replayed_as_it_failed(client, keys, marked):
    body = {"action": "mark", "params": {"path": str(marked.parent), "seconds": 0}}  # a dir
    first = execute(client, keys, body)
    assert first.status_code == 500 and first.get_json()["status"] == "failed"
    retry = execute(client, keys, body)
    assert retry.status_code == 500 and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.get_json() == first.get_json()


def test_an_async_retry_shows_the_first_executions_state_now(client, keys, marked):
    body = mark(marked, seconds=0.2, **{"async": True})
    accepted = execute(client, keys, body)
    assert accepted.status_code == 202
    command_id = accepted.get_json()["command_id"]
    retry = execute(client, keys, body)
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.get_json()["command_id"] == command_id
    assert retry.get_json()["status"] in ("pending", "running", "success")
    deadline = time.monotonic() + 10
    while (polled := execute(client, keys, body)).status_code == 202:
        assert polled.headers["Location"].endswith(command_id)
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert polled.status_code == 200 and polled.headers["Idempotent-Replayed"] == "true"
    assert polled.get_json()["status"] == "success"
    assert polled.get_json()["result"] == {"runs": 1}
    assert polled.get_json()["command_id"] == command_id
    assert runs(marked) == 1


def test_a_pruned_execution_is_still_answered_from_its_first_answer(client, keys, marked, storage):
    body = mark(marked, **{"async": True})
    command_id = execute(client, keys, body).get_json()["command_id"]
    deadline = time.monotonic() + 10
    while (
        client.get(f"/mcp/executions/{command_id}", headers=keys.headers()).get_json()["status"]
        != "success"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    storage.execute_write("DELETE FROM executions WHERE command_id = ?", (command_id,))
    retry = execute(client, keys, body)
    assert retry.status_code == 202 and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.get_json()["command_id"] == command_id
    assert runs(marked) == 1


# -- held for approval ------------------------------------------------------------------------

WIPE = {"action": "wipe", "params": {"target": "db1"}}


def test_a_held_destructive_request_retried_opens_no_second_ticket(client, keys, db):
    held = execute(client, keys, WIPE, key="wipe-1")
    assert held.status_code == 202 and held.get_json()["status"] == "awaiting_approval"
    command_id = held.get_json()["command_id"]
    for _ in range(3):
        retry = execute(client, keys, WIPE, key="wipe-1")
        assert retry.status_code == 202 and retry.headers["Idempotent-Replayed"] == "true"
        assert retry.get_json()["command_id"] == command_id
        assert retry.get_json()["status"] == "awaiting_approval"
        assert retry.headers["Location"].endswith(f"/mcp/executions/{command_id}")
    assert len(db("SELECT command_id FROM executions")) == 1
    tickets = db("SELECT command_id FROM execution_events WHERE event = 'requested'")
    assert tickets == [{"command_id": command_id}]
    # approved and run: the retry now answers its result, still without a second run
    _, approver = keys.store.create("approver", "admin")
    decided = client.post(f"/mcp/executions/{command_id}/approve", headers={"X-API-Key": approver})
    assert decided.status_code == 202
    deadline = time.monotonic() + 10
    while (retry := execute(client, keys, WIPE, key="wipe-1")).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert retry.get_json()["status"] == "success"
    assert retry.get_json()["result"]["wiped"] == "db1"
    assert len(db("SELECT command_id FROM executions")) == 1


def test_a_held_tool_call_retried_opens_no_second_ticket(client, keys, db):
    first = tool_call(client, keys, {"target": "db1"}, name="wipe")
    command_id = first.get_json()["result"]["structuredContent"]["command_id"]
    retry = tool_call(client, keys, {"target": "db1"}, name="wipe")
    result = retry.get_json()["result"]
    assert result["structuredContent"]["command_id"] == command_id
    assert result["structuredContent"]["status"] == "awaiting_approval"
    assert result["_meta"]["waygate/idempotentReplayed"] is True
    assert len(db("SELECT event FROM execution_events WHERE event = 'requested'")) == 1


# -- the window ---------------------------------------------------------------------------------


def test_past_its_window_a_key_is_forgotten_and_the_housekeeping_prunes_it(
    client, keys, marked, storage, db, app_services_of
):
    first = execute(client, keys, mark(marked))
    storage.execute_write("UPDATE idempotency_keys SET expires_at = '2000-01-01T00:00:00.000Z'")
    # the key's window has passed: the same request runs anew, and another is no reuse
    again = execute(client, keys, mark(marked))
    assert again.status_code == 200 and "Idempotent-Replayed" not in again.headers
    assert again.get_json()["command_id"] != first.get_json()["command_id"]
    assert again.get_json()["result"] == {"runs": 2}
    storage.execute_write("UPDATE idempotency_keys SET expires_at = '2000-01-01T00:00:00.000Z'")
    other = execute(client, keys, mark(marked, seconds=0.01))
    assert other.status_code == 200 and runs(marked) == 3
    execute(client, keys, mark(marked), key="kept")
    storage.execute_write(
        "UPDATE idempotency_keys SET expires_at = '2000-01-01T00:00:00.000Z'"
        " WHERE idem_key = 'key-1'"
    )
    app_services_of(client).housekeeper.run_once(prune=True)
    assert [row["idem_key"] for row in db("SELECT idem_key FROM idempotency_keys")] == ["kept"]


def test_the_window_is_the_configured_one(marked, make_app, keys, db):
    client = make_app(idempotency_ttl_s=120).test_client()
    execute(client, keys, mark(marked))
    (row,) = db("SELECT created_at, expires_at FROM idempotency_keys")
    from waygate.clock import parse_iso

    window = parse_iso(row["expires_at"]) - parse_iso(row["created_at"])
    assert window.total_seconds() == 120


# -- a first request still running, or lost with its worker ------------------------------------


def test_a_retry_while_the_first_runs_is_409_with_retry_after_then_replayed(
    marked, make_app, keys, db
):
    client = make_app(idempotency_wait_s=0).test_client()
    first: list = []
    running = threading.Thread(
        target=lambda: first.append(execute(client, keys, mark(marked, seconds=1.0)))
    )
    running.start()
    deadline = time.monotonic() + 10
    while not db("SELECT 1 FROM idempotency_keys"):  # the first has claimed the key
        assert time.monotonic() < deadline
        time.sleep(0.01)
    busy = execute(client, keys, mark(marked, seconds=1.0))
    running.join()
    assert busy.status_code == 409, busy.get_json()
    assert busy.get_json()["error"]["code"] == "IDEMPOTENCY_KEY_IN_PROGRESS"
    assert busy.headers["Retry-After"] == "1"
    assert busy.get_json()["error"]["details"]["command_id"] == first[0].get_json()["command_id"]
    after = execute(client, keys, mark(marked, seconds=1.0))
    assert after.headers["Idempotent-Replayed"] == "true"
    assert after.get_json() == first[0].get_json()
    assert runs(marked) == 1


def test_retries_waiting_for_the_first_take_the_keys_command_slots(marked, make_app, keys, db):
    # a waiting retry holds a request thread like a call: one key's retries of a slow call
    # must not hold every thread of the worker (other keys queueing behind), so past the
    # key's share of command slots they are refused at once, as its calls would be
    client = make_app(
        idempotency_wait_s=10, command_requests=4, command_requests_per_key=2
    ).test_client()
    first: list = []
    running = threading.Thread(
        target=lambda: first.append(execute(client, keys, mark(marked, seconds=2.0)))
    )
    running.start()
    deadline = time.monotonic() + 10
    while not db("SELECT 1 FROM idempotency_keys"):  # the first has claimed the key
        assert time.monotonic() < deadline
        time.sleep(0.01)
    retries: list = []
    threads = [
        threading.Thread(target=lambda: retries.append(execute(client, keys, mark(marked, 2.0))))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    running.join()
    statuses = sorted(r.status_code for r in retries)
    assert statuses == [200, 429, 429], [r.get_json() for r in retries]
    refused = [r for r in retries if r.status_code == 429]
    assert all(r.get_json()["error"]["code"] == "RATE_LIMITED" for r in refused)
    assert all(r.headers["Retry-After"] == "1" for r in refused)
    waited = next(r for r in retries if r.status_code == 200)
    assert waited.headers["Idempotent-Replayed"] == "true"
    assert waited.get_json() == first[0].get_json()
    assert runs(marked) == 1


def test_a_retry_waits_for_the_first_and_gets_its_answer(marked, make_app, keys):
    client = make_app(idempotency_wait_s=10).test_client()
    answers: list = []

    def send():
        answers.append(execute(client, keys, mark(marked, seconds=0.3)))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {a.status_code for a in answers} == {200}
    assert len({a.get_json()["command_id"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 3
    assert runs(marked) == 1


def test_a_claim_lost_with_its_worker_is_taken_over_after_its_deadline(
    client, keys, marked, storage
):
    from waygate.idempotency import fingerprint

    execute(client, keys, mark(marked), key="probe")  # to learn the caller's owner name
    (owner,) = storage.conn.execute("SELECT owner FROM idempotency_keys").fetchone()
    body = mark(marked)
    storage.execute_write(  # claimed by a worker that died before it answered or recorded
        "INSERT INTO idempotency_keys (owner, idem_key, fingerprint, command_id, live,"
        " created_at, claimed_until, expires_at) VALUES (?, 'lost', ?, 'cmd_lost', 0,"
        " '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:30.000Z', '9999-01-01T00:00:00.000Z')",
        (owner, fingerprint("rest", body)),
    )
    taken = execute(client, keys, body, key="lost")
    assert taken.status_code == 200 and "Idempotent-Replayed" not in taken.headers
    assert taken.get_json()["command_id"] != "cmd_lost" and runs(marked) == 2
    assert execute(client, keys, body, key="lost").headers["Idempotent-Replayed"] == "true"
    assert runs(marked) == 2


# -- the database refuses -------------------------------------------------------------------------


def test_a_database_that_refuses_the_claim_fails_the_request_and_nothing_runs(
    client, keys, marked, storage, db, backend
):
    refuse = {
        "sqlite": [
            "CREATE TRIGGER refuse BEFORE INSERT ON idempotency_keys"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        ],
        "postgresql": [
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'refused' USING ERRCODE = '23514'; END $$",
            "CREATE TRIGGER refuse BEFORE INSERT ON idempotency_keys"
            " FOR EACH ROW EXECUTE FUNCTION refuse()",
        ],
    }
    with storage.write() as conn:
        for statement in refuse[backend]:
            conn.execute(statement)
    response = execute(client, keys, mark(marked))
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "INTERNAL_ERROR"
    assert runs(marked) == 0
    assert db("SELECT command_id FROM executions") == []


# -- MCP tools/call ---------------------------------------------------------------------------


def test_a_tool_call_retry_gets_the_first_result_marked_replayed(client, keys, marked):
    arguments = {"path": str(marked)}
    first = tool_call(client, keys, arguments).get_json()["result"]
    assert first["structuredContent"] == {"runs": 1} and "_meta" not in first
    retry = tool_call(client, keys, arguments).get_json()["result"]
    assert retry["structuredContent"] == {"runs": 1}
    assert retry["_meta"] == {"waygate/idempotentReplayed": True}
    assert runs(marked) == 1
    # the same key over REST is another request
    assert execute(client, keys, mark(marked), key="tool-key-1").status_code == 422


def test_a_tool_call_with_the_same_key_and_other_arguments_is_invalid_params(client, keys, marked):
    tool_call(client, keys, {"path": str(marked)})
    other = tool_call(client, keys, {"path": str(marked), "seconds": 0.01}).get_json()
    assert other["error"]["code"] == -32602
    assert other["error"]["data"]["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert runs(marked) == 1


@pytest.mark.parametrize("key", ["", "k" * 256, "a\x00b", "\u00e9t\u00e9", 42, None])
def test_a_bad_tool_call_key_is_invalid_params(client, keys, marked, key):
    answer = tool_call(client, keys, {"path": str(marked)}, key=None, **{META_KEY: key})
    error = answer.get_json()["error"]
    assert error["code"] == -32602
    assert error["data"]["code"] == "INVALID_IDEMPOTENCY_KEY"
    assert runs(marked) == 0


def test_a_tool_call_refused_before_it_runs_claims_no_key(client, keys, marked):
    invalid = tool_call(client, keys, {"seconds": 1}).get_json()["result"]  # path missing
    assert invalid["isError"] is True
    ran = tool_call(client, keys, {"path": str(marked)}).get_json()["result"]
    assert ran["structuredContent"] == {"runs": 1} and "_meta" not in ran


def test_a_tool_call_with_a_key_and_a_progress_token_is_answered_as_json_once(client, keys, marked):
    arguments = {"path": str(marked)}
    for _ in range(2):
        answer = tool_call(client, keys, arguments, progressToken="p1")
        assert answer.mimetype == "application/json"
        assert answer.get_json()["result"]["structuredContent"] == {"runs": 1}
    assert runs(marked) == 1


def test_over_stdio_the_name_it_runs_under_owns_the_keys(client, keys, marked, app_services_of):
    from waygate.commands import Caller

    mcp = app_services_of(client).mcp
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "mark", "arguments": {"path": str(marked)}, "_meta": {META_KEY: "s"}},
    }

    def call(name):
        return mcp.handle(message, Caller(key_name=name), http=False).body["result"]

    assert call("desktop")["structuredContent"] == {"runs": 1}
    assert call("desktop")["_meta"] == {"waygate/idempotentReplayed": True}
    assert call("laptop")["structuredContent"] == {"runs": 2}  # another name: its own key
    assert runs(marked) == 2


def test_a_result_over_the_stored_size_is_replayed_as_a_marked_preview(marked, make_app, keys):
    client = make_app(result_max_bytes=1024).test_client()
    body = {"action": "echo", "params": {"message": "x" * 5000}}
    first = execute(client, keys, body)
    assert first.get_json()["result"] == {"result": "x" * 5000}  # the first answer is whole
    retry = execute(client, keys, body).get_json()
    assert retry["command_id"] == first.get_json()["command_id"]
    assert retry["result"]["truncated"] is True and retry["result"]["max_bytes"] == 1024
    assert retry["result"]["preview"].startswith('{"result":"xxx')


def test_a_tool_call_retried_while_the_first_runs_is_409_with_retry_after(
    marked, make_app, keys, db
):
    client = make_app(idempotency_wait_s=0).test_client()
    arguments = {"path": str(marked), "seconds": 1.0}
    first: list = []
    running = threading.Thread(target=lambda: first.append(tool_call(client, keys, arguments)))
    running.start()
    deadline = time.monotonic() + 10
    while not db("SELECT 1 FROM idempotency_keys"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    busy = tool_call(client, keys, arguments)
    running.join()
    assert busy.status_code == 409 and busy.headers["Retry-After"] == "1"
    assert busy.get_json()["error"]["data"]["code"] == "IDEMPOTENCY_KEY_IN_PROGRESS"
    assert first[0].get_json()["result"]["structuredContent"] == {"runs": 1}
    assert runs(marked) == 1


def test_a_request_refused_when_it_would_run_leaves_the_key_free(marked, make_app, keys, db):
    client = make_app(async_max_open_per_key=1, idempotency_wait_s=0).test_client()
    held = execute(client, keys, mark(marked, seconds=0.5, **{"async": True}), key="a")
    assert held.status_code == 202
    body = mark(marked, **{"async": True})
    refused = execute(client, keys, body, key="b")  # over the key's cap of open executions
    assert refused.status_code == 429
    assert [row["idem_key"] for row in db("SELECT idem_key FROM idempotency_keys")] == ["a"]
    deadline = time.monotonic() + 10
    while (retried := execute(client, keys, body, key="b")).status_code == 429:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert retried.status_code == 202 and "Idempotent-Replayed" not in retried.headers


def test_a_lost_claim_whose_execution_was_recorded_is_answered_from_the_audit(
    client, keys, marked, storage
):
    from waygate.idempotency import fingerprint

    execute(client, keys, mark(marked), key="probe")
    (owner,) = storage.conn.execute("SELECT owner FROM idempotency_keys").fetchone()
    # it ran and was recorded, but its worker died before it stored the answer
    recorded = execute(client, keys, mark(marked), key=None).get_json()
    body = mark(marked)
    storage.execute_write(
        "INSERT INTO idempotency_keys (owner, idem_key, fingerprint, command_id, live,"
        " created_at, claimed_until, expires_at) VALUES (?, 'lost', ?, ?, 0,"
        " '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:30.000Z', '9999-01-01T00:00:00.000Z')",
        (owner, fingerprint("rest", body), recorded["command_id"]),
    )
    answer = execute(client, keys, body, key="lost")
    assert answer.headers["Idempotent-Replayed"] == "true"
    assert answer.get_json()["command_id"] == recorded["command_id"]
    assert answer.get_json()["status"] == "success"
    assert runs(marked) == 2


def test_a_browser_may_send_the_key_and_read_the_replay_header(client, keys, marked):
    preflight = client.options(
        "/mcp/execute",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type, X-API-Key, Idempotency-Key",
        },
    )
    assert "idempotency-key" in preflight.headers["Access-Control-Allow-Headers"].lower()
    origin = {"Origin": "http://localhost:3000"}
    execute(client, keys, mark(marked), **origin)
    replay = execute(client, keys, mark(marked), **origin)
    exposed = replay.headers["Access-Control-Expose-Headers"].lower()
    assert replay.headers["Idempotent-Replayed"] == "true" and "idempotent-replayed" in exposed
