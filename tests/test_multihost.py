"""Two Waygate hosts (own data dirs, 2 gunicorn workers each) sharing one PostgreSQL and one
Redis, behind the shipped nginx site with both as upstreams: what a user sees is one service.

The hosts start once for the module; each test uses keys and commands of its own. The last test
kills host A. The figures (requests served per host, audit rows, lease time observed) go to
``multihost-figures.json`` in pytest's base temp dir and to the run's summary.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests

from tests.conftest import BIN, FIGURES, PluginDist, Server, start_redis
from tests.nginx import Nginx
from tests.test_engine_server import SPREAD
from tests.test_mcp_notify import Listener
from tests.test_metrics import sample

LEASE_S = 4
HOUSEKEEPING_S = 1

WHERE_PLUGIN = """
import os, time
from marshmallow import Schema
from waygate.sdk import Command, Plugin


class Where(Plugin):
    name = "Where"
    version = "1.0.0"
    description = "tells which worker answered"
    author = "tests"

    def commands(self):
        def where(params, ctx):
            time.sleep(0.05)  # held a moment, so concurrent clients spread over the workers
            return {"pid": os.getpid()}

        return [Command("where", "The worker's pid", Schema.from_dict({}), where)]
"""


@dataclass(repr=False)
class Hosts:
    a: Server
    b: Server
    nginx: Nginx
    plugins: PluginDist
    admin: str

    @property
    def front(self) -> str:
        return f"https://127.0.0.1:{self.nginx.https}"

    def hosts_by_pid(self) -> dict[int, str]:
        return {pid: name for name in ("a", "b") for pid in getattr(self, name).worker_pids()}

    def admin_headers(self) -> dict:
        return {"X-API-Key": self.admin}

    @property
    def http(self) -> requests.Session:
        """A client that trusts nginx's test certificate."""
        session = requests.Session()
        session.trust_env = False  # else REQUESTS_CA_BUNDLE would override verify
        session.verify = str(self.nginx.cert)
        return session


@pytest.fixture(scope="module")
def figures(request, tmp_path_factory):
    found: dict = {}
    yield found
    path = tmp_path_factory.getbasetemp() / "multihost-figures.json"
    path.write_text(json.dumps(found, indent=2, sort_keys=True))
    request.config.stash.setdefault(FIGURES, {})["multi-host"] = {**found, "file": str(path)}


