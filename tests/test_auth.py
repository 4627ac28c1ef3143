"""Who may call what: the key matrix, key transport, revocation and last use."""

import pytest

from tests.test_http import assert_envelope

pytestmark = pytest.mark.both_backends


@pytest.mark.parametrize(
    "path, role, status",
    [
        ("/_probe/user", None, 401),
        ("/_probe/user", "user", 200),
        ("/_probe/user", "admin", 200),
        ("/_probe/admin", None, 401),
        ("/_probe/admin", "user", 403),
        ("/_probe/admin", "admin", 200),
    ],
)
def test_auth_matrix(probe_client, keys, path, role, status):
    headers = keys.headers(role) if role else {}
    response = probe_client.get(path, headers=headers)
    if status == 200:
        assert response.status_code == 200
    else:
        assert_envelope(response, status, {401: "UNAUTHORIZED", 403: "FORBIDDEN"}[status])


def test_a_wrong_key_is_401_with_www_authenticate(probe_client, keys):
    response = probe_client.get("/_probe/user", headers={"X-API-Key": "x" * 32})
    error = assert_envelope(response, 401, "UNAUTHORIZED")
    assert error["message"] == "invalid API key"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_bearer_authorization_is_accepted(probe_client, keys):
    response = probe_client.get("/_probe/user", headers={"Authorization": f"Bearer {keys.user}"})
    assert response.status_code == 200
    assert response.get_json() == {"name": "ops-user"}


def test_the_key_never_appears_in_an_error_body(probe_client, keys):
    response = probe_client.get("/_probe/admin", headers=keys.headers("user"))
    assert keys.user not in response.get_data(as_text=True)


def test_a_revoked_key_is_refused_at_once(probe_client, keys):
    assert probe_client.get("/_probe/user", headers=keys.headers()).status_code == 200
    keys.store.revoke("ops-user")
    assert_envelope(probe_client.get("/_probe/user", headers=keys.headers()), 401, "UNAUTHORIZED")


def test_last_use_is_recorded(probe_client, keys):
    assert keys.store.list()[1].last_used_at is None
    probe_client.get("/_probe/user", headers=keys.headers())
    assert keys.store.list()[1].last_used_at is not None


def test_public_endpoints_need_no_key(client):
    for path in ("/", "/health", "/ready"):
        assert client.get(path).status_code == 200


def test_repeated_bad_keys_count_against_the_client(make_app, keys):
    app = make_app(rate_limit_default="3/minute")
    from tests import probe

    app.register_blueprint(probe.bp)
    client = app.test_client()
    statuses = [
        client.get("/_probe/user", headers={"X-API-Key": f"bad{i}"}).status_code for i in range(4)
    ]
    assert statuses == [401, 401, 401, 429]


def test_keys_are_compared_in_constant_time(keys, monkeypatch):
    import hmac

    from waygate import keystore
    from waygate.errors import Unauthorized

    compared = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(keystore.hmac, "compare_digest", spy)
    keys.store.authenticate(keys.user)
    with pytest.raises(Unauthorized):
        keys.store.authenticate("y" * 32)  # no such key: still one constant-time comparison
    assert compared == [(64, 64), (64, 64)]


def test_a_key_never_reaches_logs_metrics_or_diagnostics(server_factory, keys):
    import requests

    server = server_factory(workers=2)
    headers = keys.headers("admin")
    requests.post(server.url + "/mcp/execute", json={"action": "nope"}, headers=headers, timeout=5)
    requests.get(server.url + "/plugins", headers={"X-API-Key": keys.user + "x"}, timeout=5)
    requests.get(
        server.url + "/plugins", headers={"Authorization": f"Bearer {keys.user}"}, timeout=5
    )
    seen = [
        server.log(),
        requests.get(server.url + "/metrics", timeout=5).text,
        requests.get(server.url + "/diagnostics/errors?limit=100", headers=headers, timeout=5).text,
        requests.get(server.url + "/mcp/executions?limit=100", headers=headers, timeout=5).text,
    ]
    for text in seen:
        assert keys.user not in text and keys.admin not in text


def test_refused_keys_share_one_budget_per_address_across_endpoints(make_app, keys):
    client = make_app(rate_limit_auth_failures="3/minute").test_client()
    wrong = {"X-API-Key": "x" * 32}
    statuses = [
        client.get(path, headers=wrong).status_code
        for path in ("/plugins", "/mcp/commands", "/mcp/status", "/plugins/Core")
    ]
    assert statuses == [401, 401, 401, 429]
    # spent: the right key from there is refused too, so a 429 confirms no guess
    response = client.get("/mcp/status", headers=keys.headers())
    error = assert_envelope(response, 429, "RATE_LIMITED")
    assert error["message"] == "too many refused keys from this address: 3 per 1 minute"
    assert int(response.headers["Retry-After"]) >= 1
    # another address has its own budget; requests without a key are not throttled by it
    other = {"REMOTE_ADDR": "127.0.0.9"}
    assert client.get("/mcp/status", headers=keys.headers(), environ_base=other).status_code == 200
    assert client.get("/health").status_code == 200
