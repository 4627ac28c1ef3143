"""Which commands wait for approval, and who (keys, people) may decide on them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from ..audit import Execution
from ..errors import Forbidden
from ..keys import MAX_CHAIN
from ..principals import Principal
from ..sdk import Command

META_APPROVAL = "waygate/approvalRequired"  # the tool's _meta key in MCP tools/list
APPROVAL_NOTE = "Requires approval: a second person must approve each call before it runs."


@dataclass(frozen=True)
class ApprovalPolicy:
    """Which commands wait for approval. Globs as in ``fnmatch`` (``drop_*``), case-sensitive;
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


def may_approve(principal: Principal) -> bool:
    """Whether ``principal`` may decide on approvals at all: admins, and with OAuth the
    members of an approver group (WAYGATE_OAUTH_APPROVER_GROUPS). Whether it may decide on
    one request: :func:`check_approver`."""
    return principal.is_admin or principal.approver


def check_approver(
    approver: Principal, execution: Execution, creators: Callable[[int | None], list[int]]
) -> None:
    """The two-person rule, the one place every door (REST, MCP, the CLI) decides it:
    Forbidden unless ``approver`` may approve, and is neither the person who requested
    ``execution`` (with a token, or as the owner of the requesting key, whichever way each
    came), nor the key that requested it, nor a key created by it, directly or through keys
    it created (an admin who mints a second key is still one person). ``creators`` gives a
    key's creator chain."""
    if not may_approve(approver):
        raise Forbidden(
            "deciding on approvals needs an admin key or membership of an approver group"
        )
    if execution.principal is not None and execution.principal == approver.id:
        raise Forbidden(
            "a requester cannot decide on its own request: another person must",
            {"command_id": execution.command_id, "two_person_rule": True},
        )
    requester = execution.key_id
    if requester is None:
        return
    if requester == approver.key_id:
        raise Forbidden(
            "a key cannot decide on its own request: another approver must",
            {"command_id": execution.command_id},
        )
    chain = creators(approver.key_id)
    if len(chain) >= MAX_CHAIN:  # its end is not seen: it may lead back to the requester
        raise Forbidden(
            f"key {approver.name!r} was created through a chain of {MAX_CHAIN} or more keys,"
            " too long to tell whether the requesting key made it: a key of another person"
            " must decide (one the host's CLI made, for example)",
            {"command_id": execution.command_id, "two_person_rule": True},
        )
    if requester in chain:
        raise Forbidden(
            f"key {approver.name!r} was created by the requesting key {execution.key_name!r}"
            " (directly or through keys it created): a key of another person must decide",
            {"command_id": execution.command_id, "two_person_rule": True},
        )
