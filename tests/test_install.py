"""Waygate as an operator and a plugin author get it: a wheel installed into a fresh venv in
another directory (no checkout, no wsgi.py, no gunicorn.conf.py), served with `waygate serve`,
and the plugin guide's distribution built and installed into that venv exactly as written.

pip resolves the dependencies from its cache (filled by `make install-test`)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, free_port
from waygate import __version__

# every test installs the wheel into a fresh venv and serves it
pytestmark = pytest.mark.server


def run(*argv, timeout=180, **kwargs):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """/opt/waygate in miniature: the wheel installed into <tmp>/opt/venv."""
    base = tmp_path_factory.mktemp("install")
    dist = base / "dist"
    # built from this checkout into a tmp dir, with this venv's setuptools (no download)
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        str(dist),
        str(ROOT),
    )
    wheels = list(dist.glob("*.whl"))
    assert [w.name for w in wheels] == [f"waygate_mcp-{__version__}-py3-none-any.whl"]
    venv = base / "opt" / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    run(str(venv / "bin" / "pip"), "install", "--quiet", str(wheels[0]))
    return venv


class InstalledServer:
    def __init__(self, venv: Path, env_file: Path, cwd: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"serve-{self.port}.log"
        self.proc = subprocess.Popen(
            [
                str(venv / "bin" / "waygate"),
                "--env-file",
                str(env_file),
                "serve",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "1",
            ],
            cwd=cwd,
            env=clean_env(),
            stdout=open(self.log, "wb"),  # noqa: SIM115 - the child holds it
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if requests.get(self.url + "/ready", timeout=5).status_code == 200:
                    return
            except requests.RequestException:  # not listening yet, or a worker still booting
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"waygate serve did not answer: {self.log.read_text()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=40)


def json_documents(text: str) -> list:
    decoder, found, at = json.JSONDecoder(), [], 0
    while (at := text.find("{", at)) != -1:
        document, at = decoder.raw_decode(text, at)
        found.append(document)
    return found


def clean_env() -> dict:
    """No WAYGATE_*, no PYTHONPATH, no venv of the test run: what a fresh shell has."""
    return {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


@pytest.fixture
def service(installed, tmp_path):
    """The installed venv with its data dir and env file, as docs/operations.md sets them up."""
    data = tmp_path / "var-lib-waygate"
    env_file = tmp_path / "waygate.env"
    env_file.write_text(f"WAYGATE_DATA_DIR={data}\nWAYGATE_HOUSEKEEPING_INTERVAL_S=0\n")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    waygate = [str(installed / "bin" / "waygate"), "--env-file", str(env_file)]
    run(*waygate, "migrate", cwd=cwd, env=clean_env())
    key = (
        run(
            *waygate, "keys", "create", "--name", "ops", "--role", "admin", cwd=cwd, env=clean_env()
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    started = []

    def serve():
        started.append(InstalledServer(installed, env_file, cwd))
        return started[-1]

    yield {"venv": installed, "key": key, "serve": serve, "cwd": cwd, "data": data}
    for server in started:
        server.stop()


def test_the_wheel_runs_from_a_fresh_venv_with_its_packaged_settings(service):
    venv = service["venv"]
    version = run(str(venv / "bin" / "waygate"), "--version", env=clean_env())
    assert version.stdout.strip() == f"waygate {__version__}"
    where = run(
        str(venv / "bin" / "python"),
        "-c",
        "import waygate; print(waygate.__file__)",
        cwd=service["cwd"],
        env=clean_env(),
    )
    assert where.stdout.startswith(str(venv))  # the wheel's copy, not this checkout
    server = service["serve"]()
    health = requests.get(server.url + "/health", timeout=10)
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "healthy"
    assert requests.get(server.url + "/docs/", timeout=10).status_code == 200  # package data
    login = requests.get(server.url + "/console/login", timeout=10)  # templates, static files
    assert login.status_code == 200 and 'id="api_key"' in login.text
    for static in re.findall(r'(?:href|src)="(/console/static/[^"]+)"', login.text):
        assert requests.get(server.url + static, timeout=10).status_code == 200, static
    listed = requests.get(
        server.url + "/plugins", headers={"X-API-Key": service["key"]}, timeout=10
    ).json()
    assert {p["name"] for p in listed["plugins"]} >= {"Core", "DataProcessor"}
    assert (service["data"] / "waygate.db").is_file()
    assert list(service["cwd"].iterdir()) == [server.log]  # nothing else written where it ran
    log = server.log.read_text()
    assert "gthread" in log  # gunicorn ran with the packaged settings


def test_the_wheel_carries_the_mit_licence_file_the_metadata_names(installed):
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert re.search(r"^license = MIT$", (ROOT / "setup.cfg").read_text(), re.M)
    (dist_info,) = (installed / "lib").glob("python3*/site-packages/waygate_mcp-*.dist-info")
    shipped = [p for p in dist_info.rglob("LICENSE") if p.is_file()]
    assert [p.read_text() for p in shipped] == [text]
    metadata = (dist_info / "METADATA").read_text()
    assert re.search(r"^License(-Expression)?: MIT$", metadata, re.M)
    assert re.search(r"^License-File: LICENSE$", metadata, re.M)


def test_the_plugin_guide_distribution_installs_and_runs_as_written(service, tmp_path):
    guide = (ROOT / "docs" / "plugins.md").read_text()
    module = re.search(r"`disk_usage_plugin.py`:\n\n```python\n(.*?)```", guide, re.S).group(1)
    pyproject = re.search(r"`pyproject.toml`:\n\n```toml\n(.*?)```", guide, re.S).group(1)
    steps = re.search(r"reload; every worker.*?```bash\n(.*?)```", guide, re.S).group(1)
    project = tmp_path / "disk-usage-plugin"
    project.mkdir()
    (project / "disk_usage_plugin.py").write_text(module)
    (project / "pyproject.toml").write_text(pyproject)
    server = service["serve"]()
    # the guide's own commands, pointed at this venv and this server's port
    # install, reload, run disk_usage (the guide's later commands are the approval workflow)
    commands = steps.replace("\\\n", " ").splitlines()
    steps = "\n".join(commands[:3]) + "\n"
    assert '"disk_usage"' in commands[2]
    steps = steps.replace(".venv/bin/pip", str(service["venv"] / "bin" / "pip"))
    steps = steps.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
    script = tmp_path / "steps.sh"
    script.write_text("set -e\n" + steps)
    result = run(
        "bash",
        str(script),
        cwd=tmp_path,
        timeout=240,
        env={**clean_env(), "WAYGATE_KEY": service["key"]},
    )
    installed = run(
        str(service["venv"] / "bin" / "pip"), "show", "waygate-disk-usage", env=clean_env()
    ).stdout
    assert "Requires: waygate-mcp" in installed
    reloaded, answer = json_documents(result.stdout)[-2:]  # curl -s prints no newlines
    assert "DiskUsage" in reloaded["loaded"], reloaded
    assert answer["status"] == "success", answer
    assert answer["result"]["path"] == "/" and answer["result"]["total"] > 0


EDITABLE_PLUGIN = """
from marshmallow import Schema

