"""Admission: may this request thread wait on a command now?

A worker has a fixed number of request threads; a command request holds one while its
command runs. Admission keeps some of them for health checks, metrics and quick refusals, and
keeps one key from holding every slot, by refusing at once rather than queueing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .errors import RateLimited, ServiceUnavailable


class Admission:
    """Caps the request threads of this process that wait on a command, so that a flood of
    slow commands leaves threads free for health checks, metrics and quick refusals; and caps
    what one key may hold of them (``per_key``, less than all), so that one key's flood
    leaves slots for every other key.

    Per process by design: it counts this process's own threads, and a key's share is exact
    per worker (N workers admit a key up to N shares in all). Beyond either cap a caller is
    refused at once instead of queueing: the worker's cap with :class:`ServiceUnavailable`
    (503), a key's share with :class:`RateLimited` (429: that key's own excess), both with
    Retry-After."""

    def __init__(self, limit: int, on_refused: Callable[[], None] | None = None, per_key: int = 0):
        self.limit = limit
        self.per_key = per_key or max(1, limit // 2)  # 0: half of the worker's slots
        self._on_refused = on_refused
        self._lock = threading.Lock()
        self._held = 0
        # this worker's own request threads waiting on commands, per key: a count of this
        # process's threads, like the cap itself, not state that workers must agree on
        self._held_by_key: dict[int | None, int] = {}

    def slot(self, key_id: int | None) -> AdmissionSlot:
        """A context manager that holds one of the worker's slots for the key ``key_id``."""
        return AdmissionSlot(self, key_id)

    def _take(self, key: int | None) -> None:
        if self.limit <= 0:
            return
        with self._lock:
            mine = self._held_by_key.get(key, 0)
            over_share, full = mine >= self.per_key, self._held >= self.limit
            if not (over_share or full):
                self._held += 1
                self._held_by_key[key] = mine + 1
                return
        if self._on_refused is not None:
            self._on_refused()
        if over_share:
            raise RateLimited(
                f"too many command requests of this key at once: it already holds {mine} of"
                f" this worker's {self.limit} command slots, the most one key may; retry when"
                " one has finished",
                {"key_share": self.per_key, "worker_slots": self.limit},
                retry_after=1,
            )
        raise ServiceUnavailable(
            "server busy: too many command requests are waiting in this worker",
            retry_after=1,
        )

    def _give_back(self, key: int | None) -> None:
        if self.limit <= 0:
            return
        with self._lock:
            self._held -= 1
            left = self._held_by_key[key] - 1
            if left:
                self._held_by_key[key] = left
            else:
                del self._held_by_key[key]


class AdmissionSlot:
    """One admission slot for one key: taken on enter (or refused), given back on exit."""

    __slots__ = ("_admission", "_key")

    def __init__(self, admission: Admission, key: int | None):
        self._admission, self._key = admission, key

    def __enter__(self) -> AdmissionSlot:
        self._admission._take(self._key)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._admission._give_back(self._key)
