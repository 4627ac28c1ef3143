"""Human approval for destructive commands over REST, MCP (JSON-RPC), the CLI and a webhook
(issue 17). The Testing plugin's `wipe` is annotated destructiveHint and says what it ran, for
whom and where; gunicorn and the official SDK client are in test_approvals_server.py."""

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.test_metrics import sample, scrape
from waygate.storage import IntegrityError

pytestmark = pytest.mark.both_backends

WIPE = {"action": "wipe", "params": {"target": "db1"}, "context": {"ticket": "T-1"}}


@pytest.fixture
def client(plugin_dist, make_app):
    return make_app().test_client()


@pytest.fixture
def approver(keys):
    """A second admin key: the requesting admin may not approve its own request."""
    _, key = keys.store.create("second-admin", "admin")
    return {"X-API-Key": key}


def execute(client, keys, body=WIPE, role="user", headers=None):
    headers = headers if headers is not None else keys.headers(role)
    return client.post("/mcp/execute", headers=headers, json=body)


def request_wipe(client, keys, body=WIPE, role="user") -> str:
    response = execute(client, keys, body, role)
    assert response.status_code == 202, response.get_json()
    return response.get_json()["command_id"]


def decide(client, headers, command_id, verb="approve", body=None):
    return client.post(f"/mcp/executions/{command_id}/{verb}", headers=headers, json=body)


def state(client, keys, command_id, role="user"):
    return client.get(f"/mcp/executions/{command_id}", headers=keys.headers(role)).get_json()


def until_ended(client, keys, command_id, role="user"):
    for _ in range(200):
        body = state(client, keys, command_id, role)
        if body["status"] not in ("pending", "running"):
            return body
        time.sleep(0.02)
    raise AssertionError(f"{command_id} did not end: {body}")


def events(client, keys, command_id):
    response = client.get(f"/mcp/executions/{command_id}/events", headers=keys.headers("admin"))
    assert response.status_code == 200
    return response.get_json()["events"]


# -- which commands wait -------------------------------------------------------------------------