from waygate.sdk import Command, Plugin


class Hello(Plugin):
    name = "Hello"
    version = "0.1.0"
    description = "Says hello"
    author = "tests"

    def commands(self):
        return [Command("hello", "Say hello", Schema, lambda params, ctx: {"says": GREETING})]


GREETING = "hello"
"""


def test_an_editable_plugin_loads_on_reload_and_sighup_reloads_its_code(service, tmp_path):
    """`pip install -e` while serving: its .pth path entry is read on reload, and SIGHUP
    replaces the workers with the plugin's current code."""
    server = service["serve"]()
    headers = {"X-API-Key": service["key"]}
    project = tmp_path / "hello-plugin"
    (project / "src" / "hello_plugin").mkdir(parents=True)
    (project / "src" / "hello_plugin" / "__init__.py").write_text(EDITABLE_PLUGIN)
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "hello-plugin"\nversion = "0.1.0"\n'
        '[project.entry-points."waygate.plugins"]\nHello = "hello_plugin:Hello"\n'
    )
    run(
        str(service["venv"] / "bin" / "pip"),
        "install",
        "--quiet",
        "-e",
        str(project),
        env=clean_env(),
    )

    def hello():
        return requests.post(
            server.url + "/mcp/execute", headers=headers, json={"action": "hello"}, timeout=10
        )

    reload = requests.post(server.url + "/plugins/reload", headers=headers, timeout=30).json()
    assert "Hello" in reload["loaded"], reload
    assert hello().json()["result"] == {"says": "hello"}

    (project / "src" / "hello_plugin" / "__init__.py").write_text(
        EDITABLE_PLUGIN.replace('GREETING = "hello"', 'GREETING = "hello again"')
    )
    workers = set(worker_pids(server.proc.pid))
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = set(worker_pids(server.proc.pid))
        if now and not now & workers:
            try:
                if requests.get(server.url + "/ready", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass  # between the old workers and the new
        time.sleep(0.1)
    assert hello().json()["result"] == {"says": "hello again"}


def worker_pids(master: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]
