"""Admission: may this request thread wait on a command now?

A worker has a fixed number of request threads; a command request holds one while its
command runs. Admission keeps some of them for health checks, metrics and quick refusals, and
keeps one key from holding every slot, by refusing rather than queueing (a call over its key's
share waits a moment for one of that key's own to end).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .errors import RateLimited, ServiceUnavailable

SHARE_WAIT_S = 0.25  # how long a call over its key's share waits for one of the key's own
SHARE_WAITERS_PER_KEY = 3  # how many of a key's calls may wait so at once in a worker


class Admission:
    """Caps the request threads of this process that wait on a command, so that a flood of
    slow commands leaves threads free for health checks, metrics and quick refusals; and caps
    what one key may hold of them (``per_key``, less than all), so that one key's flood
    leaves slots for every other key.

    Per process by design: it counts this process's own threads, and a key's share is exact
    per worker (N workers admit a key up to N shares in all). Beyond the worker's cap a caller
    is refused at once with :class:`ServiceUnavailable` (503). Beyond its key's share it waits
    up to SHARE_WAIT_S for one of that key's own calls to end (a few callers per key at most,
    so waiting ties up few threads): a burst of quick calls that happened to land on one
    worker is smoothed, while a key holding slow calls is refused with :class:`RateLimited`
    (429: that key's own excess). Both with Retry-After."""

    def __init__(self, limit: int, on_refused: Callable[[], None] | None = None, per_key: int = 0):
        self.limit = limit
        self.per_key = per_key or max(1, limit // 2)  # 0: half of the worker's slots
        self._on_refused = on_refused
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)  # a slot given back
        self._held = 0
        # this worker's own request threads waiting on commands, per key: a count of this
        # process's threads, like the cap itself, not state that workers must agree on
        self._held_by_key: dict[int | str | None, int] = {}
        self._waiting_by_key: dict[int | str | None, int] = {}  # callers waiting for their share

    def slot(self, key_id: int | str | None) -> AdmissionSlot:
        """A context manager that holds one of the worker's slots for the key ``key_id`` (a
        person with an access token and no key: their principal id, their own share)."""
        return AdmissionSlot(self, key_id)

    def _take(self, key: int | str | None) -> None:
        if self.limit <= 0:
            return
        with self._freed:
            mine = self._held_by_key.get(key, 0)
            waiting = self._waiting_by_key.get(key, 0)
            if mine >= self.per_key and waiting < SHARE_WAITERS_PER_KEY:
                self._waiting_by_key[key] = waiting + 1
                try:
                    self._freed.wait_for(
                        lambda: self._held_by_key.get(key, 0) < self.per_key, SHARE_WAIT_S
                    )
                finally:
                    if waiting:
                        self._waiting_by_key[key] = waiting
                    else:
                        del self._waiting_by_key[key]
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

    def _give_back(self, key: int | str | None) -> None:
        if self.limit <= 0:
            return
        with self._freed:
            self._held -= 1
            left = self._held_by_key[key] - 1
            if left:
                self._held_by_key[key] = left
            else:
                del self._held_by_key[key]
            if self._waiting_by_key:
                self._freed.notify_all()


class AdmissionSlot:
    """One admission slot for one key: taken on enter (or refused), given back on exit."""

    __slots__ = ("_admission", "_key")

    def __init__(self, admission: Admission, key: int | str | None):
        self._admission, self._key = admission, key

    def __enter__(self) -> AdmissionSlot:
        self._admission._take(self._key)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._admission._give_back(self._key)
