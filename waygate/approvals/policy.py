"""Which commands wait for approval, and which keys may decide on them."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from ..keys import ApiKey
from ..sdk import Command

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