def test_a_destructive_command_answers_202_awaiting_approval_with_location(client, keys):
    response = execute(client, keys)
    body = response.get_json()
    assert response.status_code == 202
    assert body["status"] == "awaiting_approval" and body["result"] is None
    assert response.headers["Location"] == f"/mcp/executions/{body['command_id']}"
    canonical = json.dumps({"target": "db1"}, sort_keys=True, separators=(",", ":"))
    assert body["approval"]["params_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert body["approval"]["expires_at"] > body["timestamp"]
    assert state(client, keys, body["command_id"])["status"] == "awaiting_approval"
    listing = client.get(
        "/mcp/executions?status=awaiting_approval", headers=keys.headers("admin")
    ).get_json()
    assert listing["total"] == 1
    row = listing["executions"][0]
    assert row["params"] == {"target": "db1"} and row["client_context"] == {"ticket": "T-1"}
    assert row["key_name"] == "ops-user" and row["worker_pid"] is None
    stats = client.get("/plugins/Testing", headers=keys.headers()).get_json()["statistics"]
    assert stats["calls_total"] == 0  # it did not run


def test_an_async_request_and_a_batch_item_are_held_too(client, keys):
    held = execute(client, keys, {**WIPE, "async": True})
    assert held.status_code == 202 and held.get_json()["status"] == "awaiting_approval"
    batch = client.post(
        "/mcp/execute",
        headers=keys.headers(),
        json=[{"action": "echo", "params": {"message": "hi"}}, WIPE],
    )
    assert batch.status_code == 200
    echo, wipe = batch.get_json()
    assert echo["status"] == "success"
    assert wipe["status"] == "awaiting_approval" and wipe["approval"]["required"] is True


def test_operators_add_exempt_and_switch_off_by_pattern(plugin_dist, make_app, keys):
    client = make_app(approval_required=("ech*",), approval_exempt=("wip?",)).test_client()
    echo = execute(client, keys, {"action": "echo", "params": {"message": "hi"}})
    assert echo.status_code == 202 and echo.get_json()["status"] == "awaiting_approval"
    assert execute(client, keys).status_code == 200  # exempt despite destructiveHint
    listed = {
        c["name"]: c for c in client.get("/mcp/commands", headers=keys.headers()).json["commands"]
    }
    assert listed["echo"]["approval_required"] is True
    assert listed["wipe"]["approval_required"] is False
    off = make_app(approval_destructive_default=False).test_client()
    assert execute(off, keys).status_code == 200


def test_the_commands_list_says_which_commands_need_approval(client, keys):
    listed = client.get("/mcp/commands", headers=keys.headers()).get_json()["commands"]
    needs = {c["name"]: c["approval_required"] for c in listed}
    assert needs["wipe"] is True and needs["echo"] is False


# -- deciding ------------------------------------------------------------------------------------


def test_approval_runs_the_stored_request_as_the_requester(client, keys):
    command_id = request_wipe(client, keys)
    approved = decide(client, keys.headers("admin"), command_id, body={"reason": "change 42"})
    assert approved.status_code == 202
    assert approved.headers["Location"] == f"/mcp/executions/{command_id}"
    assert approved.get_json()["approval"]["decided_by"] == "ops-admin"
    done = until_ended(client, keys, command_id)
    assert done["status"] == "success"
    result = done["result"]
    assert result["wiped"] == "db1" and result["key_name"] == "ops-user"
    assert result["context"] == {"ticket": "T-1"}
    # the "executed" event follows the final record by a moment (its own transaction)
    for _ in range(250):
        trail = [(e["event"], e["key_name"], e["reason"]) for e in events(client, keys, command_id)]
        if len(trail) == 3:
            break
        time.sleep(0.02)
    assert trail == [
        ("requested", "ops-user", None),
        ("approved", "ops-admin", "change 42"),
        ("executed", None, "success"),
    ]


def test_tampering_the_approved_execution_runs_the_stored_params(client, keys, storage):
    command_id = request_wipe(client, keys)
    # whatever comes with the decision is not the request
    decide(client, keys.headers("admin"), command_id, body={"params": {"target": "prod"}})
    assert until_ended(client, keys, command_id)["result"]["wiped"] == "db1"
    # and the database refuses to change a stored request
    second = request_wipe(client, keys)
    with pytest.raises(IntegrityError):
        storage.execute_write(
            "UPDATE executions SET params = ? WHERE command_id = ?",
            ('{"target":"prod"}', second),
        )


def test_a_stored_request_changed_behind_the_triggers_back_is_never_run(
    client, keys, storage, backend
):
    command_id = request_wipe(client, keys)
    on_table = " ON executions" if backend == "postgresql" else ""
    with storage.write() as conn:
        conn.execute(f"DROP TRIGGER executions_request_immutable{on_table}")
        conn.execute(
            "UPDATE executions SET params = ? WHERE command_id = ?",
            ('{"target":"prod"}', command_id),
        )
    assert decide(client, keys.headers("admin"), command_id).status_code == 202
    done = until_ended(client, keys, command_id)
    assert done["status"] == "failed" and "does not match its hash" in done["error"]
    assert done["result"] is None


def test_self_approval_is_refused_with_403(client, keys, approver):
    command_id = request_wipe(client, keys, role="admin")
    refused = decide(client, keys.headers("admin"), command_id)
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "FORBIDDEN"
    assert "its own request" in refused.get_json()["error"]["message"]
    assert decide(client, keys.headers("admin"), command_id, "deny").status_code == 403
    assert state(client, keys, command_id, "admin")["status"] == "awaiting_approval"
    assert decide(client, approver, command_id).status_code == 202  # another admin may


def test_a_key_the_requester_created_cannot_decide_on_rest_or_the_cli(client, keys, runner):
    """Two keys are not two people: an admin's own key, and keys that key made, directly or
    through keys it made, may not approve its request."""
    puppet = client.post(
        "/keys", json={"name": "sock-puppet", "role": "admin"}, headers=keys.headers("admin")
    ).get_json()
    assert puppet["created_by"] == "ops-admin"
    assert puppet["created_by_id"] == keys.store.get("ops-admin").id
    grandchild = client.post(
        "/keys", json={"name": "puppet-2", "role": "admin"}, headers={"X-API-Key": puppet["key"]}
    ).get_json()
    assert grandchild["created_by"] == "sock-puppet"
    command_id = request_wipe(client, keys, role="admin")
    for made in (puppet, grandchild):
        for verb in ("approve", "deny"):
            refused = decide(client, {"X-API-Key": made["key"]}, command_id, verb)
            assert refused.status_code == 403, refused.get_json()
            error = refused.get_json()["error"]
            assert error["code"] == "FORBIDDEN"
            assert "created by the requesting key 'ops-admin'" in error["message"]
    code, out, err = runner("approvals", "approve", command_id, "--as", "puppet-2")
    assert code == 1 and "created by the requesting key" in err and "Traceback" not in err
    assert state(client, keys, command_id, "admin")["status"] == "awaiting_approval"
    # a key the requester did not make (the host's CLI made this one) may decide
    _, other = keys.store.create("other-admin", "admin")
    assert keys.store.get("other-admin").created_by == "cli"
    approved = decide(client, {"X-API-Key": other}, command_id)
    assert approved.status_code == 202 and approved.get_json()["approval"]["decided_by"] == (
        "other-admin"
    )
    # the puppet may decide on requests of keys it did not create
    user_request = request_wipe(client, keys)
    assert decide(client, {"X-API-Key": puppet["key"]}, user_request, "deny").status_code == 200


def test_a_creator_chain_too_long_to_follow_does_not_lift_the_two_person_rule(client, keys):
    """Before: the chain was followed 64 keys up and then taken as ending, so an admin who
    minted 65 keys, each with the one before, approved its own request with the last."""
    from waygate.keys import MAX_CHAIN

    made = {"key": keys.headers("admin")["X-API-Key"]}
    for n in range(MAX_CHAIN + 1):
        made = client.post(
            "/keys",
            json={"name": f"chain-{n}", "role": "admin"},
            headers={"X-API-Key": made["key"]},
        ).get_json()
    command_id = request_wipe(client, keys, role="admin")
    refused = decide(client, {"X-API-Key": made["key"]}, command_id)
    assert refused.status_code == 403, refused.get_json()
    assert "too long to tell" in refused.get_json()["error"]["message"]
    assert state(client, keys, command_id, "admin")["status"] == "awaiting_approval"


def test_revoking_a_key_denies_its_awaiting_requests_and_approving_one_is_409(
    client, keys, runner, db
):
    _, requester = keys.store.create("requester", "user")
    held = [request_wipe(client, keys, role="user")]
    mine = [
        execute(client, None, WIPE, headers={"X-API-Key": requester}).get_json()["command_id"]
        for _ in range(2)
    ]
    before = scrape(client)
    revoked = client.delete("/keys/requester", headers=keys.headers("admin"))
    assert revoked.status_code == 200
    after = scrape(client)
    assert sample(after, "waygate_approvals_pending") == 1
    denied = {"outcome": "denied"}
    assert (
        sample(after, "waygate_approval_decisions_total", **denied)
        - sample(before, "waygate_approval_decisions_total", **denied)
        == 2
    )
    for command_id in mine:
        body = state(client, keys, command_id, "admin")
        assert body["status"] == "denied"
        assert body["approval"]["reason"] == "requester key revoked"
        assert body["approval"]["decided_by"] == "ops-admin"
        assert [e["event"] for e in events(client, keys, command_id)] == ["requested", "denied"]
        late = decide(client, keys.headers("admin"), command_id)
        assert late.status_code == 409 and late.get_json()["error"]["code"] == "CONFLICT"
    # another key's request is untouched
    assert state(client, keys, held[0])["status"] == "awaiting_approval"
    # the same through the CLI, in one transaction with the revocation
    _, second = keys.store.create("second", "user")
    other = execute(client, None, WIPE, headers={"X-API-Key": second}).get_json()["command_id"]
    code, _, err = runner("keys", "revoke", "second")
    assert code == 0, err
    rows = db(
        "SELECT e.status, e.decision_reason, k.revoked_at FROM executions e"
        " JOIN api_keys k ON k.id = e.key_id WHERE e.command_id = ?",
        (other,),
    )
    assert rows[0]["status"] == "denied" and rows[0]["decision_reason"] == "requester key revoked"
    assert rows[0]["revoked_at"]


def test_a_user_key_cannot_decide(client, keys):
    command_id = request_wipe(client, keys)
    refused = decide(client, keys.headers("user"), command_id)
    assert refused.status_code == 403
    assert "admin key" in refused.get_json()["error"]["message"]


def test_denial_ends_it_denied_with_the_reason_and_it_never_runs(client, keys):
    command_id = request_wipe(client, keys)
    denied = decide(client, keys.headers("admin"), command_id, "deny", {"reason": "not today"})
    assert denied.status_code == 200
    body = denied.get_json()
    assert body["status"] == "denied" and body["error"] == "denied by ops-admin: not today"
    assert body["approval"]["reason"] == "not today"
    assert state(client, keys, command_id)["status"] == "denied"
    stats = client.get("/plugins/Testing", headers=keys.headers()).get_json()["statistics"]
    assert stats["calls_total"] == 0
    assert [e["event"] for e in events(client, keys, command_id)] == ["requested", "denied"]


def test_deciding_twice_or_on_an_execution_not_awaiting_is_409(client, keys):
    command_id = request_wipe(client, keys)
    assert decide(client, keys.headers("admin"), command_id).status_code == 202
    for verb in ("approve", "deny"):
        again = decide(client, keys.headers("admin"), command_id, verb)
        assert again.status_code == 409
        assert again.get_json()["error"]["code"] == "CONFLICT"
    plain = execute(client, keys, {"action": "echo", "params": {"message": "hi"}})
    assert decide(client, keys.headers("admin"), plain.get_json()["command_id"]).status_code == 409
    missing = decide(client, keys.headers("admin"), "cmd_nope")
    assert missing.status_code == 404


def test_concurrent_decisions_have_one_winner(plugin_dist, make_app, keys, approver):
    client = make_app().test_client()
    command_id = request_wipe(client, keys)
    answers = []

    def decide_in_thread(headers, verb):
        answers.append(
            decide(client.application.test_client(), headers, command_id, verb).status_code
        )

    threads = [
        threading.Thread(target=decide_in_thread, args=(h, v))
        for h, v in [(keys.headers("admin"), "approve"), (approver, "deny")] * 3
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers)[1:] == [409] * 5 and sorted(answers)[0] in (200, 202)


def test_a_bad_decision_body_is_400(client, keys):
    command_id = request_wipe(client, keys)
    long = decide(client, keys.headers("admin"), command_id, "deny", {"reason": "x" * 1001})
    assert long.status_code == 400 and long.get_json()["error"]["code"] == "INVALID_REQUEST"
    listed = decide(client, keys.headers("admin"), command_id, "deny", ["no"])
    assert listed.status_code == 400
    assert state(client, keys, command_id)["status"] == "awaiting_approval"


def test_a_pending_approval_expires_after_its_time(plugin_dist, make_app, keys):
    client = make_app(approval_ttl_s=1).test_client()
    command_id = request_wipe(client, keys)
    time.sleep(1.1)
    body = state(client, keys, command_id)
    assert body["status"] == "expired" and body["error"] == "nobody approved it in time"
    assert decide(client, keys.headers("admin"), command_id).status_code == 409
    assert [e["event"] for e in events(client, keys, command_id)] == ["requested", "expired"]


def test_housekeeping_expires_what_nobody_reads(plugin_dist, make_app, keys, app_services_of):
    client = make_app(approval_ttl_s=1).test_client()
    command_id = request_wipe(client, keys)
    time.sleep(1.1)
    app_services_of(client).housekeeper.run_once(prune=False)
    row = app_services_of(client).audit.get(command_id)
    assert row.status == "expired"


def test_held_executions_count_against_the_keys_cap(plugin_dist, make_app, keys):
    client = make_app(async_max_open_per_key=2).test_client()
    request_wipe(client, keys)
    request_wipe(client, keys)
    refused = execute(client, keys)
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "RATE_LIMITED"


def test_the_sweep_and_pruning_leave_awaiting_executions_alone(
    plugin_dist, make_app, keys, app_services_of
):
    client = make_app(audit_retention_days=1).test_client()
    command_id = request_wipe(client, keys, {**WIPE, "timeout": 1})
    services = app_services_of(client)
    audit, leases = services.audit, services.leases
    audit.storage.execute_write(  # requested long ago, past any command timeout
        "UPDATE executions SET created_at = '2020-01-01T00:00:00.000Z',"
        " approval_expires_at = '2999-01-01T00:00:00.000Z' WHERE command_id = ?",
        (command_id,),
    )
    assert leases.sweep() == 0 and leases.fail_open_executions("shutdown") == 0
    assert services.housekeeper.retention.prune() == 0
    assert audit.get(command_id).status == "awaiting_approval"


# -- seen everywhere -----------------------------------------------------------------------------


def test_metrics_count_requests_decisions_and_pending(client, keys):
    before = scrape(client)
    first, second = request_wipe(client, keys), request_wipe(client, keys)
    assert sample(scrape(client), "waygate_approvals_pending") == 2
    decide(client, keys.headers("admin"), first)
    decide(client, keys.headers("admin"), second, "deny")
    after = scrape(client)
    assert sample(after, "waygate_approvals_pending") == 0
    for name, labels, grew in (
        ("waygate_approvals_requested_total", {}, 2),
        ("waygate_approval_decisions_total", {"outcome": "approved"}, 1),
        ("waygate_approval_decisions_total", {"outcome": "denied"}, 1),
    ):
        assert sample(after, name, **labels) - sample(before, name, **labels) == grew


def test_the_openapi_document_has_the_statuses_and_endpoints(client):
    spec = client.get("/openapi.json").get_json()
    statuses = spec["components"]["schemas"]["MCPResponse"]["properties"]["status"]["enum"]
    assert {"awaiting_approval", "denied", "expired"} <= set(statuses)
    approve = spec["paths"]["/mcp/executions/{command_id}/approve"]["post"]["responses"]
    assert {"202", "403", "404", "409"} <= set(approve)
    assert "/mcp/executions/{command_id}/deny" in spec["paths"]


# -- MCP -----------------------------------------------------------------------------------------


def rpc(client, key, method, params):
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    headers = {"X-API-Key": key, "Accept": "application/json, text/event-stream"}
    return client.post("/mcp", json=body, headers=headers).get_json()["result"]


def test_mcp_tools_list_marks_tools_that_need_approval(client, keys):
    tools = {t["name"]: t for t in rpc(client, keys.user, "tools/list", {})["tools"]}
    assert tools["wipe"]["_meta"] == {"waygate/approvalRequired": True}
    assert "Requires approval" in tools["wipe"]["description"]
    assert "_meta" not in tools["echo"]
    assert tools["waygate_execution"]["annotations"]["readOnlyHint"] is True


def test_mcp_call_is_held_then_read_back_by_the_builtin_tool(client, keys):
    held = rpc(client, keys.user, "tools/call", {"name": "wipe", "arguments": {"target": "db2"}})
    assert held["isError"] is False and "needs approval" in held["content"][0]["text"]
    command_id = held["structuredContent"]["command_id"]
    assert held["structuredContent"]["status"] == "awaiting_approval"
    decide(client, keys.headers("admin"), command_id)
    for _ in range(200):
        read = rpc(
            client,
            keys.user,
            "tools/call",
            {"name": "waygate_execution", "arguments": {"command_id": command_id}},
        )
        if read["structuredContent"]["status"] == "success":
            break
        time.sleep(0.02)
    assert read["isError"] is False
    assert read["structuredContent"]["result"]["wiped"] == "db2"
    others = rpc(
        client,
        keys.admin,
        "tools/call",
        {"name": "waygate_execution", "arguments": {"command_id": command_id}},
    )
    assert others["isError"] is True  # only the caller's own executions


def test_a_held_tool_asked_for_progress_is_held_not_streamed_nor_run(client, keys):
    params = {"name": "wipe", "arguments": {"target": "db3"}, "_meta": {"progressToken": 5}}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    headers = {"X-API-Key": keys.user, "Accept": "application/json, text/event-stream"}
    answer = client.post("/mcp", json=body, headers=headers)
    assert answer.mimetype == "application/json"
    held = answer.get_json()["result"]
    assert held["structuredContent"]["status"] == "awaiting_approval"
    listed = client.get("/mcp/executions?action=wipe", headers=keys.headers("admin")).get_json()
    assert [e["status"] for e in listed["executions"]] == ["awaiting_approval"]


# -- CLI -----------------------------------------------------------------------------------------


def test_the_cli_lists_approves_and_denies_as_a_named_admin(client, keys, runner):
    first, second = request_wipe(client, keys), request_wipe(client, keys)
    code, out, _ = runner("approvals", "list")
    assert code == 0 and first in out and second in out and '{"target": "db1"}' in out
    code, out, _ = runner("approvals", "approve", first, "--as", "ops-admin")
    assert code == 0 and '"status": "success"' in out and '"wiped": "db1"' in out
    code, out, _ = runner("approvals", "deny", second, "--as", "ops-admin", "--reason", "no")
    assert code == 0 and state(client, keys, second)["error"] == "denied by ops-admin: no"
    code, _, err = runner("approvals", "deny", second, "--as", "ops-admin")
    assert code == 1 and "not awaiting approval" in err
    third = request_wipe(client, keys)
    code, _, err = runner("approvals", "approve", third, "--as", "ops-user")
    assert code == 1 and "admin key" in err
    code, _, err = runner("approvals", "approve", third, "--as", "nobody")
    assert code == 1 and "no live key" in err
    assert [e["key_name"] for e in events(client, keys, first)][:2] == ["ops-user", "ops-admin"]


def test_cli_approve_exits_non_zero_when_the_approved_command_fails(client, keys, runner):
    slow = {"action": "wipe", "params": {"target": "db2", "seconds": 5}, "timeout": 1}
    failing = request_wipe(client, keys, slow)
    code, out, err = runner("approvals", "approve", failing, "--as", "ops-admin")
    assert code == 3
    assert '"status": "timeout"' in out
    assert err.strip() == f"waygate: approved {failing}, but the command ended timeout"
    succeeding = request_wipe(client, keys)
    code, out, err = runner("approvals", "approve", succeeding, "--as", "ops-admin")
    assert (code, err) == (0, "")
    code, _, err = runner("approvals", "approve", succeeding, "--as", "ops-admin")
    assert code == 1 and "not awaiting approval" in err  # refused: nothing ran


# -- the webhook ---------------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on loopback that fails the first ``failures`` posts with 500."""

    def __init__(self, failures=0, basic_auth=None):
        self.bodies, self.failures, self.authorizations = [], failures, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.authorizations.append(self.headers.get("Authorization"))
                if basic_auth and self.headers.get("Authorization") != basic_auth:
                    self.send_response(401)
                elif outer.failures:
                    outer.failures -= 1
                    self.send_response(500)
                else:
                    outer.bodies.append(body)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_the_webhook_gets_every_request_and_decision_with_retries(
    plugin_dist, make_app, keys, app_services_of
):
    receiver = Receiver(failures=1)  # the first post fails once: retried
    try:
        client = make_app(approval_webhook_url=receiver.url).test_client()
        notifier = app_services_of(client).commands.approvals.notifier
        notifier.backoff_s = 0.01
        first, second = request_wipe(client, keys), request_wipe(client, keys)
        decide(client, keys.headers("admin"), first, body={"reason": "ok"})
        decide(client, keys.headers("admin"), second, "deny", {"reason": "no"})
        notifier.join()
    finally:
        receiver.close()
    got = [(b["event"], b["execution"]["command_id"]) for b in receiver.bodies]
    assert got == [
        ("requested", first),
        ("requested", second),
        ("approved", first),
        ("denied", second),
    ]
    denied = receiver.bodies[-1]
    assert denied["text"].startswith("Waygate: `wipe` requested by ops-user was denied by")
    assert denied["execution"]["decision_reason"] == "no"
    assert denied["execution"]["params"] == {"target": "db1"}


def test_a_webhook_url_with_user_and_password_delivers_them_as_basic_auth_never_logged(
    plugin_dist, make_app, keys, app_services_of, caplog
):
    import base64

    expected = "Basic " + base64.b64encode(b"hook-user:p@ss:WEBHOOKSECRET").decode()
    receiver = Receiver(basic_auth=expected)
    url = receiver.url.replace("http://", "http://hook-user:p%40ss%3AWEBHOOKSECRET@")
    try:
        client = make_app(approval_webhook_url=url).test_client()
        services = app_services_of(client)
        notifier = services.commands.approvals.notifier
        first = request_wipe(client, keys)
        decide(client, keys.headers("admin"), first, "deny", {"reason": "no"})
        notifier.join()
    finally:
        receiver.close()
    assert [b["event"] for b in receiver.bodies] == ["requested", "denied"]
    assert receiver.authorizations == [expected, expected]  # the first try of each took it
    assert "WEBHOOKSECRET" not in caplog.text
    assert "WEBHOOKSECRET" not in repr(services.config)


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pa@ssWEBHOOKSECRET@hooks.example.com/x",
        "https://user:pa%zzWEBHOOKSECRET@hooks.example.com/x",
        "https://user:WEBHOOKSECRET@hooks.example.com:port/x",
    ],
)
def test_a_malformed_webhook_url_is_refused_at_start_up_without_repeating_it(url):
    from waygate.config import Config, ConfigError

    with pytest.raises(ConfigError) as refused:
        Config.from_env({"WAYGATE_APPROVAL_WEBHOOK_URL": url})
    assert str(refused.value).startswith("WAYGATE_APPROVAL_WEBHOOK_URL: ")
    assert "WEBHOOKSECRET" not in str(refused.value)


