"""Change notifications: ``subscriptions/listen`` (2026-07-28) and, over stdio, the handshake
era's unsolicited ``notifications/*/list_changed``.

What changes is what a caller can see: its own ``tools/list``, ``prompts/list`` and
``resources/list`` (with the templates), computed with its own scope, and the entries of the
resources it watches. A reload (on any worker of any host: the plugin generation in the
database), an upstream MCP server's change, anything that installs a new plugin set in this
process, is compared per subscription, before and after; a key whose visible lists did not
change is told nothing, and nothing it may not see is ever named.

One :class:`ChangeFeed` per process owns the subscriptions. It starts one thread while any is
open, which asks the plugin registry for its current set every ``POLL_S`` (the registry reads
the shared generation, one one-row SELECT at most every half second, so no database
connection is held per listener) and, when the set changed, recomputes each subscriber's
views. Delivery is the transport's: an HTTP listen blocks its request thread on a queue of
messages (:class:`ListenStream`, sent as SSE by ``web/mcp_api.py``); stdio writes lines.

A listen holds a gunicorn request thread for as long as it is open, so it is bounded: it takes
one of the worker's command slots (``admission.py``: the threads kept for health checks stay
free), at most ``ListenLimits.per_worker`` listens per worker and ``per_key`` per key (or
person) per worker; beyond, the listen is refused at once (429 or 503, ``Retry-After``).
On worker shutdown (SIGTERM, a gunicorn reload) every listen ends gracefully with its
``subscriptions/listen`` response, as the spec's graceful closure says.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import RateLimited, ServiceUnavailable
from ..forksafe import reset_after_fork
from ..plugins import PluginRegistry

if TYPE_CHECKING:
    from ..commands import Caller, CommandService
    from ..plugins import PluginSet
    from .catalog import Catalog

log = logging.getLogger(__name__)

LISTEN = "subscriptions/listen"
META_SUBSCRIPTION = "io.modelcontextprotocol/subscriptionId"
ACKNOWLEDGED = "notifications/subscriptions/acknowledged"
RESOURCE_UPDATED = "notifications/resources/updated"
# filter flag -> the list it watches -> the notification that says it changed
LIST_KINDS = (
    ("toolsListChanged", "tools", "notifications/tools/list_changed"),
    ("promptsListChanged", "prompts", "notifications/prompts/list_changed"),
    ("resourcesListChanged", "resources", "notifications/resources/list_changed"),
)
MAX_WATCHED_URIS = 100
MAX_URI_CHARS = 2000
MAX_BACKLOG = 256  # messages a listener has not taken yet; past it the stream ends
INVALID_PARAMS, INVALID_REQUEST = -32602, -32600


class McpServer(Protocol):
    """What the feed reads of ``server.McpServer`` (which owns it): the lists as a caller sees
    them, and the plugin set they come from."""

    commands: CommandService
    catalog: Catalog

    def _plugins(self) -> PluginSet: ...

    def tools(self, caller: Caller) -> list[dict[str, Any]]: ...


def advertise(result: dict[str, Any], modern: bool, http: bool, on: bool) -> dict[str, Any]:
    """``result`` (an initialize or server/discover result) with the notification capabilities
    this transport and revision really have: a 2026-07-28 client has ``subscriptions/listen``
    (HTTP and stdio); stdio can push list changes to a handshake-era client; a handshake-era
    client over HTTP would need the GET stream, which this stateless server does not offer
    (405), so it is told ``listChanged: false`` and re-lists. ``on`` False: listens are
    configured off (WAYGATE_MCP_LISTENS=0), nothing is advertised."""
    caps = result.get("capabilities")
    if not isinstance(caps, dict):
        return result
    lists = on and (modern or not http)
    caps = dict(caps)
    for kind in ("tools", "prompts", "resources"):
        caps[kind] = {**caps.get(kind, {}), "listChanged": lists}
    caps["resources"]["subscribe"] = on and modern  # resources/subscribe is not offered
    return {**result, "capabilities": caps}


@dataclass(frozen=True)
class ListenLimits:
    per_worker: int = 4  # 0: subscriptions/listen is off
    per_key: int = 2
    keepalive_s: float = 15.0  # an SSE comment when nothing was sent for this long


class Subscription:
    """One listener: what it asked for, and digests of what its caller saw when last told."""

    def __init__(
        self,
        caller: Caller,
        sub_id: Any,
        honored: dict[str, Any],
        deliver: Callable[[dict[str, Any]], None],
    ):
        self.caller, self.sub_id, self.honored, self.deliver = caller, sub_id, honored, deliver
        self.seen: Any = None  # the plugin set the views were computed against
        self.views: dict[str, str | None] = {}
        self.ended = threading.Event()  # no more messages: closed, cancelled or backed up
        self.farewell: dict[str, Any] | None = None  # the listen's last message, if refused

    @property
    def watched(self) -> list[str]:
        return self.honored.get("resourceSubscriptions", [])

    def notification(self, method: str, **params: Any) -> dict[str, Any]:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if self.sub_id is not None:
            params["_meta"] = {META_SUBSCRIPTION: self.sub_id}
        if params:
            message["params"] = params
        return message


class ChangeFeed:
    """This process's subscriptions, and the one thread that tells them of changes.

    ``recheck`` (set by ``services.py``) looks a listener's key up again every ``RECHECK_S``:
    a changed scope changes what it sees (and it is told if its lists changed); a key revoked
    or expired ends its listen with an error."""

    POLL_S = 0.2
    RECHECK_S = 2.0
    # A new plugin set is told this long after this process first sees it: by then every
    # worker of every host has read the shared generation again (each does at most every
    # CHECK_INTERVAL), so a client told "the tools changed" that lists them at once, on
    # whichever worker, gets the new list, not the one it was told is gone.
    SETTLE_S = PluginRegistry.CHECK_INTERVAL + 0.05

    def __init__(self, server: McpServer, limits: ListenLimits | None = None):
        self._server = server
        self.limits = limits or ListenLimits()
        self.recheck: Callable[[Caller], Caller | None] | None = None
        self.on_count: Callable[[int], None] | None = None  # the open listens, as they change
        self._forked()
        reset_after_fork(self, ChangeFeed._forked)

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self._subs: set[Subscription] = set()
        self._by_key: dict[Any, int] = {}
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self.closing = False
        self._newest: Any = None  # the newest plugin set seen, and when (SETTLE_S)
        self._newest_at = 0.0

    @property
    def on(self) -> bool:
        return self.limits.per_worker > 0

    @property
    def open_count(self) -> int:
        return len(self._subs)

    # -- opening and closing -------------------------------------------------------------------

    def subscribe(
        self,
        caller: Caller,
        sub_id: Any,
        honored: dict[str, Any],
        deliver: Callable[[dict[str, Any]], None],
        bounded: bool = True,
    ) -> Subscription:
        """Register a listener with its first views (the baseline changes are measured from);
        refused past the bounds (``bounded`` False: the stdio push, one per process)."""
        sub = Subscription(caller, sub_id, honored, deliver)
        self._snapshot(sub)
        with self._lock:
            if bounded:
                self._admit(caller)
            self._subs.add(sub)
            self._by_key[caller.share] = self._by_key.get(caller.share, 0) + 1
            self._count()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._watch, name="waygate-mcp-notify", daemon=True
                )
                self._thread.start()
        return sub

    def _admit(self, caller: Caller) -> None:
        if self.closing:
            raise ServiceUnavailable(
                "this worker is shutting down: open subscriptions/listen again", retry_after=1
            )
        mine = self._by_key.get(caller.share, 0)
        if mine >= self.limits.per_key:
            raise RateLimited(
                f"too many subscriptions/listen streams of this key at once: it has {mine}"
                f" open in this worker, the most one key may (WAYGATE_MCP_LISTENS_PER_KEY);"
                " close one (one stream can carry every notification type)",
                {"listens_per_key": self.limits.per_key},
                retry_after=5,
            )
        if len([s for s in self._subs if s.sub_id is not None]) >= self.limits.per_worker:
            raise ServiceUnavailable(
                f"this worker holds {self.limits.per_worker} subscriptions/listen streams, its"
                " most (WAYGATE_MCP_LISTENS): retry later",
                retry_after=5,
            )

    def unsubscribe(self, sub: Subscription) -> None:
        sub.ended.set()
        with self._lock:
            if sub in self._subs:
                self._subs.discard(sub)
                left = self._by_key[sub.caller.share] - 1
                if left:
                    self._by_key[sub.caller.share] = left
                else:
                    del self._by_key[sub.caller.share]
                self._count()

    def _count(self) -> None:
        """Tell ``on_count`` how many listens are open (the caller holds the lock)."""
        if self.on_count is not None:
            self.on_count(sum(1 for s in self._subs if s.sub_id is not None))

    def close_all(self) -> None:
        """Shutdown: refuse new listens and end every open one gracefully (each stream sends
        its ``subscriptions/listen`` response and ends)."""
        self.closing = True
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.ended.set()
        self._wake.set()

    # -- telling -------------------------------------------------------------------------------

    def _watch(self) -> None:
        rechecked = time.monotonic()
        while True:
            self._wake.wait(self.POLL_S)
            self._wake.clear()
            with self._lock:
                subs = list(self._subs)
                if not subs:
                    self._thread = None
                    return
            if self.recheck is not None and time.monotonic() - rechecked >= self.RECHECK_S:
                rechecked = time.monotonic()
                self._recheck_keys(subs)
            try:
                current = self._server._plugins()  # reads the shared generation when due
            except Exception as exc:  # the database is away: asked again next round
                log.warning("change notifications: could not read the plugin set: %s", exc)
                continue
            if current is not self._newest:
                self._newest, self._newest_at = current, time.monotonic()
            if time.monotonic() - self._newest_at < self.SETTLE_S:
                continue  # told once every worker serves it (SETTLE_S)
            for sub in subs:
                if sub.seen is not current and not sub.ended.is_set():
                    try:
                        self._tell(sub)
                    except Exception:  # one listener's failure must not stop the others
                        log.exception("change notifications: a listener's views failed")

    def _recheck_keys(self, subs: list[Subscription]) -> None:
        for sub in subs:
            if sub.ended.is_set():
                continue
            try:
                caller = self.recheck(sub.caller)  # type: ignore[misc]  (checked by the caller)
            except Exception as exc:  # the database is away: the key is asked again later
                log.warning("change notifications: could not look a listener's key up: %s", exc)
                return
            if caller is None:
                if sub.sub_id is not None:
                    sub.farewell = {
                        "jsonrpc": "2.0",
                        "id": sub.sub_id,
                        "error": {
                            "code": INVALID_REQUEST,
                            "message": "the key of this listen was revoked or has expired",
                            "data": {"code": "UNAUTHORIZED"},
                        },
                    }
                self.unsubscribe(sub)
            elif caller.scope != sub.caller.scope:
                sub.caller = caller
                sub.seen = None  # its views are compared again now, with the new scope

    def _tell(self, sub: Subscription) -> None:
        before = dict(sub.views)
        self._snapshot(sub)
        for flag, kind, method in LIST_KINDS:
            if sub.honored.get(flag) and sub.views[kind] != before.get(kind):
                sub.deliver(sub.notification(method))
        for uri in sub.watched:
            if sub.views[uri] != before.get(uri):
                sub.deliver(sub.notification(RESOURCE_UPDATED, uri=uri))

    def _snapshot(self, sub: Subscription) -> None:
        """The caller's views now: a digest of each list it asked about and of each watched
        resource's entry (None where it may not see it)."""
        server, caller = self._server, sub.caller
        sub.seen = server._plugins()  # before the views: a set installed meanwhile is seen again
        lists = {
            "tools": lambda: server.tools(caller),
            "prompts": lambda: server.catalog.prompts(caller),
            "resources": lambda: [
                server.catalog.resources(caller),
                server.catalog.templates(caller),
            ],
        }
        for flag, kind, _ in LIST_KINDS:
            if sub.honored.get(flag):
                sub.views[kind] = _digest(lists[kind]())
        for uri in sub.watched:
            entry = server.catalog.resource_entry(uri, caller)
            sub.views[uri] = None if entry is None else _digest(entry)


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def honored_filter(params: dict[str, Any]) -> dict[str, Any]:
    """The filter a listen asked for, checked; what the server honors is all of it (every
    list kind is watched, any URI may be watched: one the caller may not see is never
    named). Invalid params: a JSON-RPC error raised by the caller of this function."""
    wanted = params.get("notifications")
    if not isinstance(wanted, dict):
        raise ValueError("subscriptions/listen needs params.notifications, an object")
    honored: dict[str, Any] = {}
    for flag, _, _ in LIST_KINDS:
        value = wanted.get(flag)
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"notifications.{flag} must be a boolean")
        if value:
            honored[flag] = True
    uris = wanted.get("resourceSubscriptions")
    if uris is not None:
        if not isinstance(uris, list) or not all(
            isinstance(u, str) and 0 < len(u) <= MAX_URI_CHARS for u in uris
        ):
            raise ValueError(
                f"notifications.resourceSubscriptions must be a list of URIs"
                f" (1 to {MAX_URI_CHARS} characters each)"
            )
        if len(uris) > MAX_WATCHED_URIS:
            raise ValueError(
                f"notifications.resourceSubscriptions: at most {MAX_WATCHED_URIS} URIs per listen"
            )
        if uris:
            honored["resourceSubscriptions"] = list(dict.fromkeys(uris))
    return honored


