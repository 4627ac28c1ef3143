"""Rate limits (spec section 5), keyed by API key name, else by client IP.

Built directly on the ``limits`` library (its fixed-window strategy and storages: Waygate's
exact ``sqlite://``, ``redis://``, ``memory://``). flask-limiter, which wraps the same
library, spends a large share of a bare Flask request in its generic limit resolution (figures
in bench/README.md), so this module does the one thing Waygate needs:
one counter per request, chosen from a table built once at start-up.

Views join a limit group with :func:`limit_group` (a group's endpoints share one budget per
caller: /mcp/execute and /mcp's tool calls share "execute"); a view may choose its group per
request with :func:`limit_group_by`; every other endpoint has its own budget of the default
limit. Answers carry X-RateLimit-Limit/-Remaining/-Reset; over the limit: 429
RATE_LIMITED with Retry-After.

Refused keys also count per client address in one budget for every endpoint together, so
that rotating endpoints does not multiply a guesser's attempts. Once it is spent, every
request from that address that presents a key is refused, right key or wrong: a 429 must not
tell a guess that it was right. When the storage fails, requests pass (fail open, logged, and
/health fails ``cache``) or are refused with 503 when configured to fail closed.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from collections.abc import Callable

from flask import Flask, Response, current_app, g, has_request_context, request
from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

from .. import (
    limit_counters,  # noqa: F401  (registers the sqlite:// and postgresql:// storage schemes)
    limit_table,  # noqa: F401  (registers the table:// storage scheme)
    tracing,
)
from ..config import Config
from ..errors import RateLimited, ServiceUnavailable
from ..keys import ApiKey
from ..principals import Principal

log = logging.getLogger("waygate.limits")

LIMIT_GROUPS = ("execute", "health", "metrics")
STORAGE_ERROR_LOG_EVERY_S = 10.0


def limit_group(group: str) -> Callable:
    """Mark a view as counted against ``group``'s limit (shared by every view in the group)."""
    if group not in LIMIT_GROUPS:
        raise ValueError(f"unknown limit group {group!r}")

    def mark(view: Callable) -> Callable:
        view.waygate_limit_group = group  # type: ignore[attr-defined]
        return view

    return mark


def limit_group_by(choose: Callable[[], str | None]) -> Callable:
    """Mark a view whose budget depends on the request: ``choose()`` names the group (checked
    when the request is counted), or None for the view's own budget of the default limit."""

    def mark(view: Callable) -> Callable:
        view.waygate_limit_group_by = choose  # type: ignore[attr-defined]
        return view

    return mark


