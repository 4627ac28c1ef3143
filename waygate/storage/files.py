"""The files Waygate keeps its state in, made private to the service's user whatever the umask:
they hold key hashes, audit rows and results (the databases and their lock files, the data
dir, the logs and latency samples beside them)."""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path
from typing import TextIO

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def make_private_dir(path: Path) -> None:
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)


def open_private(path: Path) -> TextIO:
    """``path`` opened for appending, created readable and writable by its owner only."""
    return open(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE), "a")  # noqa: SIM115


def create_private(path: Path) -> None:
    """Create ``path`` empty and private unless it exists (SQLite then gives the database's
    WAL and shared-memory files the same mode)."""
    with suppress(OSError):  # it exists, or cannot be made: SQLite opens it or says why not
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