def test_a_webhook_that_never_answers_is_logged_and_counted_and_blocks_nothing(
    plugin_dist, make_app, keys, app_services_of, caplog
):
    receiver = Receiver()
    url = receiver.url
    receiver.close()  # nothing listens there now
    client = make_app(approval_webhook_url=url, approval_webhook_attempts=2).test_client()
    notifier = app_services_of(client).commands.approvals.notifier
    notifier.backoff_s = 0.01
    before = sample(scrape(client), "waygate_approval_webhook_failures_total")
    request_wipe(client, keys)
    notifier.join()
    after = sample(scrape(client), "waygate_approval_webhook_failures_total")
    assert after - before == 1
    assert "failed after 2 attempts" in caplog.text and url not in caplog.text


def test_m012_keeps_existing_executions_counts_and_statistics(tmp_path):
    import sqlite_utils

    from waygate.storage.migrations import STATE
    from waygate.storage.sqlite import SqliteStorage, sqlite_migrations

    migrations = sqlite_migrations(STATE)
    storage = SqliteStorage(tmp_path / "waygate.db")
    conn = storage.connect()
    conn.row_factory = None  # plain tuples
    db = sqlite_utils.Database(conn)
    migrations.apply(db, stop_before="m012_approvals")
    for i, status in enumerate(("success", "failed", "running")):
        db.execute(
            "INSERT INTO executions (command_id, action, plugin, mode, status, timeout_s,"
            " created_at) VALUES (?, 'echo', 'Core', 'sync', ?, 30, '2026-01-01T00:00:00.000Z')",
            (f"cmd_{i}", status),
        )
    db.conn.commit()
    stats_before = db.execute("SELECT * FROM plugin_stats").fetchall()
    migrations.apply(db)
    db.conn.commit()
    rows = db.execute("SELECT command_id, status FROM executions ORDER BY command_id").fetchall()
    assert rows == [("cmd_0", "success"), ("cmd_1", "failed"), ("cmd_2", "running")]
    assert db.execute("SELECT n FROM row_counts WHERE name = 'executions'").fetchone() == (3,)
    assert db.execute("SELECT * FROM plugin_stats").fetchall() == stats_before
    # the triggers came back: a finished row is counted, a held one is not
    db.execute(
        "INSERT INTO executions (command_id, action, plugin, mode, status, timeout_s, created_at)"
        " VALUES ('cmd_3', 'echo', 'Core', 'sync', 'awaiting_approval', 30, 'x')"
    )
    db.execute("UPDATE executions SET status = 'success' WHERE command_id = 'cmd_2'")
    db.conn.commit()
    assert db.execute("SELECT n FROM row_counts WHERE name = 'executions'").fetchone() == (4,)
    calls = db.execute("SELECT calls_total FROM plugin_stats WHERE plugin = 'Core'").fetchone()
    assert calls == (stats_before[0][1] + 1,)
