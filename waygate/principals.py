"""Who is calling: one notion for an API key and for a person.

A person is known by their authorization server: issuer and subject, with a display name and
email from the token's claims. A caller is a :class:`Principal`: a key (perhaps owned by a
person), or a person who came with an access token. Everything that asks "who" (permissions,
audit rows, events, the two-person rule) asks the principal; ``id`` is the string stored in
the database (see migration m015).
"""

from __future__ import annotations

from dataclasses import dataclass

from .keys import Actor, ApiKey, Scope


@dataclass(frozen=True)
class Person:
    issuer: str
    subject: str
    name: str | None = None
    email: str | None = None

    @property
    def id(self) -> str:
        # an issuer URL has no fragment (RFC 8414), so the first "#" splits the two
        return f"{self.issuer}#{self.subject}"

    @property
    def label(self) -> str:
        return self.name or self.email or self.subject


@dataclass(frozen=True)
class Principal:
    """A caller: its role, the commands it may run, and whether it may decide on approvals."""

    role: str
    scope: Scope
    key: ApiKey | None = None
    person: Person | None = None
    approver: bool = False

    @classmethod
    def of_key(cls, key: ApiKey) -> Principal:
        """A key acts as its owner when it has one."""
        return cls(role=key.role, scope=key.scope, key=key, person=owner_of(key))

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def key_id(self) -> int | None:
        return self.key.id if self.key is not None else None

    @property
    def id(self) -> str:
        """The person when there is one (a key's owner acts as its owner), else the key."""
        if self.person is not None:
            return self.person.id
        return f"key:{self.key_id}"

    @property
    def name(self) -> str:
        """A key's name, or a person's display name."""
        if self.key is not None:
            return self.key.name
        return self.person.label if self.person is not None else "unknown"

    @property
    def actor(self) -> Actor:
        return Actor(self.name, self.key_id, self.id)


def person_of(principal_id: str, name: str | None = None) -> Person | None:
    """The person a stored principal id names (None for ``key:<id>``)."""
    issuer, sep, subject = principal_id.partition("#")
    return Person(issuer, subject, name) if sep and subject else None


def owner_of(key: ApiKey) -> Person | None:
    return person_of(key.owner, key.owner_name) if key.owner else None


def owner_for(
    principal: Principal, owner: str | None = None, owner_name: str | None = None
) -> tuple[str | None, str | None]:
    """Who owns a key ``principal`` creates: the one named, else the creating person (with a
    token, or through a key they own), so one person cannot mint a key that is nobody's and
    approve its requests themselves."""
    if owner is None and principal.person is not None:
        return principal.person.id, principal.person.label
    return owner, owner_name