class ListenStream:
    """One ``subscriptions/listen`` as a stream of messages: the acknowledgment first, then
    the change notifications as they come, until the client goes away (``client_gone``, or a
    failed write) or the server shuts down (then the listen's response, and the end).

    Holds one admission slot and its request thread while open; ``close`` gives both back."""

    TICK_S = 0.5  # how soon a closed client or a shutdown is noticed

    def __init__(self, feed: ChangeFeed, caller: Caller, sub_id: Any, honored: dict[str, Any]):
        self._feed = feed
        self._messages: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.sub_id = sub_id
        self.client_gone: Callable[[], bool] | None = None  # set by the transport, if it can
        self._slot = feed._server.commands.admission.slot(("listen", caller.share))
        self._slot.__enter__()
        try:
            self._sub = feed.subscribe(caller, sub_id, honored, self._deliver)
        except BaseException:
            self._slot.__exit__(None, None, None)
            raise
        self._closed = False
        self.cancelled = False  # by the client

    def _deliver(self, message: dict[str, Any]) -> None:
        if self._messages.qsize() >= MAX_BACKLOG:  # the client stopped reading
            log.warning("listen %r backed up; ending it", self.sub_id)
            self._feed.unsubscribe(self._sub)
            return
        self._messages.put(message)

    def messages(self) -> Iterator[dict[str, Any] | None]:
        """JSON-RPC messages to send, in order; None asks for a keep-alive comment."""
        sub = self._sub
        yield sub.notification(ACKNOWLEDGED, notifications=sub.honored)
        quiet_since = time.monotonic()
        while True:
            try:
                message = self._messages.get(timeout=self.TICK_S)
            except queue.Empty:
                if sub.ended.is_set():
                    break
                if self.client_gone is not None and self.client_gone():
                    return  # nobody to tell: the stream just ends
                if time.monotonic() - quiet_since >= self._feed.limits.keepalive_s:
                    quiet_since = time.monotonic()
                    yield None
                continue
            quiet_since = time.monotonic()
            yield message
        if sub.farewell is not None:  # ended by the server for a reason: said in its response
            yield sub.farewell
        elif self._feed.closing:  # graceful closure: the listen's own response ends it
            yield {
                "jsonrpc": "2.0",
                "id": self.sub_id,
                "result": {"resultType": "complete", "_meta": {META_SUBSCRIPTION: self.sub_id}},
            }

    def cancel(self) -> None:
        """The client cancelled it (stdio: notifications/cancelled): no response follows."""
        self.cancelled = True
        self._feed.unsubscribe(self._sub)

    def close(self) -> None:
        """Called when the response ends, sent or not."""
        if not self._closed:
            self._closed = True
            self._feed.unsubscribe(self._sub)
            self._slot.__exit__(None, None, None)


