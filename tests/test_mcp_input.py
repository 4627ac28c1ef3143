"""Input requests (MCP 2026-07-28 multi-round-trip requests): a plugin asks its caller through
the SDK (ctx.confirm/choose/ask/sample/roots), the server answers input_required with a signed
requestState, and the retry with the answers completes. Bound to the call, tamper-evident,
refused clearly where the caller cannot answer (2025-era MCP, REST)."""

from __future__ import annotations

import json

import pytest

from waygate.mcp import input as mcp_input

pytestmark = pytest.mark.both_backends

ACCEPT = "application/json, text/event-stream"
MODERN = "2026-07-28"
ALL = {"elicitation": {}, "sampling": {}, "roots": {}}


@pytest.fixture
def client(plugin_dist, make_app):
    plugin_dist.register("Asking", "tests.input_plugin:AskingPlugin")
    return make_app().test_client()


@pytest.fixture
def call(client, keys):
    """tools/call at 2026-07-28: ``call(name, arguments, **params)`` -> (status, body)."""

    def post(name, arguments=None, key="user", capabilities=ALL, id=1, **params):
        meta = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": capabilities,
        }
        message = {
            "jsonrpc": "2.0",
            "id": id,
            "method": "tools/call",
            "params": {"name": name, "arguments": arguments or {}, "_meta": meta, **params},
        }
        headers = {
            "Accept": ACCEPT,
            "X-API-Key": getattr(keys, key),
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/call",
            "Mcp-Name": name,
        }
        response = client.post(
            "/mcp", data=json.dumps(message), headers=headers, content_type="application/json"
        )
        return response.status_code, response.get_json()

    return post


def rows(client, action):
    storage = client.application.extensions["waygate"].storage
    return [
        tuple(r)
        for r in storage.conn.execute(
            "SELECT status, error FROM executions WHERE action = ? ORDER BY status", (action,)
        ).fetchall()
    ]


def confirm(yes=True):
    return {"action": "accept", "content": {"confirm": yes}}


def test_a_tool_asks_for_confirmation_and_the_retry_completes(call, client):
    status, body = call("restart", {"target": "db"})
    assert status == 200
    first = body["result"]
    assert first["resultType"] == "input_required"
    asked = first["inputRequests"]["confirm-1"]
    assert asked["method"] == "elicitation/create"
    assert asked["params"]["message"].startswith("Restart db?")
    assert asked["params"]["requestedSchema"]["properties"]["confirm"]["type"] == "boolean"
    assert isinstance(first["requestState"], str)

    status, body = call(
        "restart",
        {"target": "db"},
        id=2,
        inputResponses={"confirm-1": confirm()},
        requestState=first["requestState"],
    )
    assert status == 200
    done = body["result"]
    assert done["resultType"] == "complete" and done["isError"] is False
    assert done["structuredContent"]["restarted"] is True
    # each round ran the handler: two executions, the first waiting for input
    recorded = rows(client, "restart")
    assert [r[0] for r in recorded] == ["input_required", "success"]
    assert "confirm-1" in recorded[0][1]


def test_a_declined_confirmation_is_a_no(call):
    _, body = call("restart", {"target": "db"}, inputResponses={"confirm-1": {"action": "decline"}})
    assert body["result"]["structuredContent"]["restarted"] is False


def test_answers_of_earlier_rounds_travel_in_the_signed_state(call):
    _, body = call("wizard")
    assert list(body["result"]["inputRequests"]) == ["colour"]
    assert body["result"]["inputRequests"]["colour"]["params"]["requestedSchema"]["properties"][
        "choice"
    ]["enum"] == ["red", "green"]
    state = body["result"]["requestState"]
    _, body = call(
        "wizard",
        inputResponses={"colour": {"action": "accept", "content": {"choice": "green"}}},
        requestState=state,
    )
    assert list(body["result"]["inputRequests"]) == ["name"]
    # the third round sends only the second answer: the first comes back from the state
    _, body = call(
        "wizard",
        inputResponses={"name": {"action": "accept", "content": {"name": "Ada"}}},
        requestState=body["result"]["requestState"],
    )
    assert body["result"]["structuredContent"] == {"colour": "green", "name": "Ada"}


def test_elicitation_sampling_and_roots_in_one_round(call):
    _, body = call("everything")
    requests = body["result"]["inputRequests"]
    assert {k: r["method"] for k, r in requests.items()} == {
        "who": "elicitation/create",
        "poem": "sampling/createMessage",
        "where": "roots/list",
    }
    assert requests["poem"]["params"]["maxTokens"] == 50
    answers = {
        "who": {"action": "accept", "content": {"n": "Ada"}},
        "poem": {
            "role": "assistant",
            "content": {"type": "text", "text": "old pond"},
            "model": "m",
            "stopReason": "endTurn",
        },
        "where": {"roots": [{"uri": "file:///srv", "name": "srv"}]},
        "ignored": {"anything": 1},  # what the server does not need is ignored
    }
    _, body = call(
        "everything", inputResponses=answers, requestState=body["result"]["requestState"]
    )
    assert body["result"]["structuredContent"] == {
        "who": "Ada",
        "poem": "old pond",
        "where": ["file:///srv"],
    }


