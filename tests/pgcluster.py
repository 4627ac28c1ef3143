"""A throwaway PostgreSQL cluster for the test run: Debian's ``initdb``/``pg_ctl`` in a temp dir,
listening on a free loopback port with a password-authenticated superuser, tuned for speed
(nothing here needs to survive a crash), stopped when the run ends.

PostgreSQL refuses to run as root: a root run (this machine, CI) runs the server as the
``postgres`` user that Debian's package creates, in a temp dir that user owns. A watchdog
process stops the cluster and removes its dir when the test run's process is gone, however it
ended (a SIGKILLed pytest runs no finalizer).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_port

PG_ROOT = Path("/usr/lib/postgresql")
USER = "waygate"
SERVER_USER = "postgres"  # the unprivileged account Debian's postgresql package creates
# Speed over durability; the socket dir and the port are set per cluster.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
}

# Runs beside the test run: once the watched pid is gone, stop the cluster at once and
# remove its dir. argv: watched pid, then the pg_ctl stop command, then the dir.
WATCHDOG = """
import os, shutil, subprocess, sys, time
pid, dir_, stop = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
while True:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        break
    time.sleep(1)
subprocess.run(stop, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
shutil.rmtree(dir_, ignore_errors=True)
"""


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries: `make test` installs them (scripts/install-system-tools)."""


def bin_dir() -> Path:
    """The newest installed version's binaries (/usr/lib/postgresql/<ver>/bin)."""
    versions = [
        p for p in PG_ROOT.glob("*/bin") if (p / "initdb").is_file() and p.parent.name.isdigit()
    ]
    if not versions:
        raise PostgresMissing(
            f"no initdb under {PG_ROOT}/*/bin: install Debian's postgresql package "
            "(scripts/install-system-tools, run by `make test`)"
        )
    return max(versions, key=lambda p: int(p.parent.name))


@dataclass
class PgCluster:
    """One cluster: ``start()``, ``url(dbname)``, ``create_database()``, ``stop()``."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="waygate-pg-")))
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    port: int = 0
    bin: Path = field(default_factory=bin_dir)
    watchdog: subprocess.Popen | None = None
    # postgresql.conf settings over SETTINGS (bench/pg.py: production durability)
    settings: dict = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, attempts: int = 3) -> PgCluster:
        """initdb once, then start on a free port (another port if that one was taken)."""
        if not self.data.exists():
            self._init()
        if self.watchdog is None:
            watched = [str(os.getpid()), str(self.root), *self._stop_cmd()]
            self.watchdog = subprocess.Popen(
                [sys.executable, "-c", WATCHDOG, *watched],
                start_new_session=True,  # survives a signal sent to the test run's group
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        for attempt in range(attempts):
            self.port = self.port if attempt == 0 and self.port else free_port()
            started = self._pg_ctl("start", "-w", "-t", "30", "-l", str(self.log_path), "-o",
                                   f"-p {self.port}")  # fmt: skip
            if started.returncode == 0:
                return self
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n{self.log()}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate`` skips the shutdown checkpoint); the dir stays."""
        self._pg_ctl("stop", "-w", "-t", "30", "-m", mode)

    def destroy(self) -> None:
        """Stop at once and remove the cluster's dir and its watchdog."""
        subprocess.run(self._stop_cmd(), capture_output=True)
        if self.watchdog is not None:
            self.watchdog.kill()
            self.watchdog.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def running(self) -> bool:
        return self._pg_ctl("status").returncode == 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- databases -------------------------------------------------------------------------
    def connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=10)

    def create_database(self, name: str | None = None, template: str | None = None) -> str:
        """A new database (a copy of ``template`` if given); its URL."""
        name = name or f"t_{secrets.token_hex(6)}"
        _check_name(name)
        sql = f'CREATE DATABASE "{name}"'
        if template:
            _check_name(template)
            sql += f' TEMPLATE "{template}"'
        with self.connect() as conn:
            conn.execute(sql)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        _check_name(name)
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- internals -------------------------------------------------------------------------
    def _init(self) -> None:
        self.root.chmod(0o700)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        (self.root / "socket").mkdir()
        self._chown()
        done = self._run(
            self.bin / "initdb", "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile),
            "--auth", "scram-sha-256", "-E", "UTF8", "--locale", "C", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
        settings = {
            **SETTINGS,
            **self.settings,
            "unix_socket_directories": f"'{self.root / 'socket'}'",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())

    def _stop_cmd(self) -> list[str]:
        return self._as_server_user(
            str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate", "-w"
        )

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess:
        return self._run(self.bin / "pg_ctl", args[0], "-D", str(self.data), *args[1:])

    def _run(self, *cmd) -> subprocess.CompletedProcess:
        return subprocess.run(
            self._as_server_user(*map(str, cmd)),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.root,
        )

    @staticmethod
    def _as_server_user(*cmd: str) -> list[str]:
        if os.geteuid() != 0:
            return list(cmd)
        return ["runuser", "-u", SERVER_USER, "--", *cmd]

    def _chown(self) -> None:
        if os.geteuid() != 0:
            return
        for path in [self.root, *self.root.rglob("*")]:
            shutil.chown(path, SERVER_USER, SERVER_USER)


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"not a plain database name: {name!r}")


def wait_until_refused(cluster: PgCluster, timeout: float = 10) -> None:
    """Until nothing listens on the cluster's port (after a stop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", cluster.port), timeout=0.5).close()
        except OSError:
            return
        time.sleep(0.05)
    raise RuntimeError("PostgreSQL still listening")
