"""The error envelope on every failure path, and the headers every response carries."""

import re

import pytest
import requests
from werkzeug.test import create_environ, run_wsgi_app

from tests.conftest import ROOT

SPEC_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "X-XSS-Protection": "1; mode=block",
    "Content-Security-Policy": "default-src 'self'",
}


def assert_envelope(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == code
    assert set(error) == {"code", "message", "details", "timestamp", "request_id"}
    assert isinstance(error["details"], dict)
    assert error["request_id"] == response.headers["X-Request-ID"]
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", error["timestamp"])
    body = response.get_data(as_text=True)
    assert "Traceback" not in body and "site-packages" not in body and str(ROOT) not in body
    return error


def test_unknown_path_is_404_envelope(client):
    error = assert_envelope(client.get("/no/such/thing"), 404, "NOT_FOUND")
    assert error["details"] == {"path": "/no/such/thing"}


def test_wrong_method_is_405_envelope_with_allow(client):
    response = client.delete("/health")
    error = assert_envelope(response, 405, "METHOD_NOT_ALLOWED")
    assert "GET" in response.headers["Allow"]
    assert "GET" in error["details"]["allowed"]


def test_body_over_the_limit_is_413_before_it_is_read(make_app):
    client = make_app(max_body_bytes=4096).test_client()
    response = client.post("/health", data=b"x" * 5000, content_type="application/json")
    error = assert_envelope(response, 413, "INVALID_REQUEST")
    assert error["details"] == {"max_bytes": 4096}


def test_413_is_answered_from_content_length_without_reading_the_body(make_app):
    class Exploding:
        def read(self, *args):
            raise AssertionError("the body was read")

        readline = readlines = read

    app = make_app(max_body_bytes=4096)
    environ = create_environ("/health", method="POST", content_type="application/json")
    environ.update({"wsgi.input": Exploding(), "CONTENT_LENGTH": "99999999"})
    body, status, headers = run_wsgi_app(app, environ, buffered=True)
    assert status.startswith("413")
    assert b'"code":"INVALID_REQUEST"' in b"".join(body)


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"action": ', "malformed JSON"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b"", "empty"),
        (b"[" * 100 + b"]" * 100, "nested deeper"),
    ],
)
def test_bad_json_bodies_are_400_envelopes(probe_client, body, message):
    response = probe_client.post("/_probe/json", data=body, content_type="application/json")
    error = assert_envelope(response, 400, "INVALID_REQUEST")
    assert message in error["message"]


def test_json_body_needs_a_json_content_type(probe_client):
    response = probe_client.post("/_probe/json", data=b"{}", content_type="text/plain")
    assert_envelope(response, 400, "INVALID_REQUEST")


def test_well_formed_json_is_accepted(probe_client):
    response = probe_client.post("/_probe/json", json={"a": [1, 2]})
    assert response.status_code == 200
    assert response.get_json() == {"received": {"a": [1, 2]}}


@pytest.mark.parametrize(
    "method, path",
    [
        ("post", "/mcp/execute"),
        ("post", "/keys"),
        ("patch", "/keys/ops-user"),
        ("post", "/keys/ops-user/rotate"),
        ("post", "/mcp/executions/cmd_0/approve"),
        ("post", "/mcp/executions/cmd_0/deny"),
    ],
)
def test_a_body_that_is_not_an_object_is_refused_alike_on_every_endpoint(
    client, keys, method, path
):
    response = getattr(client, method)(path, json=7, headers=keys.headers("admin"))
    error = assert_envelope(response, 400, "INVALID_REQUEST")
    assert error["details"] == {"received": "int"}
    assert error["message"].endswith("must be a JSON object")


def test_an_unexpected_exception_is_a_500_envelope_without_internals(probe_client, caplog):
    response = probe_client.get("/_probe/boom")
    error = assert_envelope(response, 500, "INTERNAL_ERROR")
    assert "secret detail" not in response.get_data(as_text=True)
    assert "request_id" in error["message"]


def test_unexpected_exception_is_logged_with_the_request_id(probe_client, capfd):
    response = probe_client.get("/_probe/boom", headers={"X-Request-ID": "trace-me-42"})
    assert response.headers["X-Request-ID"] == "trace-me-42"
    err = capfd.readouterr().err
    assert "request_id=trace-me-42" in err and "RuntimeError" in err


@pytest.mark.parametrize("path", ["/", "/health", "/ready", "/missing"])
def test_security_headers_on_every_response(client, path):
    response = client.get(path)
    for name, value in SPEC_SECURITY_HEADERS.items():
        assert response.headers[name] == value


def test_a_sane_request_id_is_echoed(client):
    response = client.get("/health", headers={"X-Request-ID": "abc-123_DEF.4"})
    assert response.headers["X-Request-ID"] == "abc-123_DEF.4"


@pytest.mark.parametrize("incoming", ["x" * 200, "has space", 'quote"d', "<script>"])
def test_an_insane_request_id_is_replaced(client, incoming):
    response = client.get("/health", headers={"X-Request-ID": incoming})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def test_a_request_id_is_generated_when_none_is_sent(client):
    first = client.get("/").headers["X-Request-ID"]
    second = client.get("/").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first != second


