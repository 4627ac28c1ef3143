"""Shared fixtures: an app on a tmp data dir, its client and CLI runner, keys, and real
gunicorn servers on free loopback ports for anything that crosses workers.

A test that starts a real server (gunicorn, PostgreSQL, redis, nginx ...) is marked ``server``:
through a fixture below, automatically; otherwise by its module. ``pytest -m "not server"``
runs the in-process tests alone, and a test that starts a server unmarked fails, saying so."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from waygate.app import create_app
from waygate.config import Config
from waygate.keystore import KeyStore
from waygate.storage import open_storage

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture
def data_dir(tmp_path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc):
    """Tests marked ``both_backends`` run once on SQLite and once on PostgreSQL (a fresh
    database of the session's throwaway cluster each)."""
    if "backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "both_backends"
    ):
        only = metafunc.definition.get_closest_marker("sqlite_only")
        metafunc.parametrize("backend", ("sqlite",) if only else BACKENDS, indirect=True)


# Fixtures that start a real server: a test that uses one, even through another fixture, or
# that runs on PostgreSQL, is marked ``server``. A test module's own fixture that starts
# servers says so by requesting ``starts_servers``.
SERVER_FIXTURES = frozenset({"server_factory", "redis_server", "pg_cluster", "starts_servers"})
_running: list[pytest.Item] = []  # the test being set up, run or torn down


def pytest_collection_modifyitems(config, items):
    """Markers from the fixtures a test uses: ``server`` (see SERVER_FIXTURES) and ``browser``.
    Browser tests run last (stable order otherwise): while the session's browser lives, its
    event loop is marked running in this thread and no other test could use asyncio."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        callspec = getattr(item, "callspec", None)
        on_postgresql = callspec is not None and callspec.params.get("backend") == "postgresql"
        if on_postgresql or SERVER_FIXTURES.intersection(fixtures):
            item.add_marker(pytest.mark.server)
        if "browser" in fixtures:
            item.add_marker(pytest.mark.browser)
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _running[:] = [item]


def starts_a_server(what: str) -> None:
    """Called by everything here that starts a server: the running test must be marked
    ``server``, or ``pytest -m "not server"`` would start it after all."""
    if _running and _running[0].get_closest_marker("server") is None:
        pytest.fail(f"{_running[0].nodeid} starts {what}: mark it (or its module) server")


@pytest.fixture(scope="session")
def starts_servers() -> None:
    """Requested by a fixture that starts servers of its own: its tests are marked ``server``."""


@pytest.fixture
def backend(request) -> str:
    return getattr(request, "param", "sqlite")


@pytest.fixture
def database_url(backend, request) -> str:
    """Empty on SQLite; on PostgreSQL a fresh, migrated database's URL."""
    if backend == "sqlite":
        return ""
    return request.getfixturevalue("pg_migrated_url")


@pytest.fixture
def config(data_dir, database_url) -> Config:
    return Config(data_dir=data_dir, database_url=database_url)


@pytest.fixture
def storage(config):
    """The configured backend's storage, migrated."""
    storage = open_storage(config)
    storage.migrate()
    yield storage
    storage.close()


