"""Real gunicorn with several workers on a loopback port."""

import os
import signal
import time

import pytest
import requests

from tests.conftest import run_gunicorn_once

# every test starts gunicorn
pytestmark = pytest.mark.server


def test_gunicorn_with_two_workers_is_healthy_and_ready(server_factory):
    server = server_factory(workers=2)
    assert len(server.worker_pids()) == 2
    health = requests.get(server.url + "/health", timeout=5)
    assert health.status_code == 200
    assert health.json()["status"] == "healthy"
    ready = requests.get(server.url + "/ready", timeout=5)
    assert ready.status_code == 200 and ready.json() == {"ready": True}


def test_uptime_counts_from_the_service_start_on_a_replacement_worker(server_factory):
    server = server_factory(workers=2)
    time.sleep(2.2)
    old = set(server.worker_pids())
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = set(server.worker_pids())
        if len(pids) == 2 and not pids & old:
            try:
                if requests.get(server.url + "/ready", timeout=1).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
        time.sleep(0.1)
    uptimes = {
        requests.get(server.url + "/health", timeout=5).json()["uptime_seconds"] for _ in range(10)
    }
    assert min(uptimes) >= 2, uptimes  # fresh workers, but the service has run for 2 s


@pytest.mark.parametrize(
    "variable, value",
    [
        ("WAYGATE_MAX_BODY_BYTES", "huge"),
        # gunicorn's own settings take the thread count through Config's validation too
        ("WAYGATE_REQUEST_THREADS", "many"),
    ],
)
def test_gunicorn_refuses_a_bad_config_with_one_clear_line(data_dir, variable, value):
    result = run_gunicorn_once({"WAYGATE_DATA_DIR": str(data_dir), variable: value})
    assert result.returncode == 2
    assert f"waygate: configuration error: {variable}: {value!r} is not an integer" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_access_log_redacts_anything_in_a_query_that_looks_like_a_key(server_factory):
    server = server_factory(workers=1)
    secrets = ["s3cretApiKey", "s3cretKey", "s3cretToken", "A" * 16 + "b" * 16]
    query = (
        f"api_key={secrets[0]}&limit=7&key={secrets[1]}&access_token={secrets[2]}&x={secrets[3]}"
    )
    requests.get(
        f"{server.url}/mcp/executions?{query}",
        headers={"Referer": f"https://app.example/?token={secrets[2]}"},
        timeout=5,
    )
    requests.get(server.url + "/health", timeout=5)  # the line before is complete by now
    log = server.log()
    line = next(line for line in log.splitlines() if "/mcp/executions?" in line)
    assert "api_key=REDACTED&limit=7&key=REDACTED&access_token=REDACTED&x=REDACTED" in line
    assert not [secret for secret in secrets if secret in log]