class RateLimiter:
    def __init__(self, config: Config):
        uri = config.effective_ratelimit_storage_uri
        options = (  # the database's waits bound the counters' too
            {
                "connect_timeout_s": config.db_connect_timeout_s,
                "statement_timeout_ms": config.db_statement_timeout_ms,
            }
            if uri.startswith(("postgresql://", "postgres://"))
            else {}
        )
        self.storage = storage_from_string(uri, wrap_exceptions=True, **options)
        self.strategy = FixedWindowRateLimiter(self.storage)
        # Waygate's own storages count and tell the window's end in one step.
        self._incr_window = getattr(self.storage, "incr_window", None)
        # Counters in Waygate's own PostgreSQL database: the hit also reads the key generation,
        # which confirms a key answered from the process's cache (web/auth.py) without a
        # statement of its own.
        same_database = bool(config.database_url) and uri == config.database_url
        self._incr_window_generation = (
            getattr(self.storage, "incr_window_generation", None) if same_database else None
        )
        self.fail_open = config.ratelimit_fail_open
        self.default = parse(config.rate_limit_default)
        self.groups = {
            group: parse(getattr(config, f"rate_limit_{group}")) for group in LIMIT_GROUPS
        }
        self.auth_failures = parse(config.rate_limit_auth_failures)
        self._by_endpoint: dict[str, tuple[RateLimitItem, str]] = {}
        self._chosen_by: dict[str, Callable[[], str | None]] = {}
        self._storage_error_logged = 0.0
        # Set by web/auth.py: the caller identified again when its cached key was read at
        # another key generation than the hit's; True when that changed who it is or its limit.
        self.identify_again: Callable[[int | None], bool] | None = None

    def init_app(self, app: Flask) -> None:
        for endpoint, view in app.view_functions.items():
            group = getattr(view, "waygate_limit_group", None)
            self._by_endpoint[endpoint] = (
                (self.groups[group], group) if group else (self.default, endpoint)
            )
            choose = getattr(view, "waygate_limit_group_by", None)
            if choose is not None:
                self._chosen_by[endpoint] = choose
        app.before_request(self.check)
        app.after_request(self.add_headers)

    def check(self) -> None:
        """Count this request against its limit; raise RateLimited when over it."""
        req = request._get_current_object()  # type: ignore[attr-defined]
        endpoint = req.endpoint
        if endpoint is None or req.method == "OPTIONS":  # unrouted paths, CORS preflight
            return
        item, scope = self._limit_for(endpoint)
        key = g.get("api_key")
        principal = g.get("principal")
        if scope == "execute" and key is not None and key.rate_limit:
            item = self._own_limit(key.rate_limit)  # the key's own limit replaces the default
        address = f"ip:{req.remote_addr or 'unknown'}"
        # By key id (a revoked key's successor of the same name starts afresh), else address.
        # A person with an access token: by person (a digest: the id is not a secret, but long).
        if key is not None:
            identity = f"key:{key.id}"
        elif principal is not None:
            identity = "person:" + hashlib.sha256(principal.id.encode()).hexdigest()[:32]
        else:
            identity = address
        # A request that presents a credential which was accepted reads its address's budget
        # of refused keys; Waygate's storages read it in the hit's own step (one statement or
        # one lock instead of two).
        budget = None
        if (
            self._incr_window is not None
            and (key is not None or principal is not None)
            and g.get("auth_error") is None
        ):
            budget = self.auth_failures.key_for("auth-failures", address)
        try:
            with tracing.span("waygate.ratelimit.hit", {"waygate.limit": scope}):
                cached_at = g.get("key_generation")
                if cached_at is not None and self._incr_window_generation is not None:
                    counter = item.key_for(scope, identity)
                    count, reset_at, refused_keys, generation = self._incr_window_generation(
                        counter, item.get_expiry(), 1, budget
                    )
                else:
                    count, reset_at, refused_keys = self._hit(item, scope, identity, budget)
                    cached_at = None
        except StorageError as exc:
            self._storage_failed(exc)
            return
        if cached_at is not None:
            if generation == cached_at:
                g.key_generation = None  # no key changed since the cached key was read
            elif self.identify_again is not None and self.identify_again(generation):
                return self.check()  # counted again, as who the caller turned out to be
        g.rate_limit = (item.amount, max(0, item.amount - count), math.ceil(reset_at))
        g.rate_limit_counter = (item, scope, identity)  # what charge() adds to
        if count > item.amount:
            raise self._refusal(item, reset_at)
        if budget is None:
            self._check_auth_failures(key or principal, address)
        elif refused_keys >= self.auth_failures.amount:  # as FixedWindowRateLimiter.test
            self._refuse_spent_budget(address)

    def charge(self, extra: int) -> None:
        """Count ``extra`` more hits against this request's budget: a batch's commands after
        its first (which the request's own hit counted), so that a key's limit counts the
        commands it runs, not the requests that carry them. RateLimited when that goes over
        the limit, before anything runs."""
        counter = g.get("rate_limit_counter")
        if counter is None or extra <= 0:
            return
        item, scope, identity = counter
        try:
            count, reset_at, _ = self._hit(item, scope, identity, None, extra)
        except StorageError as exc:
            self._storage_failed(exc)
            return
        g.rate_limit = (item.amount, max(0, item.amount - count), math.ceil(reset_at))
        if count > item.amount:
            raise self._refusal(item, reset_at)

    def _hit(
        self, item: RateLimitItem, scope: str, identity: str, read: str | None, amount: int = 1
    ) -> tuple[int, float, int]:
        """The fixed-window hit (``FixedWindowRateLimiter.hit``, which answers only
        allowed-or-not), keeping the count it returns: the remaining budget is the hit's own,
        not a second read of a counter other workers may have moved since. With ``read``, also
        that counter's live count (Waygate's storages only)."""
        counter = item.key_for(scope, identity)
        if self._incr_window is not None:
            return self._incr_window(counter, item.get_expiry(), amount, read)
        count = self.storage.incr(counter, item.get_expiry(), amount)
        return count, self.storage.get_expiry(counter), 0

    def _check_auth_failures(self, key: ApiKey | Principal | None, address: str) -> None:
        failed = g.get("auth_error") is not None
        if not failed and key is None:
            return  # no key presented: nothing to guess
        self._count_key_attempt(failed, address)

    def check_presented_key(self, failed: bool) -> None:
        """A key presented other than in a header (the console's sign-in form) meets the same
        budget of refused keys per address: a refusal counts, and once the budget is spent
        every attempt is refused, right key or wrong (RateLimited)."""
        address = f"ip:{request.remote_addr or 'unknown'}"
        self._count_key_attempt(failed, address)

    def _count_key_attempt(self, failed: bool, address: str) -> None:
        item = self.auth_failures
        try:
            if failed:
                allowed = self.strategy.hit(item, "auth-failures", address)
            else:
                allowed = self.strategy.test(item, "auth-failures", address)
            if allowed:
                return
        except StorageError as exc:
            self._storage_failed(exc)
            return
        self._refuse_spent_budget(address)

    def _refuse_spent_budget(self, address: str) -> None:
        item = self.auth_failures
        try:
            reset_at, _ = self.strategy.get_window_stats(item, "auth-failures", address)
        except StorageError as exc:
            self._storage_failed(exc)
            return
        raise self._refusal(item, reset_at, "too many refused keys from this address")

    @staticmethod
    def _refusal(item: RateLimitItem, reset_at: float, why: str = "rate limit exceeded"):
        retry_after = max(1, math.ceil(reset_at - time.time()))
        return RateLimited(
            f"{why}: {item}",
            {"limit": str(item), "retry_after_s": retry_after},
            retry_after=retry_after,
        )

    @staticmethod
    @functools.lru_cache(maxsize=256)
    def _own_limit(text: str) -> RateLimitItem:
        return parse(text)

    def _limit_for(self, endpoint: str) -> tuple[RateLimitItem, str]:
        choose = self._chosen_by.get(endpoint)
        if choose is not None:
            group = choose()
            if group is not None:
                return self.groups[group], group
        return self._by_endpoint.get(endpoint) or (self.default, endpoint)

    def _storage_failed(self, exc: StorageError) -> None:
        now = time.monotonic()
        if now - self._storage_error_logged > STORAGE_ERROR_LOG_EVERY_S:
            self._storage_error_logged = now
            log.error(
                "rate-limit storage failed (%s): %s",
                "failing open" if self.fail_open else "refusing requests",
                exc.storage_error if hasattr(exc, "storage_error") else exc,
                extra={"error_code": "SERVICE_UNAVAILABLE"},
            )
        if not self.fail_open:
            raise ServiceUnavailable(
                "rate-limit storage unavailable; try again shortly", retry_after=5
            )

    @property
    def confirms_key_generation(self) -> bool:
        """Whether each request's hit reads the key generation (and confirms cached keys)."""
        return self._incr_window_generation is not None

    @staticmethod
    def add_headers(response: Response) -> Response:
        state = g.get("rate_limit")
        if state is not None:
            limit, remaining, reset = state
            response.headers.extend(
                (
                    ("X-RateLimit-Limit", str(limit)),
                    ("X-RateLimit-Remaining", str(remaining)),
                    ("X-RateLimit-Reset", str(reset)),
                )
            )
        return response

    def storage_answers(self) -> bool:
        """Whether the storage works. A request whose own hit was just counted has the answer
        already (a write the storage took moments ago), so /health asks only when it was not."""
        if has_request_context() and g.get("rate_limit") is not None:
            return True
        try:
            return bool(self.storage.check())
        except Exception as exc:  # any storage failure means "does not answer"
            log.warning("rate-limit storage check failed: %s", exc)
            return False


def charge(extra: int) -> None:
    """:meth:`RateLimiter.charge` of this app's limiter (a batch's further commands)."""
    limiter = current_app.extensions.get("waygate.limiter")
    if limiter is not None:
        limiter.charge(extra)


def build(app: Flask, config: Config) -> RateLimiter:
    limiter = RateLimiter(config)
    limiter.init_app(app)
    return limiter