@pytest.fixture(scope="module")
def hosts(pg_cluster, pg_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    db_url = pg_cluster.create_database(template=pg_template)
    redis_uri, redis_proc = start_redis(root)
    plugins = PluginDist(root / "site")
    plugins.register("Testing", "tests.plugin_fixtures:TestingPlugin")
    env = {
        "WAYGATE_DATABASE_URL": db_url,
        "WAYGATE_RATELIMIT_STORAGE_URI": redis_uri,
        "WAYGATE_TRUSTED_PROXIES": "1",
        "WAYGATE_LEASE_S": str(LEASE_S),
        "WAYGATE_HOUSEKEEPING_INTERVAL_S": str(HOUSEKEEPING_S),
        "PYTHONPATH": str(plugins.root),
        "GUNICORN_CMD_ARGS": SPREAD,
    }
    servers = []
    try:
        for name in ("a", "b"):
            (root / name / "data").mkdir(parents=True)
            servers.append(Server(data_dir=root / name / "data", workers=2, env=env).start())
        admin = create_key_with_cli(servers[0], "ops-admin", "admin")
        nginx = Nginx([s.port for s in servers]).start()
        yield Hosts(servers[0], servers[1], nginx, plugins, admin)
        nginx.stop()
    finally:
        for server in servers:
            server.stop()
        redis_proc.kill()
        redis_proc.wait()
        pg_cluster.drop_database(db_url.rsplit("/", 1)[1])


def create_key_with_cli(server: Server, name: str, role: str) -> str:
    """`waygate keys create` run against the host's configuration; the key (last line)."""
    done = subprocess.run(
        [str(BIN / "waygate"), "keys", "create", "--name", name, "--role", role],
        env={**os.environ, "WAYGATE_DATA_DIR": str(server.data_dir), **server.env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def create_key(hosts: Hosts, base: str, on: Server | None = None) -> tuple[str, str]:
    """A new user key made with POST /keys (on ``on``, else through nginx): (name, key)."""
    name = f"{base}-{secrets.token_hex(3)}"
    url = (on.url if on else hosts.front) + "/keys"
    response = hosts.http.post(
        url, json={"name": name, "role": "user"}, headers=hosts.admin_headers(), timeout=10
    )
    assert response.status_code == 201, response.text
    return name, response.json()["key"]


def execute(hosts: Hosts, base: str, key: str, body: dict) -> requests.Response:
    return hosts.http.post(base + "/mcp/execute", json=body, headers={"X-API-Key": key}, timeout=10)


def status_of(hosts: Hosts, base: str, key: str) -> int:
    return hosts.http.get(base + "/mcp/status", headers={"X-API-Key": key}, timeout=10).status_code


def test_a_key_created_on_a_works_on_b_at_once(hosts):
    _, key = create_key(hosts, "made-on-a", on=hosts.a)
    assert [status_of(hosts, hosts.b.url, key) for _ in range(6)] == [200] * 6
    assert execute(hosts, hosts.b.url, key, {"action": "pid"}).status_code == 200


def test_a_key_made_with_the_cli_works_on_both_hosts(hosts):
    key = create_key_with_cli(hosts.b, f"cli-{secrets.token_hex(3)}", "user")
    assert {status_of(hosts, server.url, key) for server in (hosts.a, hosts.b)} == {200}


def test_a_key_revoked_on_b_is_refused_on_a_at_once(hosts):
    name, key = create_key(hosts, "revoked-on-b")
    assert [status_of(hosts, hosts.a.url, key) for _ in range(6)] == [
        200
    ] * 6  # known to A's workers
    revoked = hosts.http.delete(
        f"{hosts.b.url}/keys/{name}", headers=hosts.admin_headers(), timeout=10
    )
    assert revoked.status_code == 200
    with ThreadPoolExecutor(4) as pool:  # concurrent, so both of A's workers answer
        statuses = list(pool.map(lambda _: status_of(hosts, hosts.a.url, key), range(12)))
    assert statuses == [401] * 12
    assert status_of(hosts, hosts.front, key) == 401


def test_the_per_key_limit_is_exact_across_both_hosts(hosts, figures):
    _, key = create_key(hosts, "limited")
    body = {"action": "pid", "params": {"seconds": 0.05}}
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: execute(hosts, hosts.front, key, body), range(130)))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 100, 429: 30}
    host_of = hosts.hosts_by_pid()
    served = Counter(host_of.get(r.json()["result"]["pid"], "?") for r in responses if r.ok)
    assert served["a"] > 0 and served["b"] > 0 and served["?"] == 0
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "RATE_LIMITED"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    # whichever host is asked next, the key is spent
    assert {execute(hosts, s.url, key, body).status_code for s in (hosts.a, hosts.b)} == {429}
    figures["limit"] = {"allowed": statuses[200], "refused": statuses[429], **served}


def test_a_reload_on_one_host_reaches_every_worker_of_every_host_within_2_s(hosts, figures):
    _, key = create_key(hosts, "reloader")
    where = {"action": "where"}
    assert execute(hosts, hosts.b.url, key, where).status_code == 400  # no such command yet
    plugins = hosts.plugins
    plugins.write_module("where_plugin", WHERE_PLUGIN)
    plugins.register("Where", "where_plugin:Where")
    reload = hosts.http.post(
        hosts.a.url + "/plugins/reload", headers=hosts.admin_headers(), timeout=10
    )
    answered = time.monotonic()
    assert reload.status_code == 200 and "Where" in reload.json()["loaded"]
    # the first time the other host serves the new command (a figure, not the promise)
    while execute(hosts, hosts.b.url, key, where).status_code != 200:
        assert time.monotonic() - answered < 2.0, "host B still serves the old plugin set"
        time.sleep(0.02)  # at most ~80 polls in 2 s: within the key's 100/minute
    seen_on_b = time.monotonic() - answered
    time.sleep(max(0.0, 2.0 - (time.monotonic() - answered)))
    # the promise: 2 s after the reload answered, no worker of any host serves the old set
    # (asked with a key of its own: the polls above may have used much of the first one's limit)
    _, key = create_key(hosts, "reload-checker")
    for server in (hosts.a, hosts.b):
        with ThreadPoolExecutor(6) as pool:
            responses = list(
                pool.map(lambda _, s=server: execute(hosts, s.url, key, where), range(24))
            )
        assert [r.status_code for r in responses] == [200] * 24
        assert {r.json()["result"]["pid"] for r in responses} == set(server.worker_pids())
    figures["reload_seen_on_other_host_s"] = round(seen_on_b, 3)


HEARD_PLUGIN = WHERE_PLUGIN.replace("Where", "Heard").replace('"where"', '"heard"')


