"""List endpoints' query parameters and headers: pagination (spec section 6): ``page`` and
``limit`` in, X-Total-Count, X-Page-Count and Link (next, prev, first, last) out; and the
``since`` filter.

Links never echo the request's Host (a client or proxy may send any): they are relative, or
absolute under WAYGATE_PUBLIC_URL when it is configured."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from flask import Response, request

from ..clock import RANGE, ClientTimeError, isoformat, parse_client_time
from ..errors import InvalidRequest
from . import services

MAX_LIMIT = 100


@dataclass(frozen=True)
class Page:
    number: int
    limit: int

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.limit

    def slice(self, items: Sequence[Any]) -> Sequence[Any]:
        return items[self.offset : self.offset + self.limit]


def paginated(view):
    """Mark a list view: the OpenAPI document gets page/limit and the pagination headers."""
    view.waygate_paginated = True
    return view


def _integer(name: str, default: int, low: int, high: int | None) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise InvalidRequest(
            f"query parameter {name!r} must be an integer {bound}",
            {"parameter": name, "value": raw[:100]},
        )
    return value


def requested_since() -> str | None:
    """The ``since`` filter of a list endpoint, normalised to the stored ISO form."""
    since = request.args.get("since")
    if since is None:
        return None
    try:
        return isoformat(parse_client_time(since))
    except ClientTimeError as exc:
        raise InvalidRequest(
            f"since must be an ISO 8601 date-time, e.g. 2025-01-14T10:00:00Z: {exc}",
            {"parameter": "since", "value": since[:100], "range": RANGE},
        ) from None


def requested_page(default_limit: int = 10) -> Page:
    return Page(
        number=_integer("page", 1, 1, 1_000_000),
        limit=_integer("limit", default_limit, 1, MAX_LIMIT),
    )


def add_headers(response: Response, page: Page, total: int) -> Response:
    pages = max(1, math.ceil(total / page.limit))
    response.headers["X-Total-Count"] = str(total)
    response.headers["X-Page-Count"] = str(pages)
    links = {"first": 1, "last": pages}
    if page.number < pages:
        links["next"] = page.number + 1
    if page.number > 1:
        links["prev"] = min(page.number - 1, pages)
    response.headers["Link"] = ", ".join(
        f'<{_url(number, page.limit)}>; rel="{rel}"' for rel, number in links.items()
    )
    return response


def _url(number: int, limit: int) -> str:
    args = request.args.to_dict()
    args.update(page=str(number), limit=str(limit))
    return f"{services().config.public_url}{request.script_root}{request.path}?{urlencode(args)}"