def test_a_missing_or_malformed_answer_is_asked_again(call):
    _, body = call("restart", {"target": "db"}, inputResponses={"wrong": confirm()})
    assert body["result"]["resultType"] == "input_required"
    _, body = call("restart", {"target": "db"}, inputResponses={"confirm-1": {"action": "maybe"}})
    assert list(body["result"]["inputRequests"]) == ["confirm-1"]


@pytest.mark.parametrize("responses", [{"confirm-1": 12345}, [1], "yes"])
def test_input_responses_that_are_not_objects_are_invalid_params(call, responses):
    status, body = call("restart", {"target": "db"}, inputResponses=responses)
    assert status == 400 and body["error"]["code"] == -32602


def _state(call):
    _, body = call("restart", {"target": "db"})
    return body["result"]["requestState"]


def _flip(state: str, index: int) -> str:
    swapped = "A" if state[index] != "A" else "B"
    return state[:index] + swapped + state[index + 1 :]


@pytest.mark.parametrize(
    "tamper",
    [
        lambda s: s + "-TAMPERED",  # the conformance suite's tamper
        lambda s: _flip(s, 10),  # the payload
        lambda s: _flip(s, len(s) - 3),  # the signature
        lambda s: "v1.e30." + s.rsplit(".", 1)[1],  # another payload under the same signature
        lambda s: 42,
        lambda s: "x" * (mcp_input.MAX_STATE_CHARS + 1),
        # a payload nested 50,000 deep under a made-up signature: refused, not parsed (json
        # would raise RecursionError: a 500)
        lambda s: "v1." + mcp_input._b64(b"[" * 50_000) + "." + s.rsplit(".", 1)[1],
    ],
)
def test_a_tampered_state_is_refused_before_anything_runs(call, client, tamper):
    state = _state(call)
    status, body = call(
        "restart",
        {"target": "db"},
        inputResponses={"confirm-1": confirm()},
        requestState=tamper(state),
    )
    assert status == 400
    assert body["error"] == {
        "code": -32602,
        "message": "Invalid or expired requestState",
        "data": {"reason": "invalid_request_state"},
    }
    assert [r[0] for r in rows(client, "restart")] == ["input_required"]  # nothing more ran


def test_a_state_is_bound_to_its_tool_arguments_and_caller(call):
    state = _state(call)
    answer = {"inputResponses": {"confirm-1": confirm()}, "requestState": state}
    for status, body in (
        call("restart", {"target": "prod"}, **answer),  # other arguments
        call("wizard", **answer),  # another tool
        call("restart", {"target": "db"}, key="admin", **answer),  # another key
    ):
        assert status == 400 and body["error"]["code"] == -32602


def test_an_expired_state_is_refused(call, client, monkeypatch):
    states = client.application.extensions["waygate"].mcp.states
    monkeypatch.setattr(states, "ttl_s", -1)
    state = _state(call)
    status, body = call(
        "restart", {"target": "db"}, inputResponses={"confirm-1": confirm()}, requestState=state
    )
    assert status == 400 and body["error"]["message"] == "Invalid or expired requestState"


def test_a_question_the_client_cannot_answer_is_minus_32021(call, client):
    status, body = call("restart", {"target": "db"}, capabilities={"sampling": {}})
    assert status == 400
    assert body["error"]["code"] == -32021
    assert body["error"]["data"] == {"requiredCapabilities": {"elicitation": {"form": {}}}}
    # url-mode elicitation only is no form either
    status, body = call("restart", {"target": "db"}, capabilities={"elicitation": {"url": {}}})
    assert body["error"]["code"] == -32021
    assert rows(client, "restart")[0][0] == "failed"


def test_a_handler_asks_only_what_the_client_declared(call):
    _, body = call("adaptive", capabilities={"sampling": {}})
    assert [r["method"] for r in body["result"]["inputRequests"].values()] == [
        "sampling/createMessage"
    ]


def test_a_2025_era_client_gets_a_tool_error_saying_what_it_needs(client, keys):
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "restart", "arguments": {"target": "db"}},
    }
    response = client.post(
        "/mcp",
        data=json.dumps(message),
        headers={"Accept": ACCEPT, "X-API-Key": keys.user, "MCP-Protocol-Version": "2025-11-25"},
        content_type="application/json",
    )
    result = response.get_json()["result"]
    assert result["isError"] is True
    text = result["content"][0]["text"]
    assert "asks its caller for input" in text and "2026-07-28" in text
    assert rows(client, "restart")[0][0] == "failed"


def test_rest_execute_refuses_a_command_that_asks_with_422(client, keys):
    response = client.post(
        "/mcp/execute",
        json={"action": "restart", "params": {"target": "db"}},
        headers={"X-API-Key": keys.user},
    )
    assert response.status_code == 422
    body = response.get_json()
    assert body["status"] == "failed"
    assert "2026-07-28" in body["error"]
    assert body["details"] == {"input_requests": ["confirm-1"]}


