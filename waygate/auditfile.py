"""WAYGATE_AUDIT_LOG: the append-only JSON Lines file every chained audit entry is written to
after its commit, for log shippers (docs/operations.md, "Shipping the audit")."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class AuditFile:
    """WAYGATE_AUDIT_LOG: one JSON line per chained entry, appended after its commit.

    Every worker appends to the same file: opened O_APPEND, each line one write(2), so lines
    of several processes never interleave. It is reopened when the path names another file
    than the one open (logrotate moved it, ``create`` mode) or is gone, and rotated here
    once it reaches ``max_bytes`` (renamed to ``<path>.1``, older ones shifted up to
    ``<path>.<keep>``, under an flock so one process rotates): a line goes either to the old
    file or to the new one, never nowhere."""

    def __init__(self, path: Path, max_bytes: int = 100 * 1024 * 1024, keep: int = 5):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self._fd: int | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._failing = False

    def write(self, lines: list[dict[str, Any]]) -> None:
        data = [
            (json.dumps(line, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
            for line in lines
        ]
        try:
            with self._lock:
                for line in data:  # a batch of the chain's is rotated within, line by line
                    os.write(self._current(), line)
        except OSError as exc:  # the database has the record; said once until it works again
            if not self._failing:
                log.error("could not append to the audit file %s: %s", self.path, exc)
            self._failing = True
        else:
            self._failing = False

    def _current(self) -> int:
        fd = self._fd if self._pid == os.getpid() else None
        if fd is not None:
            opened = os.fstat(fd)
            try:
                named = os.stat(self.path)
            except FileNotFoundError:
                named = None
            if named is None or (named.st_ino, named.st_dev) != (opened.st_ino, opened.st_dev):
                os.close(fd)
                fd = None
            elif opened.st_size >= self.max_bytes:
                self._rotate(opened)
                os.close(fd)
                fd = None
        if fd is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._fd, self._pid = fd, os.getpid()
        return fd

    def _rotate(self, opened: os.stat_result) -> None:
        # hidden, so that a shipper's glob of the rotated files (audit.jsonl.*) misses it
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        lock = os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                named = os.stat(self.path)
            except FileNotFoundError:
                return
            if named.st_ino != opened.st_ino:
                return  # another process rotated it already
            for n in range(self.keep - 1, 0, -1):
                older = Path(f"{self.path}.{n}")
                if older.exists():
                    older.replace(f"{self.path}.{n + 1}")
            self.path.replace(f"{self.path}.1")
        finally:
            os.close(lock)
