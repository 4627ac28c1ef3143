"""Log lines an operator can use: every line about a request carries its request id, a
plugin's lines (run in pool threads) also the command id, access lines a timestamp, and
WAYGATE_LOG_FORMAT=json makes every line one JSON object."""

import json
import re
import time

import pytest
import requests


def run_wait(url_or_client, request_id, headers, **extra):
    body = {"action": "wait", "params": {"seconds": 0}, **extra}
    merged = {**headers, "X-Request-ID": request_id}
    if isinstance(url_or_client, str):
        return requests.post(url_or_client + "/mcp/execute", json=body, headers=merged, timeout=10)
    return url_or_client.post("/mcp/execute", json=body, headers=merged)


def test_plugin_lines_from_pool_threads_carry_request_and_command_ids(
    plugin_dist, make_app, keys, capfd
):
    client = make_app().test_client()
    response = run_wait(client, "trace-sync-1", keys.headers())
    assert response.status_code == 200
    command_id = response.get_json()["command_id"]
    accepted = run_wait(client, "trace-async-2", keys.headers(), **{"async": True})
    assert accepted.status_code == 202
    async_id = accepted.get_json()["command_id"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        state = client.get(accepted.headers["Location"], headers=keys.headers()).get_json()
        if state["status"] == "success":
            break
        time.sleep(0.02)
    err = capfd.readouterr().err
    plugin_lines = [line for line in err.splitlines() if "waygate.plugin.Testing" in line]
    assert any(
        f"request_id=trace-sync-1 command_id={command_id} woke" in line for line in plugin_lines
    ), plugin_lines
    assert any(
        f"request_id=trace-async-2 command_id={async_id} woke" in line for line in plugin_lines
    ), plugin_lines


def test_lines_outside_a_request_say_so(plugin_dist, make_app, keys, capfd):
    import logging

    client = make_app().test_client()
    run_wait(client, "trace-3", keys.headers())
    logging.getLogger("waygate.test").warning("between requests")
    err = capfd.readouterr().err
    assert re.search(r"waygate\.test request_id=- between requests", err), err


@pytest.fixture
def served(server_factory, plugin_dist):
    def start(**env):
        return server_factory(workers=1, PYTHONPATH=str(plugin_dist.root), **env)

    return start


def test_json_format_is_one_object_per_line_with_the_ids(served, keys):
    server = served(WAYGATE_LOG_FORMAT="json")
    response = run_wait(server.url, "trace-json-1", keys.headers())
    assert response.status_code == 200
    command_id = response.json()["command_id"]
    server.stop()
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "pid", "message"} <= set(line) for line in lines)
    plugin = [line for line in lines if line["logger"] == "waygate.plugin.Testing"]
    assert plugin and plugin[0]["request_id"] == "trace-json-1"
    assert plugin[0]["command_id"] == command_id and plugin[0]["message"] == "woke: cancelled=False"
    access = [line for line in lines if line["logger"] == "gunicorn.access"]
    assert {
        "method": "POST",
        "path": "/mcp/execute",
        "status": 200,
        "request_id": "trace-json-1",
    }.items() <= access[-1].items()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", access[-1]["time"])


def test_text_access_lines_carry_a_timestamp_and_the_request_id(served, keys):
    server = served()
    response = run_wait(server.url, "trace-text-1", keys.headers())
    command_id = response.json()["command_id"]
    server.stop()
    log = server.log()
    access = [line for line in log.splitlines() if '"POST /mcp/execute' in line]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} 127\.0\.0\.1 ", access[0]), access
    assert access[0].endswith("request_id=trace-text-1")
    assert f"request_id=trace-text-1 command_id={command_id} woke" in log
