"""Human approval for destructive commands: which commands wait, who may decide, the stored
request, and who is told.

A command that needs approval is not run when asked for: its request (action, params as sent,
context, timeout, the caller's key id and a SHA-256 of the canonical params) is stored with
the status ``awaiting_approval`` and cannot change after that (a trigger of migration m012
refuses it). A second party, never the requesting key, approves or denies it; an approved
execution runs exactly the stored request in the background, with its own timeout counted from
the approval. Nobody deciding within ``ttl_s`` ends it ``expired``. Every step is an event row
(``execution_events``) and, when a webhook is configured, a JSON POST.

Framework-free: the REST views, MCP and the CLI all decide through
:meth:`waygate.commands.CommandService.approve` / ``deny``, which use this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from fnmatch import fnmatchcase
from typing import Any

from .audit import AuditLog, Execution, StoredRequest
from .clock import isoformat, utcnow
from .errors import Conflict, Forbidden, NotFound
from .forksafe import reset_after_fork
from .keys import ApiKey
from .outcomes import ApprovalStep as Step
from .sdk import Command

log = logging.getLogger(__name__)
META_APPROVAL = "waygate/approvalRequired"  # the tool's _meta key in MCP tools/list
APPROVAL_NOTE = "Requires approval: a second person must approve each call before it runs."


@dataclass(frozen=True)
class ApprovalPolicy:
    """Which commands wait for approval. Globs as in ``fnmatch`` (``db.*``), case-sensitive;
    an exempt pattern wins over a required one, and both over the ``destructiveHint``
    annotation, which needs approval unless ``destructive_default`` is off."""

    required: tuple[str, ...] = ()
    exempt: tuple[str, ...] = ()
    destructive_default: bool = True
    ttl_s: int = 900

    def requires(self, command: Command) -> bool:
        if any(fnmatchcase(command.name, pattern) for pattern in self.exempt):
            return False
        if any(fnmatchcase(command.name, pattern) for pattern in self.required):
            return True
        return self.destructive_default and bool(command.annotations.get("destructiveHint"))


def may_approve(key: ApiKey) -> bool:
    """Whether ``key`` may decide on approvals: admin keys. The one place that says so (a key
    scope that grants approving belongs here)."""
    return key.is_admin


def canonical(value: Any) -> str:
    """The canonical JSON of a request's params: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def params_hash(value: Any) -> str:
    return hashlib.sha256(canonical(value).encode()).hexdigest()


def approval_info(execution: Execution) -> dict[str, Any] | None:
    """The approval part of an execution's response, when it needed approval."""
    if execution.params_hash is None:
        return None
    return {
        "required": True,
        "params_hash": execution.params_hash,
        "expires_at": execution.approval_expires_at,
        "decided_by": execution.decided_by,
        "decided_at": execution.decided_at,
        "reason": execution.decision_reason,
    }


class Approvals:
    """The approval steps on the audit log, with their metrics and notifications."""

    def __init__(
        self,
        audit: AuditLog,
        policy: ApprovalPolicy,
        notifier: Notifier | None = None,
        on_change: Callable[[str, int], None] | None = None,
    ):
        self.audit = audit
        self.policy = policy
        self.notifier = notifier or Notifier("")
        # (event, count awaiting approval) after every step: requested, approved, denied,
        # expired, or refresh
        self._on_change = on_change

    def requires(self, command: Command) -> bool:
        return self.policy.requires(command)

    def stored_request(self, params: Any, client_context: dict[str, Any]) -> StoredRequest:
        return StoredRequest(
            params_json=canonical(params),
            params_hash=params_hash(params),
            client_context_json=canonical(client_context),
            expires_at=isoformat(utcnow() + timedelta(seconds=self.policy.ttl_s)),
        )

    def requested(self, command_id: str, key_id: int | None, key_name: str | None) -> None:
        self.audit.add_event(command_id, Step.REQUESTED, key_id, key_name)
        self._changed(Step.REQUESTED, command_id)

    def decide(
        self, command_id: str, approver: ApiKey, *, approve: bool, reason: str | None
    ) -> Execution:
        """Approve or deny; Forbidden for a key that may not, or for the requesting key,
        NotFound, or Conflict when it is not awaiting approval (decided, expired)."""
        if not may_approve(approver):
            raise Forbidden("deciding on approvals needs an admin key")
        self.expire()
        execution = self.audit.get(command_id)
        if execution is None:
            raise NotFound(f"no execution {command_id!r}", {"command_id": command_id[:100]})
        if execution.key_id is not None and execution.key_id == approver.id:
            raise Forbidden(
                "a key cannot decide on its own request: another approver must",
                {"command_id": command_id},
            )
        decided = self.audit.decide(
            command_id, approve=approve, key_id=approver.id, key_name=approver.name, reason=reason
        )
        if decided is None:
            current = self.audit.get(command_id)
            status = current.status if current is not None else "gone"
            raise Conflict(
                f"execution {command_id} is not awaiting approval (it is {status})",
                {"command_id": command_id, "status": status},
            )
        self._changed(Step.APPROVED if approve else Step.DENIED, command_id)
        return decided

    def expire(self) -> list[str]:
        """End the executions nobody decided on in time (housekeeping, and before reads)."""
        expired = self.audit.expire_approvals()
        for command_id in expired:
            self._changed(Step.EXPIRED, command_id)
        return expired

    def refresh_gauge(self) -> None:
        if self._on_change is not None:
            self._on_change("refresh", self.audit.count_awaiting())

    def _changed(self, event: Step, command_id: str) -> None:
        if self._on_change is not None:
            self._on_change(event, self.audit.count_awaiting())
        execution = self.audit.get(command_id)
        if execution is not None:
            self.notifier.notify(event, execution)


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
    ):
        self.url = url
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
            self._events().put_nowait(payload(event, execution))
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
                self.url, data=data, headers={"Content-Type": "application/json"}
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


def payload(event: Step, execution: Execution) -> dict[str, Any]:
    """The webhook body: Slack's ``text`` and the structured record."""
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
    return {
        "text": f"Waygate: {texts[event]} (execution {execution.command_id})",
        "event": event.value,
        "execution": execution.as_dict(),
    }
