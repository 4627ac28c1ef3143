"""The approval steps: hold a request, decide on it, expire it, show its trail; after each,
the gauge of executions awaiting approval and the webhook are told."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from ..audit import Execution, StoredRequest
from ..clock import isoformat, utcnow
from ..errors import Conflict, Forbidden, InvalidRequest, NotFound
from ..keys import ApiKey
from ..outcomes import ApprovalStep as Step
from ..outcomes import ExecutionStatus
from ..principals import Principal
from ..sdk import Command
from .policy import ApprovalPolicy, check_approver, may_approve
from .records import ApprovalRecords, Event, canonical, params_hash
from .webhook import Notifier


class Approvals:
    """The approval steps on the audit log, with their metrics and notifications."""

    def __init__(
        self,
        records: ApprovalRecords,
        policy: ApprovalPolicy,
        *,
        creators: Callable[[int | None], list[int]],
        notifier: Notifier | None = None,
        on_change: Callable[[str, int], None] | None = None,
    ):
        self.records = records
        self.audit = records.audit
        self.policy = policy
        self.notifier = notifier or Notifier("")
        # (event, count awaiting approval) after every step: requested, approved, denied,
        # expired, or refresh
        self._on_change = on_change
        # a key's creator chain (KeyStore.created_by_chain), for the two-person rule
        self.creators = creators

    def requires(self, command: Command) -> bool:
        return self.policy.requires(command)

    # -- holding -------------------------------------------------------------------------------

    def stored_request(self, params: Any, client_context: dict[str, Any]) -> StoredRequest:
        return StoredRequest(
            params_json=canonical(params),
            params_hash=params_hash(params),
            client_context_json=canonical(client_context),
            expires_at=isoformat(utcnow() + timedelta(seconds=self.policy.ttl_s)),
        )

    def requested(
        self,
        command_id: str,
        key_id: int | None,
        key_name: str | None,
        principal: str | None = None,
    ) -> None:
        self.records.add_event(command_id, Step.REQUESTED, key_id, key_name, principal=principal)
        self._changed(Step.REQUESTED, command_id)

    # -- deciding ------------------------------------------------------------------------------

    def decide(
        self,
        command_id: str,
        approver: Principal | ApiKey,
        *,
        approve: bool,
        reason: str | None,
    ) -> Execution:
        """Approve or deny; Forbidden for a caller that may not, for the requester (key or
        person) or a key it created (``check_approver``), NotFound, or Conflict when it is not
        awaiting approval (decided, expired)."""
        if isinstance(approver, ApiKey):
            approver = Principal.of_key(approver)
        if not may_approve(approver):
            raise Forbidden(
                "deciding on approvals needs an admin key or membership of an approver group"
            )
        self.expire()
        check_approver(approver, self._execution(command_id), self.creators)
        decided = self.records.decide(
            command_id,
            approve=approve,
            key_id=approver.key_id,
            key_name=approver.name,
            reason=reason,
            principal=approver.id,
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

    def withdraw(
        self, command_id: str, key_id: int | None, key_name: str | None, principal: str | None
    ) -> bool:
        """The requester withdraws its request (it is denied, and says so); False when it was
        no longer awaiting approval. Only for the requester: the caller checks ownership."""
        withdrawn = self.records.withdraw(command_id, key_id, key_name, principal)
        if withdrawn:
            self._changed(Step.DENIED, command_id)
        return withdrawn

    def refusal(self, approver: Principal | ApiKey, execution: Execution) -> str | None:
        """Why ``approver`` may not decide on ``execution`` (None: it may): the one rule,
        :func:`check_approver`, asked before a decision is offered (the console shows the
        buttons disabled with this message)."""
        if isinstance(approver, ApiKey):
            approver = Principal.of_key(approver)
        try:
            check_approver(approver, execution, self.creators)
        except Forbidden as refused:
            return refused.message
        return None

    @staticmethod
    def stored_params(execution: Execution) -> Any:
        """What an approved execution runs: its stored params, refused (never run) when they
        no longer match the hash taken when it was requested."""
        if params_hash(execution.params) != execution.params_hash:
            raise InvalidRequest("the stored request does not match its hash: not run")
        return execution.params

    def executed(self, command_id: str, status: ExecutionStatus) -> None:
        """The last step of an approved execution: it ran (or could not), with its status."""
        self.records.add_event(command_id, Step.EXECUTED, reason=status)

    # -- expiring and reading ------------------------------------------------------------------

    def expire(self) -> list[str]:
        """End the executions nobody decided on in time (housekeeping, and before reads)."""
        expired = self.records.expire()
        for command_id in expired:
            self._changed(Step.EXPIRED, command_id)
        return expired

    def requests_ended(self, command_ids: list[str]) -> None:
        """Executions a key's revocation denied: the gauge and the webhook are told."""
        for command_id in command_ids:
            self._changed(Step.DENIED, command_id)

    def awaiting(self, limit: int = 100) -> list[Execution]:
        """Executions awaiting approval, newest first (expired ones ended first)."""
        self.expire()
        rows, _ = self.audit.query(status=ExecutionStatus.AWAITING_APPROVAL, limit=limit)
        return rows

    def count_awaiting(self) -> int:
        return self.records.count_awaiting()

    def recently_decided(self, limit: int = 10) -> list[Execution]:
        """The executions decided (approved, denied) or expired most recently, newest first."""
        return self.records.recently_decided(limit)

    def trail(self, command_id: str) -> list[Event]:
        """An execution's approval events, oldest first; NotFound for no such execution."""
        self._execution(command_id)
        return self.records.events(command_id)

    def refresh_gauge(self) -> None:
        if self._on_change is not None:
            self._on_change("refresh", self.count_awaiting())

    def _execution(self, command_id: str) -> Execution:
        execution = self.audit.get(command_id)
        if execution is None:
            raise NotFound(f"no execution {command_id!r}", {"command_id": command_id[:100]})
        return execution

    def _changed(self, event: Step, command_id: str) -> None:
        if self._on_change is not None:
            self._on_change(event, self.count_awaiting())
        execution = self.audit.get(command_id)
        if execution is not None:
            self.notifier.notify(event, execution)
