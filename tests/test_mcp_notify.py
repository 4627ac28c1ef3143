"""Change notifications (waygate/mcp/notify.py): subscriptions/listen under 2026-07-28 over
real gunicorn (a reload through one worker reaches a listener on another; a key is told only
about what it may see; bounds; graceful end on shutdown), the SDK's own listen, stdio's push
and listen, and what each era is told in its capabilities."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time

import pytest

from tests.conftest import BIN
from tests.test_metrics import sample

MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientCapabilities": {},
}
SUB = "io.modelcontextprotocol/subscriptionId"
WAIT_S = 10.0  # the most any wait below may take; each ends as soon as its message arrives

EXTRA_PLUGIN = """
from marshmallow import Schema
from waygate.sdk import Command, Plugin, Prompt


class Nothing(Schema):
    pass


class Extra(Plugin):
    name = "Extra"
    version = "1.0"
    description = "Added by a reload"
    author = "Waygate tests"

    def commands(self):
        return [Command("extra_tool", "A tool a reload adds", Nothing, lambda p, ctx: "extra")]

    def prompts(self):
        return [Prompt("extra_prompt", "A prompt a reload adds", template="hello")]
"""


def listen_body(notifications, request_id=1):
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "subscriptions/listen",
        "params": {"_meta": META, "notifications": notifications},
    }


class Listener:
    """One subscriptions/listen over raw HTTP: its SSE messages in a queue, read by a thread."""

    def __init__(self, port, key, notifications, request_id=1, tls=None):
        if tls is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        else:  # through nginx: an ssl.SSLContext that trusts its certificate
            self.conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=tls)
        self.conn.request(
            "POST",
            "/mcp",
            body=json.dumps(listen_body(notifications, request_id)),
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
                "MCP-Protocol-Version": MODERN,
                "Mcp-Method": "subscriptions/listen",
                "X-API-Key": key,
            },
        )
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.messages: queue.Queue = queue.Queue()
        if self.response.getheader("Content-Type", "").startswith("text/event-stream"):
            threading.Thread(target=self._read, daemon=True).start()
        else:
            self.error = json.loads(self.response.read())

    def _read(self):
        try:
            while line := self.response.readline():
                if line.startswith(b"data: "):
                    self.messages.put(json.loads(line[6:]))
        except (OSError, ValueError, AttributeError):  # closed by the test under the reader
            pass
        self.messages.put(None)  # the stream ended

    def next(self, timeout=WAIT_S):
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing arrived within {timeout} s") from None

    def close(self):
        """Leave as a client does: the connection shut (unblocking the reader), then closed."""
        if self.conn.sock is not None:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def open_listener(port, key, notifications, deadline_s=WAIT_S):
    """A listen that was accepted (a refused one is retried until the deadline: with one
    listen per worker, the next accepted one is on another worker)."""
    deadline = time.monotonic() + deadline_s
    while True:
        listener = Listener(port, key, notifications)
        if listener.status == 200:
            return listener
        assert listener.status == 503, listener.error
        assert time.monotonic() < deadline, listener.error
        listener.close()


@pytest.fixture
def notify_server(plugin_dist, server_factory, keys):
    """Two workers that hold one listen each: two listens open are on different workers."""
    return server_factory(
        workers=2, PYTHONPATH=str(plugin_dist.root), WAYGATE_MCP_LISTENS="1"
    ), plugin_dist


def reload(server, keys):
    answer = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    answer.request("POST", "/plugins/reload", headers={"X-API-Key": keys.admin})
    response = answer.getresponse()
    assert response.status == 200, response.read()
    return json.loads(response.read())


def test_a_reload_reaches_listeners_on_every_worker_and_a_key_hears_only_what_it_may_see(
    notify_server, keys
):
    server, dist = notify_server
    _, scoped = keys.store.create("prompt-only", "user", allow=["Extra.extra_prompt"])
    wanted = {"toolsListChanged": True, "promptsListChanged": True}
    everything = open_listener(server.port, keys.user, wanted)
    prompt_only = open_listener(server.port, scoped, wanted)  # on the other worker
    try:
        for listener in (everything, prompt_only):
            ack = listener.next()
            assert ack == {
                "jsonrpc": "2.0",
                "method": "notifications/subscriptions/acknowledged",
                "params": {"_meta": {SUB: 1}, "notifications": wanted},
            }
        dist.write_module("extra_plugin", EXTRA_PLUGIN)
        dist.register("Extra", "extra_plugin:Extra")
        reloaded = time.monotonic()
        assert "Extra" in reload(server, keys)["loaded"]  # through one worker or the other
        heard = [everything.next(), everything.next()]
        latency = time.monotonic() - reloaded
        assert [m["method"] for m in heard] == [
            "notifications/tools/list_changed",
            "notifications/prompts/list_changed",
        ]
        assert all(m["params"] == {"_meta": {SUB: 1}} for m in heard)
        # the scoped key sees the new prompt, not the new tool: a tools notification would
        # have come first (one change is told in the order tools, prompts, resources)
        told = prompt_only.next()
        assert told["method"] == "notifications/prompts/list_changed"
        assert latency < 5.0, latency  # measured 0.5 s; the margin is for a loaded machine
    finally:
        everything.close()
        prompt_only.close()


def admin_call(server, keys, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"X-API-Key": keys.admin, "Content-Type": "application/json"}
    conn.request(method, path, body=json.dumps(body) if body else None, headers=headers)
    response = conn.getresponse()
    assert response.status == 200, response.read()
    return json.loads(response.read())


def test_a_listening_keys_new_scope_is_told_and_its_revocation_ends_the_listen(notify_server, keys):
    server, _ = notify_server
    _, key = keys.store.create("listening", "user")
    listener = open_listener(server.port, key, {"toolsListChanged": True})
    try:
        assert listener.next()["method"].endswith("acknowledged")
        admin_call(server, keys, "PATCH", "/keys/listening", {"allow": ["Testing.pid"]})
        assert listener.next()["method"] == "notifications/tools/list_changed"
        admin_call(server, keys, "DELETE", "/keys/listening")
        ended = listener.next()
        assert ended["id"] == 1 and ended["error"]["data"] == {"code": "UNAUTHORIZED"}
        assert "revoked" in ended["error"]["message"]
        assert listener.next() is None
    finally:
        listener.close()


def test_listens_are_bounded_per_key_and_per_worker_and_freed_when_the_client_leaves(
    plugin_dist, server_factory, keys
):
    server = server_factory(workers=1, WAYGATE_MCP_LISTENS="2", WAYGATE_MCP_LISTENS_PER_KEY="1")
    _, other = keys.store.create("other", "user")
    _, third = keys.store.create("third", "user")
    first = Listener(server.port, keys.user, {"toolsListChanged": True})
    assert first.status == 200 and first.next()["method"].endswith("acknowledged")
    again = Listener(server.port, keys.user, {"toolsListChanged": True})
    assert again.status == 429 and again.response.getheader("Retry-After") == "5"
    assert "WAYGATE_MCP_LISTENS_PER_KEY" in again.error["error"]["message"]
    second = Listener(server.port, other, {"promptsListChanged": True})
    assert second.status == 200
    full = Listener(server.port, third, {"toolsListChanged": True})
    assert full.status == 503 and "WAYGATE_MCP_LISTENS" in full.error["error"]["message"]
    metrics = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    metrics.request("GET", "/metrics")
    assert sample(metrics.getresponse().read().decode(), "waygate_mcp_listens") == 2
    # other requests still get threads: the listens hold command slots, not the reserve
    health = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    health.request("GET", "/health")
    assert health.getresponse().status == 200
    first.close()  # the client leaves: its slot is free as soon as the server notices
    deadline = time.monotonic() + WAIT_S
    while (retry := Listener(server.port, third, {"toolsListChanged": True})).status != 200:
        assert retry.status == 503 and time.monotonic() < deadline
        retry.close()
        time.sleep(0.2)  # polled: unpaced, a slow machine's retries met the key's rate limit
    retry.close()
    second.close()


def test_a_listen_ends_with_its_response_when_the_worker_stops(plugin_dist, server_factory, keys):
    server = server_factory(workers=1)
    listener = Listener(server.port, keys.user, {"toolsListChanged": True})
    assert listener.next()["method"].endswith("acknowledged")
    stopped = time.monotonic()
    server.proc.send_signal(signal.SIGHUP)  # gunicorn replaces its workers
    assert listener.next() == {
        "jsonrpc": "2.0",
        "id": 1,
        "result": {"resultType": "complete", "_meta": {SUB: 1}},
    }
    assert listener.next() is None  # and the stream ends
    assert time.monotonic() - stopped < 5  # not the 30 s graceful timeout


def test_invalid_listens_are_refused_with_the_right_errors(client, keys):
    headers = {
        "X-API-Key": keys.user,
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "subscriptions/listen",
        "Accept": "application/json, text/event-stream",
    }
    for notifications, problem in [
        (None, "params.notifications"),
        ({"toolsListChanged": "yes"}, "toolsListChanged must be a boolean"),
        ({"resourceSubscriptions": "test://x"}, "resourceSubscriptions must be a list"),
        ({"resourceSubscriptions": ["x://"] * 101}, "at most 100"),
    ]:
        body = listen_body(notifications)
        if notifications is None:
            del body["params"]["notifications"]
        response = client.post("/mcp", json=body, headers=headers)
        assert response.status_code == 400
        assert response.get_json()["error"]["code"] == -32602
        assert problem in response.get_json()["error"]["message"]
    json_only = client.post(
        "/mcp",
        json=listen_body({"toolsListChanged": True}),
        headers={**headers, "Accept": "application/json"},
    )
    assert json_only.status_code == 406
    # the handshake era has no such method
    old = client.post(
        "/mcp",
        json=listen_body({"toolsListChanged": True}),
        headers={"X-API-Key": keys.user, "MCP-Protocol-Version": "2025-11-25"},
    )
    assert old.get_json()["error"]["code"] == -32601


def test_each_era_and_transport_is_told_the_notifications_it_really_gets(app, make_app):
    from waygate.commands import Caller
    from waygate.mcp.server import Routing

    server = app.extensions["waygate"].mcp
    caller = Caller("stdio")
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    discover = {"jsonrpc": "2.0", "id": 2, "method": "server/discover", "params": {"_meta": META}}

    def caps(message, http, on=server):
        routing = None
        if http and message["method"] == "server/discover":
            routing = Routing(version=MODERN, method="server/discover")
        return on.handle(message, caller, routing, http=http).body["result"]["capabilities"]

    # handshake era over HTTP: no GET stream (405), so no list changes are promised
    assert caps(initialize, http=True)["tools"] == {"listChanged": False}
    # over stdio the server writes when it likes: list changes are pushed
    assert caps(initialize, http=False)["tools"] == {"listChanged": True}
    assert caps(initialize, http=False)["resources"]["subscribe"] is False
    for over_http in (True, False):  # 2026-07-28: subscriptions/listen, both transports
        assert caps(discover, over_http)["prompts"] == {"listChanged": True}
        assert caps(discover, over_http)["resources"] == {"listChanged": True, "subscribe": True}
    off = make_app(mcp_listens=0).extensions["waygate"].mcp
    assert caps(discover, True, on=off)["tools"] == {"listChanged": False}
    listen = listen_body({"toolsListChanged": True})  # and listens are not served at all
    refused = off.handle(listen, caller, Routing(MODERN, "subscriptions/listen", streams=True))
    assert refused.body["error"]["code"] == -32601


def test_the_sdk_client_hears_a_tool_list_change(notify_server, keys):
    import httpx2
    import mcp
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.subscriptions import ToolsListChanged

    server, dist = notify_server
    acknowledged = threading.Event()

    async def scenario():
        http = httpx2.AsyncClient(headers={"X-API-Key": keys.user})
        client = mcp.Client(streamable_http_client(server.url + "/mcp", http_client=http))
        async with http, client, client.listen(tools_list_changed=True) as sub:
            acknowledged.set()
            async for event in sub:
                tools = await client.list_tools()
                return event, {t.name for t in tools.tools}

    def change():
        assert acknowledged.wait(WAIT_S)
        dist.write_module("extra_plugin", EXTRA_PLUGIN)
        dist.register("Extra", "extra_plugin:Extra")
        reload(server, keys)

    changer = threading.Thread(target=change)
    changer.start()
    event, names = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    changer.join()
    assert event == ToolsListChanged() and "extra_tool" in names


class Stdio:
    """A `waygate mcp stdio` process: lines in, lines out (read by a thread)."""

    def __init__(self, data_dir, pythonpath):
        env = {**os.environ, "WAYGATE_DATA_DIR": str(data_dir), "PYTHONPATH": pythonpath}
        self.proc = subprocess.Popen(
            [str(BIN / "waygate"), "mcp", "stdio"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def send(self, message):
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def next(self, timeout=WAIT_S):
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing on stdout within {timeout} s") from None

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.mark.server
def test_stdio_pushes_list_changes_and_serves_listens(data_dir, plugin_dist):
    """A reload of the service (here: the generation bumped in the shared database, as
    POST /plugins/reload does) reaches a stdio process: a handshake-era client gets
    list_changed unasked, a 2026-07-28 listen gets it tagged, and a cancelled listen stops."""
    import sqlite3

    stdio = Stdio(data_dir, str(plugin_dist.root))
    try:
        stdio.send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}})
        assert stdio.next()["result"]["capabilities"]["tools"] == {"listChanged": True}
        stdio.send(listen_body({"toolsListChanged": True}, request_id="l1"))
        ack = stdio.next()
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        assert ack["params"]["_meta"] == {SUB: "l1"}
        plugin_dist.write_module("extra_plugin", EXTRA_PLUGIN)
        plugin_dist.register("Extra", "extra_plugin:Extra")
        with sqlite3.connect(data_dir / "waygate.db") as db:
            db.execute("UPDATE plugin_state SET generation = generation + 1 WHERE id = 1")
        told = [stdio.next(), stdio.next(), stdio.next()]  # in any order: two subscriptions
        assert sorted(json.dumps(m, sort_keys=True) for m in told) == sorted(
            json.dumps(m, sort_keys=True)
            for m in [
                {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"},
                {"jsonrpc": "2.0", "method": "notifications/prompts/list_changed"},
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/tools/list_changed",
                    "params": {"_meta": {SUB: "l1"}},
                },
            ]
        )
        stdio.send(
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "l1"}}
        )
        stdio.send({"jsonrpc": "2.0", "id": 2, "method": "ping"})
        assert stdio.next() == {"jsonrpc": "2.0", "id": 2, "result": {}}  # no listen response
    finally:
        stdio.close()


NOTES_PLUGIN = """
from waygate.sdk import Plugin, Resource