def test_cors_allows_the_configured_origin(client):
    response = client.get("/health", headers={"Origin": "http://localhost:3000"})
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


def test_cors_gives_no_allow_header_to_other_origins(client):
    response = client.get("/health", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_preflight_lists_the_spec_methods_and_headers(client):
    response = client.options(
        "/health",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type, X-API-Key",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    for method in ("GET", "POST", "PUT", "DELETE", "OPTIONS"):
        assert method in response.headers["Access-Control-Allow-Methods"]
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    assert "content-type" in allowed and "x-api-key" in allowed


def test_cors_origins_come_from_config(make_app):
    client = make_app(cors_origins=("https://ops.example",)).test_client()
    assert (
        client.get("/", headers={"Origin": "https://ops.example"}).headers[
            "Access-Control-Allow-Origin"
        ]
        == "https://ops.example"
    )
    assert (
        "Access-Control-Allow-Origin"
        not in client.get("/", headers={"Origin": "http://localhost:3000"}).headers
    )


def test_rate_limit_headers_and_429_envelope(make_app):
    client = make_app(rate_limit_health="2/minute").test_client()
    first = client.get("/health")
    assert first.headers["X-RateLimit-Limit"] == "2"
    assert first.headers["X-RateLimit-Remaining"] == "1"
    assert int(first.headers["X-RateLimit-Reset"]) > 0
    assert "Retry-After" not in first.headers
    client.get("/health")
    third = client.get("/health")
    error = assert_envelope(third, 429, "RATE_LIMITED")
    assert int(third.headers["Retry-After"]) > 0
    assert third.headers["X-RateLimit-Remaining"] == "0"
    assert "2 per 1 minute" in error["message"]


def test_other_endpoints_get_the_default_limit(make_app):
    client = make_app(rate_limit_default="1/minute").test_client()
    assert client.get("/").status_code == 200
    assert_envelope(client.get("/"), 429, "RATE_LIMITED")
    assert client.get("/health").status_code == 200  # its own limit


def test_without_trusted_proxies_forwarded_for_is_ignored(make_app):
    client = make_app(rate_limit_health="1/minute").test_client()
    assert client.get("/health", headers={"X-Forwarded-For": "10.0.0.1"}).status_code == 200
    assert client.get("/health", headers={"X-Forwarded-For": "10.0.0.2"}).status_code == 429


def test_with_a_trusted_proxy_each_client_ip_has_its_own_budget(make_app):
    client = make_app(rate_limit_health="1/minute", trusted_proxies=1).test_client()
    assert client.get("/health", headers={"X-Forwarded-For": "10.0.0.1"}).status_code == 200
    assert client.get("/health", headers={"X-Forwarded-For": "10.0.0.2"}).status_code == 200
    assert client.get("/health", headers={"X-Forwarded-For": "10.0.0.1"}).status_code == 429


def test_a_damaged_rate_limit_file_is_set_aside_and_recreated(data_dir, make_app):
    (data_dir / "ratelimits.db").write_bytes(b"this is not a database" * 100)
    client = make_app(
        rate_limit_health="1/minute",
        ratelimit_storage_uri=f"sqlite:///{data_dir.resolve() / 'ratelimits.db'}",
    ).test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/health").status_code == 429  # counting works again
    assert (data_dir / "ratelimits.db.damaged").exists()


def test_a_damaged_rate_limit_table_is_made_again(data_dir, make_app):
    (data_dir / "ratelimits.table").write_bytes(b"this is not a table" * 100)
    client = make_app(rate_limit_health="1/minute").test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/health").status_code == 429  # counting works again


def test_links_never_echo_the_host_header(client, keys):
    response = client.get(
        "/plugins?limit=1",
        headers=keys.headers(Host="evil.example"),
        base_url="http://evil.example",
    )
    link = response.headers["Link"]
    assert "evil.example" not in link
    assert '</plugins?limit=1&page=2>; rel="next"' in link


def test_links_are_absolute_under_the_configured_public_url(make_app, keys):
    client = make_app(public_url="https://waygate.example.com").test_client()
    response = client.get("/v2/plugins?limit=1", headers=keys.headers(Host="evil.example"))
    assert (
        '<https://waygate.example.com/v2/plugins?limit=1&page=2>; rel="next"'
        in (response.headers["Link"])
    )


def test_gunicorn_trusts_no_forwarded_header_without_trusted_proxies(server_factory, keys):
    """Real gunicorn, a loopback client: X-Forwarded-Proto must not make the request HTTPS."""
    server = server_factory(workers=1)
    response = requests.get(
        server.url + "/plugins?limit=1",
        headers=keys.headers(**{"X-Forwarded-Proto": "https", "Host": "evil.example"}),
        timeout=5,
    )
    assert response.status_code == 200
    assert "Strict-Transport-Security" not in response.headers
    assert "evil.example" not in response.headers["Link"]
    assert "https" not in response.headers["Link"]
