"""Time as the API shows it: UTC, ISO 8601 with a trailing Z; and the one parser of every
date-time a client sends (``since`` filters, a key's ``expires_at``)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(moment: datetime | None = None) -> str:
    moment = moment or utcnow()
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    """Parse ISO 8601; a naive time is taken as UTC. Raises ValueError on bad input."""
    moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


# Every date-time a client sends is read by parse_client_time: ISO 8601, a time without a zone
# taken as UTC, and its UTC instant within this range (what the stored ISO form can hold).
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
RANGE = "0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z"
MAX_TIME_TEXT = 64  # characters; ISO 8601 needs far fewer


class ClientTimeError(ValueError):
    """A client's date-time that is not ISO 8601, or whose UTC instant is out of RANGE."""


def parse_client_time(text: object) -> datetime:
    """A client's ISO 8601 date-time as an aware UTC datetime; ClientTimeError otherwise,
    never an OverflowError (9999-12-31T23:59:59-23:59 is in year 10000 once in UTC)."""
    if not isinstance(text, str) or len(text) > MAX_TIME_TEXT:
        raise ClientTimeError(f"not an ISO 8601 date-time from {RANGE}")
    try:
        moment = parse_iso(text)
    except ValueError:
        raise ClientTimeError(f"not an ISO 8601 date-time from {RANGE}") from None
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ClientTimeError(f"outside the supported range {RANGE} (in UTC)") from None
