"""The deployment kit, tested as shipped: nginx in front of real gunicorn, the Prometheus
config and rules, the Grafana dashboard, the systemd unit, and the API's Python example."""

import contextlib
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.conftest import ROOT
from tests.nginx import Nginx
from tests.test_metrics import scrape

DEPLOY = ROOT / "deploy"
# The API's Python example as printed for readers (spec v2.0.0, 9.2), kept with the tests.
PYTHON_EXAMPLE = ROOT / "tests" / "fixtures" / "api_python_example.py"


@pytest.fixture
def nginx_in_front(server_factory, keys):
    """The shipped site, with only its @TEST@ lines pointed at loopback ports and a tmp cert."""
    server = server_factory(
        workers=2, WAYGATE_TRUSTED_PROXIES="1", WAYGATE_RATE_LIMIT_HEALTH="3/minute"
    )
    nginx = Nginx([server.port]).start()
    yield {"server": server, "https": nginx.https, "http": nginx.http, "root": nginx.root}
    nginx.stop()


def call(port, method, path, source="127.0.0.1", headers=None, body=None):
    """An HTTPS request to nginx from a chosen loopback address (a distinct client)."""
    context = ssl._create_unverified_context()  # noqa: S323 - our own self-signed test cert
    conn = http.client.HTTPSConnection(
        "127.0.0.1", port, source_address=(source, 0), context=context, timeout=10
    )
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, dict(response.getheaders()), data


class SlowClients:
    """Connections that hold a server as slow and idle clients do, all from 127.0.0.1: a third
    send one header line a second, a third send nothing once connected, a third send whole
    headers and then their body a byte a second."""

    def __init__(self, port: int, count: int, tls: bool):
        self.port, self.tls = port, tls
        self.stop = threading.Event()
        self.headers, self.idle, self.bodies = [], [], []
        for number in range(count):
            kind = (self.headers, self.idle, self.bodies)[number % 3]
            kind.append(self._connect())
        for sock in self.headers:
            self._send(sock, b"GET / HTTP/1.1\r\nHost: localhost\r\n")
        for sock in self.bodies:
            self._send(
                sock,
                b"POST /mcp/execute HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
            )
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        if self.tls:
            context = ssl._create_unverified_context()  # noqa: S323 - our own test cert
            sock = context.wrap_socket(sock, server_hostname="localhost")
        return sock

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the server gave up on this one: allowed
            sock.sendall(data)

    def _trickle(self) -> None:
        line = 0
        while not self.stop.wait(1):
            line += 1
            for sock in self.headers:
                self._send(sock, b"X-Slow-%d: y\r\n" % line)
            for sock in self.bodies:
                self._send(sock, b" ")

    def refused_bodies(self) -> int:
        """How many of the slow uploads were answered 429 (too many from one address)."""
        refused = 0
        for sock in self.bodies:
            sock.setblocking(False)  # an answer is in by now, or none is coming
            with contextlib.suppress(OSError):  # nothing to read, or closed
                refused += sock.recv(64).startswith(b"HTTP/1.1 429")
        return refused

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.headers + self.idle + self.bodies:
            sock.close()


def probe_latencies(port: int, count: int, tls: bool) -> list[float]:
    """Seconds each of ``count`` fresh clients (from 127.0.0.2) took to get GET / answered
    200; a probe that failed or took 3 s counts as 3 s."""
    latencies = []
    for _ in range(count):
        started = time.monotonic()
        if tls:
            context = ssl._create_unverified_context()  # noqa: S323 - our own test cert
            conn = http.client.HTTPSConnection(
                "127.0.0.1", port, source_address=("127.0.0.2", 0), context=context, timeout=3
            )
        else:
            conn = http.client.HTTPConnection(
                "127.0.0.1", port, source_address=("127.0.0.2", 0), timeout=3
            )
        try:
            conn.request("GET", "/")
            ok = conn.getresponse().status == 200
        except OSError:
            ok = False
        finally:
            conn.close()
        latencies.append(time.monotonic() - started if ok else 3.0)
    return latencies


