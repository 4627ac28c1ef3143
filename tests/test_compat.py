"""The library internals Waygate relies on (waygate/compat.py), checked against what is
installed: an upgrade that breaks one fails here, naming the library. Also the layering rule
that keeps Flask out of the service layer, and the one fork-safety mechanism."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from waygate import compat

PACKAGE = Path(__file__).resolve().parent.parent / "waygate"


@pytest.mark.parametrize("distribution", sorted(compat.WRITTEN_FOR))
def test_installed_libraries_are_the_versions_compat_was_written_for(distribution):
    installed = Version(importlib.metadata.version(distribution))
    wanted = SpecifierSet(compat.WRITTEN_FOR[distribution])
    assert installed in wanted, (
        f"{distribution} {installed} is outside {wanted}: re-check waygate/compat.py's "
        f"functions for it, then widen WRITTEN_FOR"
    )


def test_stevedore_uses_the_seeded_entry_points():
    from importlib.metadata import EntryPoint

    from stevedore import ExtensionManager

    namespace = "waygate.compat-test"
    point = EntryPoint("Echoes", "json:dumps", namespace)
    compat.seed_entry_points(namespace, [point])
    try:
        assert compat.seeded_entry_points(namespace) == [point]
        manager = ExtensionManager(namespace, invoke_on_load=False)
        assert manager.names() == ["Echoes"], "stevedore no longer reads ENTRY_POINT_CACHE"
    finally:
        ExtensionManager.ENTRY_POINT_CACHE.pop(namespace, None)


def test_forgotten_modules_are_imported_afresh(tmp_path, monkeypatch):
    package = tmp_path / "forgettable"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "part.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    import forgettable.part

    compat.forget_modules(["forgettable"])
    assert "forgettable" not in sys.modules and "forgettable.part" not in sys.modules
    import forgettable.part as again

    assert again is not forgettable.part
    compat.forget_modules(["forgettable"])


def test_a_pth_file_is_applied_as_site_does(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    entry = tmp_path / "entry"
    entry.mkdir()
    (tmp_path / "late.pth").write_text(f"{entry}\n")
    compat.apply_pth_file(str(tmp_path), "late.pth")
    compat.apply_pth_file(str(tmp_path), "late.pth")
    assert sys.path.count(str(entry)) == 1


def test_the_gunicorn_logger_class_formats_its_access_and_error_lines():
    import logging

    from gunicorn.config import Config as GunicornConfig

    class Marker(logging.Formatter):
        def format(self, record):
            return "marked " + super().format(record)

    cfg = GunicornConfig()
    cfg.set("accesslog", "-")
    logger = compat.gunicorn_logger_class("%(asctime)s %(message)s", Marker)(cfg)
    handlers = logger.error_log.handlers + logger.access_log.handlers
    assert handlers and all(isinstance(h.formatter, Marker) for h in handlers)
    plain = compat.gunicorn_logger_class("%(asctime)s %(message)s", None)(cfg)
    assert [h.formatter._fmt for h in plain.access_log.handlers] == ["%(asctime)s %(message)s"]


def test_gunicorn_puts_the_connection_socket_in_the_environ_and_a_closed_peer_is_seen():
    import socket

    from gunicorn.config import Config as GunicornConfig
    from gunicorn.http.wsgi import base_environ

    ours, theirs = socket.socketpair()
    with ours, theirs:
        environ = {**base_environ(GunicornConfig()), "gunicorn.socket": ours}
        closed = compat.peer_closed_probe(environ)
        assert closed is not None and closed() is False
        theirs.sendall(b"x")  # bytes waiting are no close
        assert closed() is False
        theirs.close()
        ours.recv(1)
        assert closed() is True
    assert compat.peer_closed_probe({}) is None  # another server: writes tell instead
    import inspect

    from gunicorn.http import wsgi

    # the environ of every request: default_environ, which create() starts from
    assert '"gunicorn.socket": sock' in inspect.getsource(wsgi.default_environ)


def test_flask_calls_ensure_sync_through_the_app_instance():
    from flask import Flask

    app = Flask(__name__)
    compat.remember_sync_wrappers(app)
    asked = []
    original = app.ensure_sync
    app.ensure_sync = lambda f: asked.append(f) or original(f)

    @app.get("/")
    def index():
        return "ok"

    assert app.test_client().get("/").get_data() == b"ok"
    assert index in asked, "Flask no longer calls app.ensure_sync for views"
    assert original(index) is original(index), "wrappers are not remembered"


def test_flask_json_provider_prepares_jsonify_arguments():
    from flask import Flask

    provider = Flask(__name__).json
    assert compat.response_payload(provider, (1,), {}) == 1
    assert list(compat.response_payload(provider, (1, 2), {})) == [1, 2]
    assert compat.response_payload(provider, (), {"a": 1}) == {"a": 1}


def test_flask_cors_options_and_headers_apply_to_one_response():
    from flask import Flask

    app = Flask(__name__)
    options = compat.cors_options(app, {"origins": ["http://ops.example"], "max_age": 600})
    with app.test_request_context("/", headers={"Origin": "http://ops.example"}):
        response = app.make_response("ok")
        compat.apply_cors(response, options)
    assert response.headers["Access-Control-Allow-Origin"] == "http://ops.example"


def test_the_metrics_view_has_the_name_compat_documents(app):
    assert compat.METRICS_ENDPOINT in app.view_functions
    assert app.view_functions[compat.METRICS_ENDPOINT].__doc__.strip()


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_psycopg_waits_take_the_timeout_the_bounded_connection_passes():
    """bounded_connection_class relies on Connection.wait(gen, interval, timeout) raising
    errors._WaitTimeout (psycopg 3.3); tests/test_pg_failures.py freezes a real server."""
    import inspect

    import psycopg
    from psycopg import errors

    assert list(inspect.signature(psycopg.Connection.wait).parameters)[1:] == [
        "gen",
        "interval",
        "timeout",
    ]
    assert issubclass(errors._WaitTimeout, psycopg.OperationalError)

    class NoAnswer(psycopg.OperationalError):
        pass

    bounded = compat.bounded_connection_class(0.5, NoAnswer)
    assert issubclass(bounded, psycopg.Connection) and "wait" in vars(bounded)


def test_nothing_outside_web_and_the_app_factory_imports_flask():
    allowed = {PACKAGE / "app.py", PACKAGE / "compat.py"}  # compat: inside functions only
    offenders = [
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        if "web" not in path.relative_to(PACKAGE).parts
        and path not in allowed
        and _imports(path) & {"flask", "flask_cors", "prometheus_flask_exporter", "werkzeug"}
    ]
    assert offenders == []


def test_the_service_layer_loads_without_flask():
    code = (
        "import sys; import waygate.services, waygate.commands, waygate.mcp.server, waygate.compat,"
        " waygate.cli, waygate.mcp.stdio; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'werkzeug')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_forked_child_makes_its_own_connections_threads_and_locks(tmp_path):
    from waygate.pool import CommandPool
    from waygate.storage import SqliteStorage

    storage = SqliteStorage(tmp_path / "w.db")
    storage.migrate()
    parent_conn = storage.conn
    storage.execute_write("CREATE TABLE t (x)")
    storage.execute_write("INSERT INTO t VALUES (1), (2)")
    pool = CommandPool(2, 2)
    assert pool.submit(lambda: 1).result(timeout=5) == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running pytest's exit handlers
        ok = (
            storage.conn is not parent_conn
            and storage.conn.execute("SELECT count(*) FROM t").fetchone()[0] == 2
            and storage.execute_write("DELETE FROM t WHERE x = 2").rowcount == 1
            and pool.stats().in_use == 0
            and pool.submit(lambda: os.getpid()).result(timeout=5) == os.getpid()
        )
        os.write(write, b"ok" if ok else b"no")
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    assert os.read(read, 2) == b"ok"
    assert storage.conn is parent_conn  # the parent's own are untouched
    assert storage.conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1
