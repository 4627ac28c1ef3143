"""A ``limits`` storage in memory shared by the workers of one host, registered as ``table://``:
exact across gunicorn workers without a database write.

The counters live in a fixed-size table in a file of the data dir (``ratelimits.table``),
mapped into every worker (``mmap``, ``MAP_SHARED``: one copy in the page cache, no write on a
request's path). A hit is a few memory reads and one write under a lock that every worker takes
(an ``fcntl`` lock on the file's first byte, which the kernel drops when a worker dies, beside a
thread lock for the worker's own threads), so one counter per window is exact across workers,
as the SQLite file was, at a fraction of its cost (bench/README.md, issue 32).

    table:////abs/path/ratelimits.table     (four slashes: an absolute path)

Windows survive a worker's restart (the file stays). A restart of the host starts every window
afresh: the table records the kernel's boot id and is cleared when it differs. Several hosts
cannot share it: for them the counters go to PostgreSQL or Redis.

The table has ``SLOTS`` slots (a hash of the counter's key picks where its search starts; it
looks at ``PROBE`` slots at most); an expired window's slot is reused. When the slots a new
counter may use are all held by live windows, the table does not guess: that counter, and every
counter that is new while such an overflow window lives, is kept in the SQLite file beside the
table (``ratelimits.db``, the previous storage), so no counter is ever split between the two and
none is under-counted. Once the last overflow window has expired, new counters go to the table
again.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import threading
import time
from pathlib import Path

from limits.errors import StorageError
from limits.storage import Storage as LimitsStorage

from .forksafe import reset_after_fork
from .storage.files import PRIVATE_FILE, make_private_dir

MAGIC = b"WGLIMT01"
SLOTS = 1 << 16  # 2 MiB of slots; a sparse file, only touched pages take room
PROBE = 64
# magic, slots, probe, boot id, overflow_until (every overflow window ends before it)
_HEADER = struct.Struct("<8sII16sd")
HEADER_SIZE = 64
# key digest (16 bytes of BLAKE2b: keys never compare equal by accident), count, window end
_SLOT = struct.Struct("<16sqd")
SLOT_SIZE = _SLOT.size
_DOUBLE = struct.Struct("<d")
_OVERFLOW_AT = _HEADER.size - _DOUBLE.size
# An overflow window is made in SQLite a moment after the table notes its end: this margin
# keeps the noted end after the real one.
OVERFLOW_MARGIN_S = 1.0
_EMPTY = bytes(16)


def _boot_id() -> bytes:
    try:
        text = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return bytes.fromhex(text.replace("-", ""))[:16].ljust(16, b"\0")
    except (OSError, ValueError):
        return _EMPTY  # not Linux: the table outlives a reboot, as the SQLite file did


class _Locked:
    """The table's lock: this worker's thread lock, then the lock every worker takes (an fcntl
    record lock on byte 0; the kernel releases it when its holder dies, so a killed worker
    never leaves the table locked). A class, not a generator context manager: it is on every
    request's path."""

    __slots__ = ("_table",)

    def __init__(self, table: LimitTable):
        self._table = table

    def __enter__(self) -> None:
        table = self._table
        table._thread_lock.acquire()
        try:
            fcntl.lockf(table._fd, fcntl.LOCK_EX, 1)
        except BaseException:
            table._thread_lock.release()
            raise

    def __exit__(self, kind, exc, traceback) -> bool:
        table = self._table
        try:
            fcntl.lockf(table._fd, fcntl.LOCK_UN, 1)
        finally:
            table._thread_lock.release()
        return False