def test_slow_and_idle_clients_do_not_stop_others_behind_nginx(nginx_in_front):
    """200 slow or idle connections: gunicorn alone serves no one (0 of 5 probes); through
    the shipped site at least 95 % of probes are answered within 1 s, and one address holds
    at most 50 requests in progress."""
    slow = SlowClients(nginx_in_front["https"], 200, tls=True)
    try:
        time.sleep(1)  # every slow client has sent something and is waiting
        latencies = probe_latencies(nginx_in_front["https"], 40, tls=True)
        refused = slow.refused_bodies()
    finally:
        slow.close()
    served = sum(latency <= 1.0 for latency in latencies)
    assert served >= 0.95 * len(latencies), sorted(latencies)[-5:]
    assert refused >= len(slow.bodies) - 50


def test_rate_limits_count_per_real_client_behind_nginx(nginx_in_front):
    port = nginx_in_front["https"]
    statuses = [call(port, "GET", "/health")[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    # another client behind the same proxy has its own budget
    assert call(port, "GET", "/health", source="127.0.0.2")[0] == 200


def test_headers_pass_through_nginx(nginx_in_front, keys):
    status, headers, body = call(
        nginx_in_front["https"],
        "POST",
        "/mcp/execute",
        headers={"Content-Type": "application/json", "X-API-Key": keys.user},
        body=json.dumps({"action": "echo", "params": {"message": "hi"}}),
    )
    assert status == 200, body
    assert json.loads(body)["result"] == {"result": "hi"}
    assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-ID"])  # nginx's $request_id
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Strict-Transport-Security"] == "max-age=31536000"  # proto reached Waygate
    assert headers["X-RateLimit-Limit"] == "100"


# Every spelling of a path that reaches the metrics view once nginx and Waygate have decoded
# and normalised it.
METRICS_PATHS = [
    "/metrics",
    "/v2/metrics",
    "/metrics?x=1",
    "/v2/metrics?version=2",
    "//metrics",
    "/v2//metrics",
    "/v2/./metrics",
    "/x/../v2/metrics",
    "/v2%2Fmetrics",
    "/%6Detrics",
    "/v2/%6detrics",
]


def test_metrics_only_for_the_scrapers_network(nginx_in_front):
    port = nginx_in_front["https"]
    for path in ("/metrics", "/v2/metrics"):
        status, _, body = call(port, "GET", path)
        assert status == 200 and b"waygate_requests_total" in body, path
    leaked = {}
    for path in METRICS_PATHS:
        status, _, body = call(port, "GET", path, source="127.0.0.3")
        if status != 403 or b"waygate_requests_total" in body:
            leaked[path] = status
    assert leaked == {}


def test_a_clients_forwarded_prefix_does_not_pass(nginx_in_front, keys):
    status, headers, _ = call(
        nginx_in_front["https"],
        "GET",
        "/plugins?limit=1",
        headers={"X-API-Key": keys.user, "X-Forwarded-Prefix": "//evil.example"},
    )
    assert status == 200
    assert "evil.example" not in headers["Link"]
    assert headers["Link"].startswith("</plugins?limit=1&page=1>")


def test_nginx_refuses_oversize_bodies_in_the_envelope(nginx_in_front):
    with socket.create_connection(("127.0.0.1", nginx_in_front["https"])) as raw:
        context = ssl._create_unverified_context()  # noqa: S323 - our own self-signed test cert
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(
                b"POST /mcp/execute HTTP/1.1\r\nHost: localhost\r\n"
                b"Content-Type: application/json\r\nContent-Length: 20000000\r\n"
                b"Connection: close\r\n\r\n{"
            )
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
    head, _, body = reply.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 413")
    error = json.loads(body)["error"]
    assert error["code"] == "INVALID_REQUEST" and error["details"] == {"max_bytes": 16777216}


def test_plain_http_redirects_to_https(nginx_in_front):
    response = requests.get(
        f"http://127.0.0.1:{nginx_in_front['http']}/health", allow_redirects=False, timeout=5
    )
    assert response.status_code == 308
    assert response.headers["Location"].startswith("https://")


def test_prometheus_config_and_rules_pass_promtool():
    for args in (
        ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        ["check", "rules", str(DEPLOY / "prometheus" / "waygate-rules.yml")],
        # each alert fires on the series it watches, and stays quiet on healthy ones
        ["test", "rules", str(DEPLOY / "prometheus" / "waygate-rules.test.yml")],
    ):
        result = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_and_rules_use_only_metrics_waygate_exports(client):
    exported = set(re.findall(r"^# TYPE (\w+) ", scrape(client), re.M))
    series = {
        f"{name}{suffix}"
        for name in exported
        for suffix in ("", "_total", "_bucket", "_count", "_sum")
    }
    dashboard = json.loads((DEPLOY / "grafana" / "waygate-dashboard.json").read_text())
    expressions = [  # Prometheus queries (the Tempo panel's are TraceQL)
        t["expr"] for panel in dashboard["panels"] for t in panel["targets"] if "expr" in t
    ]
    expressions.append((DEPLOY / "prometheus" / "waygate-rules.yml").read_text())
    used = set()
    for expr in expressions:
        used |= set(re.findall(r"\b(waygate_\w+)", expr))
    assert used and used <= series, used - series


def test_the_systemd_unit_verifies_and_is_hardened(tmp_path):
    unit = (DEPLOY / "systemd" / "waygate.service").read_text()
    for option in (
        "User=waygate",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "Restart=on-failure",
        "KillSignal=SIGTERM",
        "ExecReload=/bin/kill -HUP",
    ):
        assert option in unit, option
    assert "ExecStart=/opt/waygate/venv/bin/waygate serve" in unit
    assert "EnvironmentFile=/etc/waygate/waygate.env" in unit
    # point it at this venv so that systemd can check the commands it would run
    local = tmp_path / "waygate.service"
    env_file = tmp_path / "waygate.env"
    env_file.write_text((DEPLOY / "systemd" / "waygate.env").read_text())
    local.write_text(
        unit.replace("/opt/waygate/venv", sys.prefix).replace(
            "/etc/waygate/waygate.env", str(env_file)
        )
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    problems = [
        line for line in (result.stdout + result.stderr).splitlines() if "waygate.service" in line
    ]
    assert not problems, problems


def test_the_spec_python_example_runs_as_written(server_factory, keys, tmp_path):
    server = server_factory(workers=1)
    code = PYTHON_EXAMPLE.read_text()
    # the two configuration lines the reader is meant to fill in
    code = code.replace('BASE_URL = "http://localhost:8000"', f'BASE_URL = "{server.url}"')
    code = code.replace('API_KEY = "your-api-key-here"', f'API_KEY = "{keys.user}"')
    script = tmp_path / "example.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "'status': 'healthy'" in lines[0]
    assert lines[1] == "Status: failed"  # "sample data" is not JSON: a clear answer, not a 500
    assert re.fullmatch(r"Duration: \d+ms", lines[2])


def test_the_example_environment_file_is_a_valid_configuration():
    from dotenv import dotenv_values

    from waygate.config import Config

    values = dotenv_values(DEPLOY / "systemd" / "waygate.env")
    config = Config.from_env({k: v for k, v in values.items() if k.startswith("WAYGATE_")})
    assert str(config.data_dir) == "/var/lib/waygate" and config.trusted_proxies == 1


def test_the_vector_example_reads_the_audit_file_and_its_rotations_only(tmp_path):
    """deploy/vector/waygate-audit.yaml's globs take the file WAYGATE_AUDIT_LOG names in the
    shipped data dir and the ones rotated from it, never the rotation's lock file; its
    transform parses the lines Waygate writes."""
    import fnmatch

    import yaml

    from waygate.auditfile import AuditFile

    config = yaml.safe_load((DEPLOY / "vector" / "waygate-audit.yaml").read_text())
    source = config["sources"]["waygate_audit"]
    data_dir = re.search(
        r"^WAYGATE_DATA_DIR=(.+)$", (DEPLOY / "systemd" / "waygate.env").read_text(), re.M
    )[1]
    audit = AuditFile(tmp_path / "audit.jsonl", max_bytes=200)
    for n in range(4):
        audit.write([{"type": "execution", "command_id": f"cmd_{n}", "padding": "x" * 150}])
    written = sorted(p.name for p in tmp_path.iterdir())
    assert ".audit.jsonl.lock" in written and "audit.jsonl.1" in written
    taken = [
        name
        for name in written
        if any(fnmatch.fnmatch(f"{data_dir}/{name}", glob) for glob in source["include"])
    ]
    assert taken == [name for name in written if name.startswith("audit.jsonl")]
    assert "parse_json!" in config["transforms"]["waygate_audit_parsed"]["source"]
    for name in taken:
        for line in (tmp_path / name).read_text().splitlines():
            assert json.loads(line)["type"] == "execution"
    sinks = config["sinks"]
    assert {s["type"] for s in sinks.values()} == {"splunk_hec_logs", "elasticsearch", "loki"}
    assert all(s["inputs"] == ["waygate_audit_parsed"] for s in sinks.values())
