"""Versioning: /v2 paths, the vendor media type, and the deprecated ?version parameter."""

import pytest

from tests.test_http import assert_envelope


def test_every_endpoint_also_answers_under_v2(client, keys):
    for path in ("/", "/health", "/ready", "/metrics"):
        assert client.get("/v2" + path).status_code == 200, path
    assert client.get("/v2/mcp/status", headers=keys.headers()).status_code == 200
    response = client.post(
        "/v2/mcp/execute",
        headers=keys.headers(),
        json={"action": "echo", "params": {"message": "v2"}},
    )
    assert response.get_json()["result"] == {"result": "v2"}


def test_v2_paths_share_limits_with_the_unprefixed_ones(make_app):
    client = make_app(rate_limit_health="2/minute").test_client()
    assert [client.get(p).status_code for p in ("/health", "/v2/health", "/health")] == [
        200,
        200,
        429,
    ]


def test_async_location_keeps_the_v2_prefix(client, keys):
    response = client.post(
        "/v2/mcp/execute", headers=keys.headers(), json={"action": "test", "async": True}
    )
    assert response.headers["Location"].startswith("/v2/mcp/executions/cmd_")


def test_the_vendor_media_type_is_honoured(client):
    response = client.get("/health", headers={"Accept": "application/vnd.waygate.v2+json"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/vnd.waygate.v2+json"
    assert response.get_json(force=True)["status"] == "healthy"


def test_plain_json_stays_plain(client):
    assert (
        client.get("/health", headers={"Accept": "application/json"}).mimetype == "application/json"
    )


def test_version_query_parameter_is_deprecated_but_works(client):
    response = client.get("/health?version=2")
    assert response.status_code == 200
    assert response.headers["Deprecation"] == "@1736812800"
    assert response.headers["Sunset"] == "Thu, 01 Jul 2027 00:00:00 GMT"
    assert "Deprecation" not in client.get("/health").headers


@pytest.mark.parametrize(
    "path, headers, status",
    [
        ("/v1/health", {}, 404),
        ("/v3/mcp/status", {}, 404),
        ("/health?version=1", {}, 400),
        ("/health", {"Accept": "application/vnd.waygate.v3+json"}, 406),
    ],
)
def test_an_unknown_version_is_a_4xx_envelope(client, path, headers, status):
    error = assert_envelope(
        client.get(path, headers=headers),
        status,
        "NOT_FOUND" if status == 404 else "INVALID_REQUEST",
    )
    assert "2" in str(error["details"]["supported"])
