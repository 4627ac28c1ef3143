"""API keys, the rules: what a key is, what it may run, and what a valid key request says.

A key is 32 random alphanumeric characters (about 190 bits), shown once at creation or
rotation; only its SHA-256 digest is kept (``waygate.keystore`` stores, finds and verifies
keys, and keeps their trail).

Least privilege: a key may carry an allow-list of command patterns (shell-style globs over
the command name, or ``Plugin.command`` / ``Plugin.*``) and a read-only flag admitting only
commands annotated ``readOnlyHint``; :class:`Scope` is the one check, used wherever a command
is listed or resolved. Admin keys are unscoped for commands. The checks below are the same
for REST and the CLI: names, roles, patterns, rate limits, expiry, a rotation's grace.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from limits import parse as parse_limit

from .clock import ClientTimeError, isoformat, parse_client_time, parse_iso, utcnow
from .errors import Forbidden, InvalidRequest

KEY_LENGTH = 32
ROLES = ("admin", "user")
EVENTS = ("created", "changed", "rotated", "revoked", "expired_use")
MAX_PATTERNS = 64
MAX_GRACE = timedelta(days=30)
MAX_LIFETIME = timedelta(days=3650)
MAX_CHAIN = 64  # the longest creator chain followed (key -> its creator -> ...)
_ALPHABET = string.ascii_letters + string.digits
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_PATTERN_RE = re.compile(r"[A-Za-z0-9_.*?\[\]!-]{1,128}")
# a person, as waygate.principals names one: <issuer URL>#<subject>
_OWNER_RE = re.compile(r"https?://[^\s#]{1,500}#[^\s]{1,255}")


@dataclass(frozen=True)
class Scope:
    """Which commands a key may run: ``allow`` patterns (None: every command), read-only."""

    allow: tuple[str, ...] | None = None
    read_only: bool = False

    def permits(self, command: str, plugin: str, annotations: Mapping[str, Any]) -> bool:
        if self.read_only and not annotations.get("readOnlyHint"):
            return False
        if self.allow is None:
            return True
        qualified = f"{plugin}.{command}"
        return any(
            fnmatch.fnmatchcase(command, p) or fnmatch.fnmatchcase(qualified, p) for p in self.allow
        )


UNSCOPED = Scope()


@dataclass(frozen=True)
class Actor:
    """Who changes keys: an admin key (name and id) or person, or the host's CLI (no id)."""

    name: str
    id: int | None = None
    principal: str | None = None  # waygate.principals' id of who acted


CLI_ACTOR = Actor("cli")


@dataclass(frozen=True)
class ApiKey:
    name: str
    role: str
    created_at: str
    last_used_at: str | None = None
    revoked_at: str | None = None
    id: int | None = None  # never reused: what executions and events belong to
    allow: tuple[str, ...] | None = None
    read_only: bool = False
    expires_at: str | None = None
    rate_limit: str | None = None  # the key's own execute limit, e.g. "1000/minute"
    updated_at: str | None = None
    created_by_key_id: int | None = None  # the key that created this one; None: the CLI
    created_by: str | None = None  # its name ("cli" for the host's CLI)
    # the person who holds the key (<issuer>#<subject>), so that "who" is a person however
    # they come: the two-person rule compares owners
    owner: str | None = None
    owner_name: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def scope(self) -> Scope:
        """The commands this key may run (admin keys: every one)."""
        if self.is_admin:
            return UNSCOPED
        return Scope(self.allow, self.read_only)

    @property
    def actor(self) -> Actor:
        return Actor(self.name, self.id)

    def state(self, now: datetime | None = None) -> str:
        """``revoked``, ``expired`` or ``live``: whether the key opens anything now."""
        if self.revoked_at:
            return "revoked"
        if self.expires_at and parse_iso(self.expires_at) <= (now or utcnow()):
            return "expired"
        return "live"

    def as_dict(self) -> dict[str, Any]:
        """The record as shown to admins: never a secret or a digest."""
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "allow": list(self.allow) if self.allow is not None else None,
            "read_only": self.read_only,
            "expires_at": self.expires_at,
            "rate_limit": self.rate_limit,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_used_at": self.last_used_at,
            "revoked_at": self.revoked_at,
            "created_by": self.created_by,
            "created_by_id": self.created_by_key_id,
            "owner": self.owner,
            "owner_name": self.owner_name,
        }


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def generate_key() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(KEY_LENGTH))