class PluginDist:
    """A distribution made on disk (a dist-info folder with entry points) on ``sys.path``:
    Waygate finds its plugins exactly as it finds an installed package's."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(exist_ok=True)
        self.entry_points: dict[str, str] = {}

    def register(self, name: str, target: str) -> None:
        self.entry_points[name] = target
        self._write()

    def unregister(self, name: str) -> None:
        self.entry_points.pop(name, None)
        self._write()

    def write_module(self, module: str, source: str) -> None:
        (self.root / f"{module}.py").write_text(source)

    def _write(self) -> None:
        info = self.root / "waygate_test_plugins-0.1.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: waygate-test-plugins\nVersion: 0.1\n"
        )
        lines = "".join(f"{n} = {t}\n" for n, t in self.entry_points.items())
        (info / "entry_points.txt").write_text(f"[waygate.plugins]\n{lines}")
        time.sleep(0.01)  # let the folder's mtime move, as importlib's path cache keys on it


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch) -> PluginDist:
    dist = PluginDist(tmp_path / "site")
    dist.register("Testing", "tests.plugin_fixtures:TestingPlugin")
    monkeypatch.syspath_prepend(str(dist.root))
    return dist


@pytest.fixture
def make_app(config):
    """Build an app with config overrides: ``make_app(rate_limit_health="2/minute")``."""
    apps = []

    def build(**overrides):
        # no housekeeping thread per test app; gunicorn tests run it as configured
        overrides.setdefault("housekeeping_interval_s", 0)
        app = create_app(config.replace(**overrides))
        apps.append(app)
        return app

    yield build
    for app in apps:  # a PostgreSQL pool holds connections until closed
        app.extensions["waygate"].housekeeper.stop()
        app.extensions["waygate"].storage.close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def app_services_of():
    """The Services behind a test client."""
    return lambda client: client.application.extensions["waygate"]


@pytest.fixture
def probe_client(app):
    """A client for an app that also has the test-only routes of tests/probe.py."""
    from tests import probe

    app.register_blueprint(probe.bp)
    return app.test_client()


@pytest.fixture
def client(app):
    return app.test_client()


@dataclass
class Keys:
    admin: str
    user: str
    store: KeyStore

    def headers(self, role: str = "user", **extra) -> dict:
        return {"X-API-Key": getattr(self, role), **extra}


@pytest.fixture
def keys(storage) -> Keys:
    store = KeyStore(storage)
    _, admin = store.create("ops-admin", "admin")
    _, user = store.create("ops-user", "user")
    return Keys(admin=admin, user=user, store=store)


@pytest.fixture
def runner(data_dir, database_url, monkeypatch):
    """Runs the ``waygate`` CLI in-process: ``code, stdout, stderr = runner("keys", "list")``.

    The CLI may load an environment file into ``os.environ``: it gets a copy, dropped after."""
    monkeypatch.setattr(os, "environ", os.environ.copy())
    monkeypatch.setenv("WAYGATE_DATA_DIR", str(data_dir))
    if database_url:
        monkeypatch.setenv("WAYGATE_DATABASE_URL", database_url)
    from waygate.cli import main

    def invoke(*args: str):
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(args))
        return code, out.getvalue(), err.getvalue()

    return invoke


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_gunicorn_once(env: dict, timeout: float = 30) -> subprocess.CompletedProcess:
    """Start gunicorn with the project's config and wait for it to exit (start-up refusals)."""
    starts_a_server("gunicorn")
    return subprocess.run(
        [
            str(BIN / "gunicorn"),
            "-c",
            str(ROOT / "gunicorn.conf.py"),
            "--bind",
            f"127.0.0.1:{free_port()}",
            "--chdir",
            str(ROOT),
            "wsgi:app",
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Server:
    """A real gunicorn running wsgi:app from the project, on a loopback port."""

    data_dir: Path
    workers: int = 2
    env: dict = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> Server:
        starts_a_server("gunicorn")
        self.port = self.port or free_port()  # preset when the URL must be known first
        self.log_path = self.data_dir.parent / f"gunicorn-{self.port}.log"
        env = {**os.environ, "WAYGATE_DATA_DIR": str(self.data_dir), **self.env}
        self.proc = subprocess.Popen(
            [
                str(BIN / "gunicorn"),
                "-c",
                str(ROOT / "gunicorn.conf.py"),
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(self.workers),
                "--chdir",
                str(ROOT),
                "wsgi:app",
            ],
            env=env,
            stdout=open(self.log_path, "wb"),  # noqa: SIM115 - the child holds it; closed on exit
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited {self.proc.returncode}: {self.log()}")
            try:
                ready = requests.get(self.url + "/ready", timeout=1).status_code == 200
                # every worker booted, so that tests spreading requests over them can
                if ready and self.log().count("worker ready:") >= self.workers:
                    return self
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or a slow first answer on a loaded machine
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not become ready: {self.log()}")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(pid) for pid in out.stdout.split()]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=35)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def server_factory(data_dir, database_url):
    started: list[Server] = []

    def start(workers: int = 2, **env) -> Server:
        if database_url:
            env.setdefault("WAYGATE_DATABASE_URL", database_url)
        server = Server(data_dir=data_dir, workers=workers, env=env).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a free loopback port: ``(uri, process)``."""
    uri, proc = start_redis(tmp_path)
    yield uri, proc
    proc.kill()
    proc.wait()


def start_redis(directory: Path) -> tuple[str, subprocess.Popen]:
    starts_a_server("redis")
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return f"redis://127.0.0.1:{port}", proc
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


# -- PostgreSQL: one throwaway cluster per test run (tests/pgcluster.py) ----------------------
# Missing server binaries fail these fixtures loudly (no skip): `make test` installs them.
PG_TEMPLATE = "waygate_migrated"


@pytest.fixture(scope="session")
def pg_cluster():
    from tests.pgcluster import PgCluster

    starts_a_server("PostgreSQL")
    cluster = PgCluster().start()
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="session")
def pg_template(pg_cluster, tmp_path_factory) -> str:
    """A database that `waygate migrate` ran on, once per run: copied by ``pg_database``."""
    url = pg_cluster.create_database(PG_TEMPLATE)
    done = subprocess.run(
        [str(BIN / "waygate"), "migrate"],
        env={
            **os.environ,
            "WAYGATE_DATA_DIR": str(tmp_path_factory.mktemp("pg-template")),
            "WAYGATE_DATABASE_URL": url,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"waygate migrate on PostgreSQL failed: {done.stderr}"
    return PG_TEMPLATE


@pytest.fixture
def pg_database(pg_cluster, request, monkeypatch):
    """Make fresh databases, dropped after the test: ``url = pg_database(migrated=True)``.
    Every connection pool the test opened in this process (apps, CLI, fixtures) is closed
    first."""
    from waygate.storage import PostgresStorage

    opened: list[PostgresStorage] = []
    init = PostgresStorage.__init__

    def tracked(self, *args, **kwargs):
        init(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(PostgresStorage, "__init__", tracked)
    made: list[str] = []

    def make(migrated: bool = False) -> str:
        template = request.getfixturevalue("pg_template") if migrated else None
        url = pg_cluster.create_database(template=template)
        made.append(url.rsplit("/", 1)[1])
        return url

    yield make
    for storage in opened:
        storage.close()
    for name in made:
        pg_cluster.drop_database(name)


@pytest.fixture
def pg_url(pg_database) -> str:
    """A fresh, empty database of the test's own: its URL (with the password, as in
    production)."""
    return pg_database()


@pytest.fixture
def pg_migrated_url(pg_database) -> str:
    """A fresh database with every migration applied (a copy of a template that `waygate
    migrate` ran on once per run, faster than migrating each)."""
    return pg_database(migrated=True)


# Figures that tests measure for the record (e.g. tests/test_multihost.py), shown in the summary.
FIGURES = pytest.StashKey[dict]()


def pytest_terminal_summary(terminalreporter, config):
    for name, figures in config.stash.get(FIGURES, {}).items():
        terminalreporter.write_line(f"{name} figures: {json.dumps(figures, sort_keys=True)}")


def pytest_addoption(parser):
    parser.addoption(
        "--soak", action="store_true", help="run the load and contention tests for 60 s each"
    )


# -- the browser: one Chromium for every browser test, driven by Playwright (tests/browser.py)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    from tests.browser import launch

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def db(storage):
    """Rows of the test's database as dicts, whichever the backend: ``db("SELECT ...")``."""
    return lambda sql, params=(): [dict(r) for r in storage.conn.execute(sql, params).fetchall()]
