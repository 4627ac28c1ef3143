"""Who is told of approval steps: a webhook that gets each one as JSON."""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from ..audit import Execution
from ..forksafe import reset_after_fork
from ..outcomes import ApprovalStep as Step

log = logging.getLogger(__name__)


class Notifier:
    """Posts each approval event to a webhook as JSON: a Slack-compatible ``text`` and the
    structured record. Never blocks the caller: events go to a bounded queue that one
    background thread of this process (made after fork, on first use) delivers, retrying
    with exponential backoff; a delivery that fails every attempt, or an event the full queue
    cannot take, is logged and counted (``on_failure``)."""

    def __init__(
        self,
        url: str,
        *,
        attempts: int = 4,
        backoff_s: float = 0.5,
        timeout_s: float = 5.0,
        queue_size: int = 1000,
        on_failure: Callable[[], None] | None = None,
        public_url: str = "",
    ):
        # user:password@ in the URL (a webhook behind Basic auth) is sent as an Authorization
        # header: urllib would take it for part of the host name and fail every delivery
        self.url, self._headers = split_credentials(url)
        self.public_url = public_url  # WAYGATE_PUBLIC_URL: payloads link the console's page
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.queue_size = queue_size
        self._on_failure = on_failure
        self._forked()
        reset_after_fork(self, Notifier._forked)

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.Queue[dict[str, Any]] | None = None

    def notify(self, event: Step, execution: Execution) -> None:
        if not self.url:
            return
        try:
            self._events().put_nowait(payload(event, execution, self.public_url))
        except queue.Full:
            self._failed(f"webhook queue full: {event} of {execution.command_id} not sent")

    def join(self) -> None:
        """Wait until every queued event was delivered or given up (tests, shutdown)."""
        if self._queue is not None:
            self._queue.join()

    def _events(self) -> queue.Queue[dict[str, Any]]:
        with self._lock:
            if self._queue is None:
                self._queue = queue.Queue(self.queue_size)
                threading.Thread(
                    target=self._run, args=(self._queue,), name="waygate-webhook", daemon=True
                ).start()
            return self._queue

    def _run(self, events: queue.Queue[dict[str, Any]]) -> None:
        while True:
            body = events.get()
            try:
                self._deliver(body)
            finally:
                events.task_done()

    def _deliver(self, body: dict[str, Any]) -> None:
        data = json.dumps(body, default=str).encode()
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(  # noqa: S310 - the operator's http(s) URL
                self.url, data=data, headers={"Content-Type": "application/json", **self._headers}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 # nosec B310
                    if 200 <= response.status < 300:
                        return
                    problem = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError, ValueError) as exc:  # ValueError: bad URL
                problem = type(exc).__name__
        self._failed(
            f"webhook delivery of {body['event']} for {body['execution']['command_id']} failed"
            f" after {self.attempts} attempts: {problem}"
        )

    def _failed(self, message: str) -> None:
        log.warning(message)  # the URL may carry a token: it is never logged
        if self._on_failure is not None:
            self._on_failure()


def split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its ``user:password@`` and the Basic ``Authorization`` header that
    carries them instead (percent-escapes decoded, as a browser does)."""
    if not url:
        return url, {}
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, {}
    host = parts.netloc.rpartition("@")[2]
    credentials = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
    token = base64.b64encode(credentials.encode()).decode("ascii")
    return urlunsplit(parts._replace(netloc=host)), {"Authorization": f"Basic {token}"}


def console_path(command_id: str) -> str:
    """The console's page of an execution (where an approver decides), from the site root."""
    return f"/console/executions/{command_id}"


def payload(event: Step, execution: Execution, public_url: str = "") -> dict[str, Any]:
    """The webhook body: Slack's ``text`` and the structured record; with the service's
    public URL, the console link of the item (``console_url``, also in the text)."""
    who = execution.key_name or "an unnamed caller"
    texts = {
        Step.REQUESTED: f"{who} asks to run `{execution.action}`: it waits for approval until"
        f" {execution.approval_expires_at}",
        Step.APPROVED: f"`{execution.action}` requested by {who} was approved by"
        f" {execution.decided_by}",
        Step.DENIED: f"`{execution.action}` requested by {who} was denied by"
        f" {execution.decided_by}"
        + (f": {execution.decision_reason}" if execution.decision_reason else ""),
        Step.EXPIRED: f"`{execution.action}` requested by {who} expired: nobody approved it",
    }
    body = {
        "text": f"Waygate: {texts[event]} (execution {execution.command_id})",
        "event": event.value,
        "execution": execution.as_dict(),
    }
    if public_url:
        body["console_url"] = public_url + console_path(execution.command_id)
        body["text"] += f" {body['console_url']}"
    return body