# -- validation: the same rules for REST and the CLI, applied by the store ------------------


def _invalid(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"invalid {field}: {message}", {"fields": {field: [message]}})


def check_patterns(patterns: Any) -> tuple[str, ...] | None:
    if patterns is None:
        return None
    if not isinstance(patterns, (list, tuple)) or len(patterns) > MAX_PATTERNS:
        raise _invalid("allow", f"a list of at most {MAX_PATTERNS} patterns")
    for p in patterns:
        if not isinstance(p, str) or not _PATTERN_RE.fullmatch(p):
            raise _invalid(
                "allow",
                f"{str(p)[:60]!r} is not a pattern (letters, digits, '_', '.', '-', and the"
                " globs '*', '?', '[...]'; up to 128 characters)",
            )
    return tuple(dict.fromkeys(patterns))


def check_owner(owner: Any, owner_name: Any = None) -> tuple[str | None, str | None]:
    """A key's owner (a person's ``<issuer>#<subject>``) and display name, checked."""
    if owner is None:
        if owner_name is not None:
            raise _invalid("owner_name", "give it with owner")
        return None, None
    if not isinstance(owner, str) or not _OWNER_RE.fullmatch(owner):
        raise _invalid(
            "owner",
            "a person as <issuer URL>#<subject>, e.g. https://sso.example.com/realms/ops#alice",
        )
    if owner_name is not None and (
        not isinstance(owner_name, str) or not 0 < len(owner_name) <= 200
    ):
        raise _invalid("owner_name", "1-200 characters")
    return owner, owner_name


def check_rate_limit(value: Any) -> str | None:
    if value is None:
        return None
    try:
        item = parse_limit(value) if isinstance(value, str) and len(value) <= 64 else None
    except ValueError:
        item = None
    if item is None or item.amount < 1:
        raise _invalid("rate_limit", f"{str(value)[:60]!r} is not a rate like 1000/minute")
    return value.strip()


def expiry(expires_in: Any = None, expires_at: Any = None) -> str | None:
    """The absolute expiry from ``expires_in`` seconds or an ISO ``expires_at`` (one of them)."""
    if expires_in is not None and expires_at is not None:
        raise _invalid("expires_at", "give expires_in or expires_at, not both")
    now = utcnow()
    if expires_in is not None:
        if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in < 1:
            raise _invalid("expires_in", "a whole number of seconds, at least 1")
        if expires_in > MAX_LIFETIME.total_seconds():
            raise _invalid("expires_in", f"at most {int(MAX_LIFETIME.total_seconds())} s")
        return isoformat(now + timedelta(seconds=expires_in))
    if expires_at is not None:
        try:
            when = parse_client_time(expires_at)
        except ClientTimeError as exc:
            raise _invalid(
                "expires_at", f"an ISO 8601 time with a zone, e.g. 2027-01-31T00:00:00Z: {exc}"
            ) from None
        if when <= now:
            raise _invalid("expires_at", "must be in the future")
        return isoformat(when)
    return None


def parse_duration(text: str) -> int:
    """``30d``, ``12h``, ``15m``, ``90s`` or plain seconds, for the CLI's ``--expires``."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text or "")
    if not match:
        raise _invalid("expires_in", f"{text!r} is not a duration like 30d, 12h, 15m or 90s")
    unit = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return int(match.group(1)) * unit


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise _invalid("name", "1-64 characters of letters, digits, '_', '.', '@' or '-'")
    return name


def check_role(role: Any) -> str:
    if role not in ROLES:
        raise _invalid("role", "admin or user")
    return role


def check_read_only(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _invalid("read_only", "true or false")
    return value


def check_grace(grace_seconds: Any) -> int:
    """How long a rotated key's old secret stays valid: whole seconds up to MAX_GRACE."""
    if (
        isinstance(grace_seconds, bool)
        or not isinstance(grace_seconds, int)
        or not 0 <= grace_seconds <= MAX_GRACE.total_seconds()
    ):
        raise _invalid("grace_seconds", f"whole seconds from 0 to {int(MAX_GRACE.total_seconds())}")
    return grace_seconds


def require_admin(key: ApiKey) -> None:
    if not key.is_admin:
        raise Forbidden("this endpoint needs an admin key")