class LimitTable:
    """The mapped table: find-or-claim a counter's slot and count, under the shared lock."""

    def __init__(self, path: Path, slots: int = SLOTS, probe: int = PROBE):
        if slots & (slots - 1) or slots < 16:
            raise ValueError("slots must be a power of two, at least 16")
        self.path, self.slots, self.probe = path, slots, min(probe, slots)
        self._mask = slots - 1
        size = HEADER_SIZE + slots * SLOT_SIZE
        make_private_dir(path.parent)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        self._thread_lock = threading.Lock()
        self._lock = _Locked(self)
        with self._lock:
            if os.fstat(self._fd).st_size != size:
                os.ftruncate(self._fd, size)
            self._map = mmap.mmap(self._fd, size, mmap.MAP_SHARED)
            magic, stored_slots, _, boot, _ = _HEADER.unpack_from(self._map, 0)
            if (magic, stored_slots, boot) != (MAGIC, slots, _boot_id()):
                self._clear()  # a new file, another layout, or the host restarted
        reset_after_fork(self, LimitTable._after_fork)

    def _after_fork(self) -> None:
        # The mapping and the descriptor stay valid in the child; fcntl locks are not inherited
        # and another thread may have held the thread lock at the fork.
        self._thread_lock = threading.Lock()

    def _clear(self) -> None:
        self._map[:] = bytes(len(self._map))
        _HEADER.pack_into(self._map, 0, MAGIC, self.slots, self.probe, _boot_id(), 0.0)

    @staticmethod
    def digest(key: str) -> bytes:
        return hashlib.blake2b(key.encode(), digest_size=16).digest()

    def _find(self, digest: bytes, now: float) -> tuple[int | None, int | None]:
        """(the counter's slot or None, the first slot it may claim or None); under the lock.
        A counter is always within ``probe`` slots of its start, and a slot once used keeps its
        digest until claimed again, so the search may stop at a never-used slot."""
        mm, free = self._map, None
        start = int.from_bytes(digest[:4], "little")
        for step in range(self.probe):
            offset = HEADER_SIZE + ((start + step) & self._mask) * SLOT_SIZE
            held = mm[offset : offset + 16]
            if held == digest:
                return offset, free
            if held == _EMPTY:
                return None, offset if free is None else free
            if free is None and _DOUBLE.unpack_from(mm, offset + 24)[0] <= now:
                free = offset
        return None, free

    def hit(
        self, key: str, expiry: float, amount: int, read: str | None = None
    ) -> tuple[tuple[int, float] | None, int | None]:
        """(the counter after adding ``amount`` and its window's end, starting a window of
        ``expiry`` seconds when there is none; the live count of the counter ``read``, 0 when
        None is given), both under one lock. Either is None when that counter belongs in the
        overflow store (no slot free, or overflow windows still live): the caller asks there."""
        digest = self.digest(key)
        now = time.time()
        with self._lock:
            counted = self._hit_locked(digest, expiry, amount, now)
            if read is None:
                return counted, 0
            window = self._read_locked(self.digest(read), now)
            return counted, (None if window is None else window[0])

    def _hit_locked(
        self, digest: bytes, expiry: float, amount: int, now: float
    ) -> tuple[int, float] | None:
        slot, free = self._find(digest, now)
        mm = self._map
        if slot is not None:
            _, value, expires = _SLOT.unpack_from(mm, slot)
            if expires <= now:
                value, expires = amount, now + expiry
            else:
                value += amount
            _SLOT.pack_into(mm, slot, digest, value, expires)
            return value, expires
        overflow_until = _DOUBLE.unpack_from(mm, _OVERFLOW_AT)[0]
        if free is None or overflow_until > now:
            # Every overflow window ends before this, so none is ever live while its counter
            # could be made afresh here.
            _DOUBLE.pack_into(
                mm, _OVERFLOW_AT, max(overflow_until, now + expiry + OVERFLOW_MARGIN_S)
            )
            return None
        _SLOT.pack_into(mm, free, digest, amount, now + expiry)
        return amount, now + expiry

    def read(self, key: str) -> tuple[int, float] | None:
        """(count, window end) of the counter's live window; (0, now) when it has none; None
        when it may live in the overflow store."""
        digest = self.digest(key)
        now = time.time()
        with self._lock:
            return self._read_locked(digest, now)

    def _read_locked(self, digest: bytes, now: float) -> tuple[int, float] | None:
        slot, _ = self._find(digest, now)
        mm = self._map
        if slot is not None:
            _, value, expires = _SLOT.unpack_from(mm, slot)
            return (value, expires) if expires > now else (0, now)
        if _DOUBLE.unpack_from(mm, _OVERFLOW_AT)[0] > now:
            return None
        return 0, now

    def forget(self, key: str | None = None) -> int:
        """End one counter's window (or every window: ``key`` None); how many were live."""
        now = time.time()
        with self._lock:
            if key is None:
                live = sum(
                    _DOUBLE.unpack_from(self._map, HEADER_SIZE + i * SLOT_SIZE + 24)[0] > now
                    for i in range(self.slots)
                )
                self._clear()
                return live
            slot, _ = self._find(self.digest(key), now)
            if slot is None:
                return 0
            _, _, expires = _SLOT.unpack_from(self._map, slot)
            _DOUBLE.pack_into(self._map, slot + 24, 0.0)
            return int(expires > now)

    def usable(self) -> bool:
        return not self._map.closed and os.fstat(self._fd).st_nlink > 0