def test_a_reload_on_one_host_reaches_a_listener_on_the_other(hosts, figures):
    """subscriptions/listen across hosts: the plugin generation in PostgreSQL carries it."""
    _, key = create_key(hosts, "listener")
    listener = Listener(hosts.b.port, key, {"toolsListChanged": True})
    try:
        assert listener.next()["method"] == "notifications/subscriptions/acknowledged"
        hosts.plugins.write_module("heard_plugin", HEARD_PLUGIN)
        hosts.plugins.register("Heard", "heard_plugin:Heard")
        reload = hosts.http.post(
            hosts.a.url + "/plugins/reload", headers=hosts.admin_headers(), timeout=10
        )
        answered = time.monotonic()
        assert reload.status_code == 200 and "Heard" in reload.json()["loaded"]
        told = listener.next()
        figures["listen_told_on_other_host_s"] = round(time.monotonic() - answered, 3)
        assert told["method"] == "notifications/tools/list_changed"
        assert told["params"]["_meta"] == {"io.modelcontextprotocol/subscriptionId": 1}
    finally:
        listener.close()


def test_nginx_passes_a_listeners_leaving_on_at_once(hosts, figures):
    """Through the shipped nginx site: the stream is not buffered (the acknowledgment arrives),
    and a client that leaves ends the listen upstream well before the next keep-alive (15 s):
    its access line (written when a request ends) appears on the host that held it."""
    import ssl

    _, key = create_key(hosts, "nginx-listener")
    tls = ssl.create_default_context(cafile=str(hosts.nginx.cert))
    listener = Listener(hosts.nginx.https, key, {"toolsListChanged": True}, tls=tls)
    request_id = listener.response.getheader("X-Request-ID")
    assert listener.next()["method"] == "notifications/subscriptions/acknowledged"

    def ended() -> bool:
        return any(f"request_id={request_id}" in s.log() for s in (hosts.a, hosts.b))

    assert request_id and not ended()
    listener.close()
    left = time.monotonic()
    while not ended():
        assert time.monotonic() - left < 10, "the listen was still open upstream"
        time.sleep(0.05)
    figures["listen_freed_through_nginx_s"] = round(time.monotonic() - left, 3)


def test_any_host_answers_a_poll_for_any_execution(hosts):
    _, key = create_key(hosts, "poller")
    body = {"action": "steps", "params": {"count": 2, "pause": 0.3}, "async": True}
    accepted = execute(hosts, hosts.a.url, key, body)
    assert accepted.status_code == 202
    location = accepted.headers["Location"]
    headers = {"X-API-Key": key}
    first = hosts.http.get(hosts.b.url + location, headers=headers, timeout=10)
    assert first.status_code == 200
    assert first.json()["status"] in ("pending", "running")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        polled = hosts.http.get(hosts.b.url + location, headers=headers, timeout=10).json()
        if polled["status"] == "success":
            break
        time.sleep(0.1)
    assert polled["status"] == "success"
    assert polled["result"] == {"steps": 2}
    for base in (hosts.a.url, hosts.front):
        again = hosts.http.get(base + location, headers=headers, timeout=10)
        assert again.json()["status"] == "success"


def test_the_audit_count_equals_the_successes_served_by_both(hosts, figures):
    _, key = create_key(hosts, "audited")
    body = {"action": "sleep", "params": {"seconds": 0.02}}
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: execute(hosts, hosts.front, key, body), range(60)))
    assert [r.status_code for r in responses] == [200] * 60
    served = {
        name: sample(
            hosts.http.get(server.url + "/metrics", timeout=10).text,
            "waygate_commands_total",
            action="sleep",
            status="success",
        )
        for name, server in (("a", hosts.a), ("b", hosts.b))
    }
    audit = hosts.http.get(
        hosts.front + "/mcp/executions?action=sleep&status=success",
        headers=hosts.admin_headers(),
        timeout=10,
    ).json()
    assert served["a"] > 0 and served["b"] > 0
    assert audit["total"] == served["a"] + served["b"] == 60
    figures["audit"] = {"rows": audit["total"], "served_a": served["a"], "served_b": served["b"]}