class Notes(Plugin):
    name = "Notes"
    version = "{version}"
    description = "Resources a reload adds"
    author = "Waygate tests"

    def commands(self):
        return []

    def resources(self):
        return [
            Resource("notes://today", "Today", lambda values: "today"),
            Resource("notes://{{day}}/summary", "A day", lambda values: values["day"]),
        ]
"""


def test_resource_lists_and_watched_resources_are_told_as_each_caller_sees_them(
    make_app, plugin_dist
):
    """In-process and step by step (the feed's own thread held back): what each kind of
    subscriber is told when a reload adds, then re-versions, a plugin's resources."""
    from waygate.commands import Caller
    from waygate.keys import Scope
    from waygate.mcp.notify import Subscription

    services = make_app().extensions["waygate"]
    feed = services.mcp.listeners
    feed.POLL_S = 3600.0  # the test tells; the thread waits

    def subscribe(scope, honored):
        told: list = []
        caller = Caller("k", key_id=len(feed._subs) + 1, scope=scope)  # a key each
        return feed.subscribe(caller, 7, honored, told.append), told

    watched = ["notes://today", "notes://3/summary", "notes://never"]
    everything, told_all = subscribe(
        Scope(), {"resourcesListChanged": True, "resourceSubscriptions": watched}
    )
    testing_only, told_scoped = subscribe(
        Scope(("Testing.*",)), {"resourcesListChanged": True, "resourceSubscriptions": watched}
    )
    tools_only, told_tools = subscribe(Scope(), {"toolsListChanged": True})

    def reload_with(version):
        plugin_dist.write_module("notes_plugin", NOTES_PLUGIN.format(version=version))
        plugin_dist.register("Notes", "notes_plugin:Notes")
        services.plugins.reload()
        for sub in (everything, testing_only, tools_only):
            feed._tell(sub)

    def methods(told):
        found = [(m["method"].rsplit("/", 2)[-2], m["params"].get("uri")) for m in told]
        told.clear()
        return found

    reload_with("1.0")
    assert methods(told_all) == [
        ("resources", None),  # resources/list_changed
        ("resources", "notes://today"),  # resources/updated: it appeared
        ("resources", "notes://3/summary"),  # served by the template
    ]
    assert all(m["params"]["_meta"] == {SUB: 7} for m in told_all + told_scoped)
    assert methods(told_scoped) == []  # Notes is not in its scope: nothing, not even a name
    assert methods(told_tools) == []  # resources came, no tool did
    reload_with("1.0")  # the same again: nothing changed for anyone
    assert methods(told_all) == methods(told_scoped) == methods(told_tools) == []
    reload_with("1.1")  # a new version of the plugin that serves them: read them again
    assert methods(told_all) == [  # the list itself is as it was
        ("resources", "notes://today"),
        ("resources", "notes://3/summary"),
    ]
    for sub in (everything, testing_only, tools_only):
        feed.unsubscribe(sub)
    assert isinstance(everything, Subscription) and feed.open_count == 0


@pytest.mark.server
@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_the_sdk_over_stdio_hears_a_reload_in_both_eras(data_dir, plugin_dist, mode):
    """The official client against `waygate mcp stdio`: in the handshake era the change is
    pushed unasked (its message handler gets it); in 2026-07-28 it listens."""
    import sqlite3

    import mcp
    from mcp import StdioServerParameters, types

    params = StdioServerParameters(
        command=str(BIN / "waygate"),
        args=["mcp", "stdio"],
        env={**os.environ, "WAYGATE_DATA_DIR": str(data_dir), "PYTHONPATH": str(plugin_dist.root)},
    )
    heard: asyncio.Queue = asyncio.Queue()

    async def on_message(message):
        if isinstance(message, types.ServerNotification):
            await heard.put(message.root if hasattr(message, "root") else message)

    def reload_elsewhere():  # as POST /plugins/reload on the service does
        plugin_dist.write_module("extra_plugin", EXTRA_PLUGIN)
        plugin_dist.register("Extra", "extra_plugin:Extra")
        with sqlite3.connect(data_dir / "waygate.db") as db:
            db.execute("UPDATE plugin_state SET generation = generation + 1 WHERE id = 1")

    async def scenario():
        async with mcp.Client(params, mode=mode, message_handler=on_message) as client:
            if mode == "legacy":
                await client.list_tools()
                reload_elsewhere()
                told = await asyncio.wait_for(heard.get(), WAIT_S)
                assert "ToolListChanged" in type(told).__name__, told
            else:
                async with client.listen(tools_list_changed=True) as sub:
                    reload_elsewhere()
                    async for event in sub:
                        assert type(event).__name__ == "ToolsListChanged"
                        break
            return {t.name for t in (await client.list_tools()).tools}

    assert "extra_tool" in asyncio.run(asyncio.wait_for(scenario(), timeout=60))


def test_over_stdio_a_listen_the_server_ends_is_cancelled_and_one_the_client_ends_is_not(app):
    from waygate.commands import Caller
    from waygate.mcp.notify import ListenStream, StdioChannel

    server = app.extensions["waygate"].mcp
    written: queue.Queue = queue.Queue()
    channel = StdioChannel(server, Caller("stdio"), written.put)
    wanted = {"toolsListChanged": True}

    ended_by_server = ListenStream(server.listeners, Caller("stdio"), "s1", wanted)
    channel.pump(ended_by_server)
    assert written.get(timeout=WAIT_S)["method"] == "notifications/subscriptions/acknowledged"
    server.listeners.unsubscribe(ended_by_server._sub)  # e.g. its backlog overflowed
    assert written.get(timeout=WAIT_S) == {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": "s1", "reason": "the server ended this subscription"},
    }

    ended_by_client = ListenStream(server.listeners, Caller("stdio"), "s2", wanted)
    pumping = channel.pump(ended_by_client)
    assert written.get(timeout=WAIT_S)["params"]["_meta"] == {SUB: "s2"}
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "s2"}}
    assert channel.intercept(cancel) is True
    pumping.join(WAIT_S)  # the listen is over ...
    assert not pumping.is_alive() and server.listeners.open_count == 0
    assert written.empty()  # ... and nothing was written for it: no response, no cancel