class StdioChannel:
    """Notifications over stdio, where the server may write whenever it likes: the listens of
    2026-07-28 clients (each pumped by a thread of its own, so the request pool stays free;
    ended by ``notifications/cancelled``) and, for a handshake-era client (one that sent
    ``initialize``), unsolicited ``notifications/*/list_changed`` for its whole view."""

    def __init__(self, server: McpServer, caller: Caller, write: Callable[[dict], None]):
        self._server, self._caller, self._write = server, caller, write
        self._listens: dict[Any, ListenStream] = {}
        self._push: Subscription | None = None
        self._lock = threading.Lock()

    def intercept(self, message: Any) -> bool:
        """Act on what concerns notifications; True when the message needs nothing more."""
        if not isinstance(message, dict):
            return False
        method = message.get("method")
        if method == "initialize" and "id" in message:
            self._start_push()
            return False
        if method == "notifications/cancelled":
            params = message.get("params")
            request_id = params.get("requestId") if isinstance(params, dict) else None
            with self._lock:
                listen = self._listens.pop(request_id, None) if request_id is not None else None
            if listen is not None:
                listen.cancel()
                return True
        return False

    def pump(self, stream: ListenStream) -> threading.Thread:
        with self._lock:
            self._listens[stream.sub_id] = stream

        def run() -> None:
            last: dict[str, Any] | None = None
            try:
                for message in stream.messages():
                    if message is not None:  # no keep-alives on a pipe
                        self._write(message)
                        last = message
                if not stream.cancelled and (last is None or "id" not in last):
                    # ended by the server without its response (e.g. it stopped reading): on
                    # stdio the spec's way to say so is notifications/cancelled
                    self._write(
                        {
                            "jsonrpc": "2.0",
                            "method": "notifications/cancelled",
                            "params": {
                                "requestId": stream.sub_id,
                                "reason": "the server ended this subscription",
                            },
                        }
                    )
            finally:
                with self._lock:
                    self._listens.pop(stream.sub_id, None)
                stream.close()

        thread = threading.Thread(target=run, name="waygate-stdio-listen", daemon=True)
        thread.start()
        return thread

    def _start_push(self) -> None:
        feed = self._server.listeners
        if self._push is not None or not feed.on:
            return
        every = dict.fromkeys((flag for flag, _, _ in LIST_KINDS), True)
        self._push = feed.subscribe(self._caller, None, every, self._write, bounded=False)

    def close(self) -> None:
        if self._push is not None:
            self._server.listeners.unsubscribe(self._push)
        with self._lock:
            listens = list(self._listens.values())
        for listen in listens:
            listen.cancel()


def key_recheck(usable: Callable[[int], Any]) -> Callable[[Caller], Caller | None]:
    """A ``ChangeFeed.recheck`` over the key store's ``usable(key_id)`` (the live, unexpired
    key or None): a listener's caller with its key's scope as it is now, or None when the key
    may no longer be used. A caller without a key (stdio, a person's access token) stays."""

    def recheck(caller: Caller) -> Caller | None:
        if caller.key_id is None:
            return caller
        key = usable(caller.key_id)
        return None if key is None else dataclasses.replace(caller, scope=key.scope)

    return recheck