def test_listings_filter_by_the_input_required_status(call, client, keys):
    call("restart", {"target": "db"})
    response = client.get(
        "/mcp/executions?status=input_required", headers={"X-API-Key": keys.admin}
    )
    assert response.status_code == 200
    listed = response.get_json()["executions"]
    assert [e["status"] for e in listed] == ["input_required"]


def test_a_streamed_call_ends_with_its_question_or_its_error(client, keys):
    """A call with a progress token is answered as a stream: its last message is the
    input_required result, or the -32021 error, with the call's id."""
    from tests.test_mcp import events_of

    def streamed(capabilities, id):
        meta = {
            "io.modelcontextprotocol/protocolVersion": MODERN,
            "io.modelcontextprotocol/clientCapabilities": capabilities,
            "progressToken": "p-1",
        }
        message = {
            "jsonrpc": "2.0",
            "id": id,
            "method": "tools/call",
            "params": {"name": "restart", "arguments": {"target": "db"}, "_meta": meta},
        }
        headers = {
            "Accept": ACCEPT,
            "X-API-Key": keys.user,
            "MCP-Protocol-Version": MODERN,
            "Mcp-Method": "tools/call",
            "Mcp-Name": "restart",
        }
        response = client.post(
            "/mcp", data=json.dumps(message), headers=headers, content_type="application/json"
        )
        return events_of(response)

    asked = streamed(ALL, 7)
    assert asked[-1]["id"] == 7
    assert asked[-1]["result"]["resultType"] == "input_required"
    assert not [m for m in asked if "method" in m and not m["method"].startswith("notifications/")]
    refused = streamed({}, 8)
    assert refused[-1]["id"] == 8 and refused[-1]["error"]["code"] == -32021


def test_the_channel_works_without_a_state_for_a_task_that_stores_its_answers():
    """What a task in input_required reuses: no requestState, its answers kept elsewhere."""
    from waygate.sdk import InputRequired, elicitation

    ask = {"ok": elicitation("Sure?", {"type": "object"})}
    channel = mcp_input.InputChannel(None, None, {"elicitation": {}}, {})
    with pytest.raises(InputRequired) as asked:
        channel.gather(ask)
    assert asked.value.result == {"resultType": "input_required", "inputRequests": ask}
    answered = mcp_input.InputChannel(None, None, {"elicitation": {}}, {"ok": confirm()})
    assert answered.gather(ask) == {"ok": confirm()} and answered.kept == {"ok": confirm()}


def test_a_prompt_may_ask_before_it_renders(client, keys):
    def get(version, **params):
        message = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "prompts/get",
            "params": {"name": "briefing", **params},
        }
        headers = {"Accept": ACCEPT, "X-API-Key": keys.user, "MCP-Protocol-Version": version}
        if version == MODERN:
            headers["Mcp-Method"] = "prompts/get"
            headers["Mcp-Name"] = "briefing"
            message["params"]["_meta"] = {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": ALL,
            }
        response = client.post(
            "/mcp", data=json.dumps(message), headers=headers, content_type="application/json"
        )
        return response.get_json()

    first = get(MODERN)["result"]
    assert first["resultType"] == "input_required"
    assert list(first["inputRequests"]) == ["service"]
    done = get(
        MODERN,
        inputResponses={"service": {"action": "accept", "content": {"choice": "web"}}},
        requestState=first["requestState"],
    )["result"]
    assert done["messages"][0]["content"]["text"] == "Summarise the last incident of web."
    # a 2025-era client cannot answer: an error that says why
    refused = get("2025-11-25")["error"]
    assert "2026-07-28" in refused["message"]


def test_an_idempotency_key_covers_each_round_of_a_call_that_asks(call, client):
    """The same key on both rounds: the answer is not taken for a retry of the round that
    asked (which would replay the question forever), and a retry of either round replays it."""
    key = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": ALL,
        "waygate/idempotencyKey": "restart-db-1",
    }
    _, first = call("restart", {"target": "db"}, _meta=key)
    assert first["result"]["resultType"] == "input_required"
    _, again = call("restart", {"target": "db"}, _meta=key)
    assert again["result"]["_meta"]["waygate/idempotentReplayed"] is True
    assert again["result"]["resultType"] == "input_required"
    answer = {
        "inputResponses": {"confirm-1": confirm()},
        "requestState": first["result"]["requestState"],
    }
    for _ in range(2):  # the answered round runs once, its retry is replayed
        status, done = call("restart", {"target": "db"}, _meta=key, **answer)
        assert status == 200 and done["result"]["structuredContent"]["restarted"] is True
    assert [r[0] for r in rows(client, "restart")] == ["input_required", "success"]


def test_a_round_that_asked_is_a_call_but_not_an_error_in_the_plugins_statistics(
    call, client, keys
):
    _, first = call("restart", {"target": "db"})
    answer = {
        "inputResponses": {"confirm-1": confirm()},
        "requestState": first["result"]["requestState"],
    }
    call("restart", {"target": "db"}, **answer)
    shown = client.get("/plugins/Asking", headers={"X-API-Key": keys.admin}).get_json()
    assert shown["statistics"]["calls_total"] == 2
    assert shown["statistics"]["errors_total"] == 0
