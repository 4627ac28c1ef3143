"""Per-process state, made again after fork: the one mechanism every owner uses.

Threads do not survive a fork, a lock another thread held stays locked in the child for good,
and an SQLite connection or an flock'd file must not be shared between processes. An owner of
such state (Storage, CommandPool, Housekeeper, LatencyWindow, the metrics singleton) registers
a reset function once; in a forked child every reset runs before anything else (through
``os.register_at_fork``), so the owner finds its per-process state gone and makes it again on
first use. Nothing on a request's path asks for the process id.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_owners: list[tuple[weakref.ref, Callable[[Any], None]]] = []
_lock = threading.Lock()


def reset_after_fork(owner: T, reset: Callable[[T], None]) -> None:
    """Call ``reset(owner)`` in every process forked from this one, while ``owner`` lives."""
    with _lock:
        if len(_owners) > 256:  # drop owners that are gone (tests make many)
            _owners[:] = [(ref, fn) for ref, fn in _owners if ref() is not None]
        _owners.append((weakref.ref(owner), reset))


def _in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent's may have been held by another thread at fork
    for ref, reset in list(_owners):
        owner = ref()
        if owner is not None:
            reset(owner)


os.register_at_fork(after_in_child=_in_child)