class TableLimitStorage(LimitsStorage):
    """``limits`` storage over :class:`LimitTable`, with the SQLite file as its overflow."""

    STORAGE_SCHEME = ["table"]

    def __init__(
        self, uri: str | None = None, wrap_exceptions: bool = False, **options: float | str | bool
    ):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        # as sqlite:// (and SQLAlchemy): table:////absolute/file, four slashes
        path = (uri or "").removeprefix("table:///")
        if not uri or path == uri or not path.startswith("/"):
            raise ValueError("table rate-limit storage needs an absolute path: table:////abs/file")
        self.table = LimitTable(
            Path(path),
            slots=int(options.get("slots", SLOTS)),
            probe=int(options.get("probe", PROBE)),
        )
        self._overflow_path = Path(path).with_suffix(".db")
        self._overflow_store: LimitsStorage | None = None
        self._overflow_lock = threading.Lock()

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        from .storage import DatabaseError

        return (OSError, ValueError, *DatabaseError)

    @property
    def overflow(self) -> LimitsStorage:
        """The SQLite counters, opened the first time a counter does not fit the table."""
        with self._overflow_lock:
            if self._overflow_store is None:
                from .limit_counters import SQLiteLimitStorage

                self._overflow_store = SQLiteLimitStorage(f"sqlite:///{self._overflow_path}")
            return self._overflow_store

    def incr_window(
        self, key: str, expiry: int, amount: int = 1, read: str | None = None
    ) -> tuple[int, float, int]:
        """The counter after this hit, its window's end and the live count of the counter
        ``read`` (0 without one), in one step (the limiter's path)."""
        try:
            counted, other = self.table.hit(key, expiry, amount, read)
            if counted is None:
                counted = self.overflow.incr_window(key, expiry, amount)[:2]  # type: ignore[attr-defined]
            if other is None:
                other = self.overflow.get(read)
            return counted[0], counted[1], other
        except self.base_exceptions as exc:
            if self.wrap_exceptions:
                raise StorageError(exc) from exc
            raise

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return self.incr_window(key, expiry, amount)[0]

    def get(self, key: str) -> int:
        window = self.table.read(key)
        return self.overflow.get(key) if window is None else window[0]

    def get_expiry(self, key: str) -> float:
        window = self.table.read(key)
        return self.overflow.get_expiry(key) if window is None else window[1]

    def check(self) -> bool:
        return self.table.usable()

    def reset(self) -> int | None:
        live = self.table.forget()
        if self._overflow_store is not None or self._overflow_path.exists():
            live += self.overflow.reset() or 0
        return live

    def clear(self, key: str) -> None:
        self.table.forget(key)
        if self._overflow_store is not None or self._overflow_path.exists():
            self.overflow.clear(key)