def test_concurrent_duplicates_sent_to_both_hosts_run_once(hosts, figures):
    """One Idempotency-Key, the same request sent at once to both hosts (both workers of
    each): exactly one execution in the shared database; every other answer is its replay or
    409 while it runs. Then the same key under another key's name is its own."""
    _, key = create_key(hosts, "idempotent")
    body = {"action": "wait", "params": {"seconds": 0.5}}
    headers = {"X-API-Key": key, "Idempotency-Key": "restart-db-1"}
    bases = [hosts.a.url, hosts.b.url] * 6
    start = threading.Barrier(len(bases))

    def send(base):
        start.wait()
        return hosts.http.post(base + "/mcp/execute", json=body, headers=headers, timeout=30)

    with ThreadPoolExecutor(len(bases)) as pool:
        answers = list(pool.map(send, bases))
    assert {a.status_code for a in answers} <= {200, 409}, [a.text for a in answers]
    ran = [a for a in answers if a.status_code == 200 and "Idempotent-Replayed" not in a.headers]
    assert len(ran) == 1, [a.text for a in answers]
    command_id = ran[0].json()["command_id"]
    assert {a.json()["command_id"] for a in answers if a.status_code == 200} == {command_id}
    audit = hosts.http.get(
        hosts.front + "/mcp/executions?action=wait&limit=100",
        headers=hosts.admin_headers(),
        timeout=10,
    ).json()
    assert [row["command_id"] for row in audit["executions"]] == [command_id]
    for base in (hosts.a.url, hosts.b.url):  # later retries, on either host: the replay
        again = hosts.http.post(base + "/mcp/execute", json=body, headers=headers, timeout=30)
        assert again.json()["command_id"] == command_id
        assert again.headers["Idempotent-Replayed"] == "true"
    _, other = create_key(hosts, "idempotent-other")
    theirs = execute_with(hosts, other, body, "restart-db-1")
    assert theirs.status_code == 200 and theirs.json()["command_id"] != command_id
    figures["idempotency"] = {
        "sent": len(bases),
        "replayed": sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers),
        "in_progress_409": sum(a.status_code == 409 for a in answers),
    }


def execute_with(hosts: Hosts, key: str, body: dict, idempotency_key: str) -> requests.Response:
    headers = {"X-API-Key": key, "Idempotency-Key": idempotency_key}
    return hosts.http.post(hosts.front + "/mcp/execute", json=body, headers=headers, timeout=30)


LEASE_BOUND_S = LEASE_S + HOUSEKEEPING_S + 2  # the lease, one housekeeping round, a margin


def start_on_a(hosts: Hosts, key: str, seconds: float) -> str:
    """An async `stuck` command accepted by host A, seen running from host B: its B URL."""
    body = {"action": "stuck", "params": {"seconds": seconds}, "timeout": 120, "async": True}
    accepted = execute(hosts, hosts.a.url, key, body)
    assert accepted.status_code == 202
    location = hosts.b.url + accepted.headers["Location"]
    deadline = time.monotonic() + 10
    while poll(hosts, location, key)["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return location


def poll(hosts: Hosts, location: str, key: str) -> dict:
    return hosts.http.get(location, headers={"X-API-Key": key}, timeout=10).json()


def wait_until_ended(hosts: Hosts, location: str, key: str) -> tuple[dict, float]:
    """Poll host B until the execution is no longer running (at most the lease bound)."""
    since = time.monotonic()
    while (polled := poll(hosts, location, key))["status"] == "running":
        if time.monotonic() - since > LEASE_BOUND_S:
            break
        time.sleep(0.1)
    return polled, time.monotonic() - since


def assert_failed_with_a_reason(polled: dict) -> None:
    assert polled["status"] == "failed", polled
    assert isinstance(polled.get("error"), str) and polled["error"].strip()
    assert "Traceback" not in polled["error"]


def test_a_frozen_hosts_execution_ends_failed_and_stays_failed_when_it_wakes(hosts, figures):
    # A hung host still has its pids: only the lease, not a pid check, can end its work.
    _, key = create_key(hosts, "frozen")
    location = start_on_a(hosts, key, seconds=2)
    frozen = [hosts.a.proc.pid, *hosts.a.worker_pids()]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        polled, observed = wait_until_ended(hosts, location, key)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert_failed_with_a_reason(polled)
    time.sleep(1.0)  # host A's handler has finished by now: it must not undo the verdict
    assert poll(hosts, location, key) == polled
    figures["lease_frozen_host"] = {"ended_failed_after_s": round(observed, 2)}


def test_a_dead_hosts_execution_ends_failed_within_the_lease(hosts, figures):
    """Runs last: host A is gone after it."""
    _, key = create_key(hosts, "orphaned")
    location = start_on_a(hosts, key, seconds=60)
    for pid in [hosts.a.proc.pid, *hosts.a.worker_pids()]:  # the master first: no new worker
        os.kill(pid, signal.SIGKILL)
    hosts.a.proc.wait(timeout=10)
    polled, observed = wait_until_ended(hosts, location, key)
    assert_failed_with_a_reason(polled)
    assert observed <= LEASE_BOUND_S
    figures["lease"] = {
        "lease_s": LEASE_S,
        "housekeeping_interval_s": HOUSEKEEPING_S,
        "ended_failed_after_s": round(observed, 2),
        "reason": polled["error"],
    }
    assert status_of(hosts, hosts.front, key) == 200  # the service stays up on host B
