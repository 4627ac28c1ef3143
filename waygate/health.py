"""Health checks: each one really touches the thing it names.

database   a query on the service database
cache      the rate-limit storage answers
filesystem the data dir takes a write and has more free space than the configured floor
plugins    the plugin manager reports no failed plugin
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .clock import isoformat
from .lifecycle import uptime_seconds
from .storage import UnavailableError

Check = Callable[[], str | None]  # returns None when healthy, else the reason


@dataclass(frozen=True)
class HealthReport:
    checks: dict[str, str]
    failures: dict[str, str]

    @property
    def healthy(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict:
        return {
            "status": "healthy" if self.healthy else "unhealthy",
            "checks": self.checks,
            "version": __version__,
            "uptime_seconds": uptime_seconds(),
            "timestamp": isoformat(),
        }


def run_checks(checks: dict[str, Check]) -> HealthReport:
    results: dict[str, str] = {}
    failures: dict[str, str] = {}
    for name, check in checks.items():
        try:
            reason = check()
        except Exception as exc:  # a check that breaks is a failing check, never a 500
            reason = f"{type(exc).__name__}: {exc}"
        if reason is None:
            results[name] = "ok"
        else:
            results[name] = f"failed: {reason}"
            failures[name] = reason
    return HealthReport(results, failures)


def database_check(ping: Callable[[], None]) -> Check:
    def check() -> str | None:
        try:
            ping()  # raises unless the database answers and is migrated
        except UnavailableError as exc:  # said in a line of our own, not the driver's page
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return "the database does not answer" + (f" ({first})" if first else "")
        return None

    return check


def free_bytes(data_dir: Path) -> int | None:
    """Free space on the data dir's filesystem (None when it cannot be read)."""
    try:
        return shutil.disk_usage(data_dir).free
    except OSError:
        return None


def filesystem_check(data_dir: Path, min_free_bytes: int) -> Check:
    def check() -> str | None:
        # access(2) answers EROFS for a read-only mount and EACCES/ENOENT for a directory the
        # service cannot write or that is gone, without writing anything on every probe.
        if not os.access(data_dir, os.W_OK | os.X_OK):
            return "data dir is not writable"
        try:
            free = shutil.disk_usage(data_dir).free
        except OSError as exc:
            return f"data dir is not readable ({exc.strerror or exc})"
        if free < min_free_bytes:
            return (
                f"free space {free // 2**20} MiB is below the floor of "
                f"{min_free_bytes // 2**20} MiB"
            )
        return None

    return check


def cache_check(storage_answers: Callable[[], bool]) -> Check:
    def check() -> str | None:
        return None if storage_answers() else "rate-limit storage does not answer"

    return check


def plugins_check(failed_plugins: Callable[[], list]) -> Check:
    def check() -> str | None:
        failed = failed_plugins()
        if not failed:
            return None
        return "; ".join(f"{p.name}: {p.error}" for p in failed)

    return check
