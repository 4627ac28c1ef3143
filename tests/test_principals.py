"""One notion of "who" (issue 27): a key, or a person (issuer and subject) who comes with an
OAuth token or holds a key as its owner. Executions, execution events, key events and
approval decisions record the principal; the two-person rule compares people."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.both_backends

ALICE = "https://sso.example.com/realms/ops#alice"
WIPE = {"action": "wipe", "params": {"target": "db1"}}


@pytest.fixture
def client(plugin_dist, make_app):
    return make_app().test_client()


@pytest.fixture
def alices(keys):
    """Two keys held by the same person: one to ask, one (admin) that could approve."""
    record, asking = keys.store.create("alice-ci", "user", owner=ALICE, owner_name="Alice")
    _, approving = keys.store.create("alice-admin", "admin", owner=ALICE, owner_name="Alice")
    return record, {"X-API-Key": asking}, {"X-API-Key": approving}


def test_a_keys_owner_is_the_requester_so_their_second_key_cannot_approve(client, keys, alices):
    _, asking, approving = alices
    requested = client.post("/mcp/execute", json=WIPE, headers=asking)
    assert requested.status_code == 202
    command_id = requested.get_json()["command_id"]
    refused = client.post(f"/mcp/executions/{command_id}/approve", headers=approving)
    assert refused.status_code == 403 and "own request" in refused.get_json()["error"]["message"]
    approved = client.post(f"/mcp/executions/{command_id}/approve", headers=keys.headers("admin"))
    assert approved.status_code == 202
    record = client.get(
        f"/mcp/executions/{command_id}/events", headers=keys.headers("admin")
    ).get_json()["events"]
    admin_id = keys.store.get("ops-admin").id
    assert [(e["event"], e["principal"]) for e in record][:2] == [
        ("requested", ALICE),
        ("approved", f"key:{admin_id}"),
    ]


def test_executions_can_be_listed_by_principal(client, keys, alices):
    echo = {"action": "echo", "params": {"message": "x"}}
    _, asking, _ = alices
    assert client.post("/mcp/execute", json=echo, headers=asking).status_code == 200
    assert client.post("/mcp/execute", json=echo, headers=keys.headers()).status_code == 200
    user_id = keys.store.get("ops-user").id

    def listed(principal):
        answer = client.get(
            "/mcp/executions", query_string={"principal": principal}, headers=keys.headers("admin")
        )
        assert answer.status_code == 200
        return [(row["key_name"], row["principal"]) for row in answer.get_json()["executions"]]

    assert listed(ALICE) == [("alice-ci", ALICE)]
    assert listed(f"key:{user_id}") == [("ops-user", f"key:{user_id}")]
    assert listed("https://sso.example.com/realms/ops#nobody") == []


def test_key_events_record_who_acted(client, keys, runner):
    created = client.post(
        "/keys",
        json={"name": "bob-ci", "owner": "https://sso.example.com/realms/ops#bob"},
        headers=keys.headers("admin"),
    )
    assert created.status_code == 201 and created.get_json()["owner"].endswith("#bob")
    code, _, _ = runner("keys", "revoke", "bob-ci")
    assert code == 0
    events = client.get(
        "/key-events", query_string={"key": "bob-ci"}, headers=keys.headers("admin")
    ).get_json()["events"]
    admin_id = keys.store.get("ops-admin").id
    assert [(e["event"], e["actor_principal"]) for e in events] == [
        ("revoked", None),  # the host's CLI: no principal
        ("created", f"key:{admin_id}"),
    ]


@pytest.mark.parametrize(
    "owner", ["alice", "https://sso.example.com#", "ftp://sso.example.com#alice", "a b#c"]
)
def test_an_owner_must_name_a_person_by_issuer_and_subject(client, keys, owner):
    answer = client.post("/keys", json={"name": "x", "owner": owner}, headers=keys.headers("admin"))
    assert answer.status_code == 400 and "owner" in answer.get_json()["error"]["details"]["fields"]


def test_the_cli_gives_a_key_an_owner_and_takes_it_away(runner, keys):
    code, out, err = runner("keys", "create", "--name", "carol-ci", "--owner", ALICE)
    assert code == 0, err
    assert keys.store.get("carol-ci").owner == ALICE
    code, out, err = runner("keys", "update", "carol-ci", "--no-owner")
    assert code == 0, err
    assert keys.store.get("carol-ci").owner is None


def test_a_key_made_with_an_owned_key_has_the_same_owner(client, alices):
    _, _, approving = alices
    made = client.post("/keys", json={"name": "alice-bot"}, headers=approving)
    assert made.status_code == 201
    assert (made.get_json()["owner"], made.get_json()["owner_name"]) == (ALICE, "Alice")
    requested = client.post(
        "/mcp/execute", json=WIPE, headers={"X-API-Key": made.get_json()["key"]}
    )
    command_id = requested.get_json()["command_id"]
    refused = client.post(f"/mcp/executions/{command_id}/approve", headers=approving)
    assert refused.status_code == 403
