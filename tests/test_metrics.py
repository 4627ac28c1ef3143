"""/metrics: the spec's names, bounded labels, and output promtool accepts."""

import re
import subprocess
import threading
import time

import pytest


def sample(text, name, **labels):
    """The value of one sample in Prometheus text output (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)"
    match = re.search(r"^" + pattern + "$", text, re.M)
    return float(match.group(1)) if match else 0.0


def scrape(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    return response.get_data(as_text=True)


@pytest.fixture
def client(plugin_dist, make_app):
    return make_app().test_client()


def test_requests_are_counted_by_route_template(client, keys):
    before = scrape(client)
    client.get("/plugins/Core", headers=keys.headers())
    client.get("/plugins/DataProcessor", headers=keys.headers())
    client.get("/no/such/path")
    after = scrape(client)
    key = dict(
        name="waygate_requests_total", method="GET", endpoint="/plugins/<plugin_name>", status="200"
    )
    assert sample(after, **key) - sample(before, **key) == 2
    unmatched = dict(
        name="waygate_requests_total", method="GET", endpoint="<unmatched>", status="404"
    )
    assert sample(after, **unmatched) - sample(before, **unmatched) == 1
    assert "/plugins/Core" not in after  # never the raw path
    assert sample(after, "waygate_response_time_seconds_count") > sample(
        before, "waygate_response_time_seconds_count"
    )


def test_commands_are_counted_by_action_and_status(client, keys):
    before = scrape(client)
    client.post("/mcp/execute", json={"action": "boom"}, headers=keys.headers())
    client.post(
        "/mcp/execute", json={"action": "echo", "params": {"message": "m"}}, headers=keys.headers()
    )
    after = scrape(client)
    for action, status in (("boom", "failed"), ("echo", "success")):
        assert (
            sample(after, "waygate_commands_total", action=action, status=status)
            - sample(before, "waygate_commands_total", action=action, status=status)
            == 1
        )
    assert sample(after, "waygate_command_duration_seconds_count", action="echo") >= 1


def test_rate_limited_requests_are_counted(plugin_dist, make_app):
    client = make_app(rate_limit_health="1/minute").test_client()
    before = scrape(client)
    client.get("/health")
    client.get("/health")
    after = scrape(client)
    assert (
        sample(after, "waygate_rate_limited_total", endpoint="/health")
        - sample(before, "waygate_rate_limited_total", endpoint="/health")
        == 1
    )


def test_pool_and_plugin_gauges_are_exported(client):
    text = scrape(client)
    assert sample(text, "waygate_plugins_loaded") == 3
    assert "# TYPE waygate_pool_threads_in_use gauge" in text
    assert "# TYPE waygate_pool_queue_depth gauge" in text


def test_a_command_holding_a_pool_thread_shows_in_the_gauge_within_a_second(
    plugin_dist, make_app, keys
):
    # the counts are sampled for the gauges (every second), not written at every change
    client = make_app().test_client()
    stuck = threading.Thread(
        target=client.post,
        args=("/mcp/execute",),
        kwargs={
            "json": {"action": "stuck", "params": {"seconds": 2.5}, "timeout": 5},
            "headers": keys.headers(),
        },
    )
    stuck.start()

    def in_use_within(seconds, wanted):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if sample(scrape(client), "waygate_pool_threads_in_use") == wanted:
                return True
            time.sleep(0.1)
        return False

    assert in_use_within(2.0, 1)
    stuck.join(5)
    assert in_use_within(2.0, 0)


def test_metrics_has_its_own_rate_limit(plugin_dist, make_app):
    client = make_app(rate_limit_metrics="2/minute").test_client()
    assert [client.get("/metrics").status_code for _ in range(3)] == [200, 200, 429]


def test_promtool_accepts_the_output(client, keys):
    client.post(
        "/mcp/execute", json={"action": "echo", "params": {"message": "m"}}, headers=keys.headers()
    )
    result = subprocess.run(
        ["promtool", "check", "metrics"],
        input=scrape(client),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_scrape_reports_the_health_checks_for_the_alert_rules(make_app, plugin_dist):
    plugin_dist.register("Raising", "tests.plugin_fixtures:RaisingPlugin")
    client = make_app(min_free_bytes=2**62).test_client()  # more than any disk has
    text = scrape(client)
    assert 'waygate_health_check_failing{check="filesystem"} 1.0' in text
    assert 'waygate_health_check_failing{check="database"} 0.0' in text
    assert "waygate_plugins_failed 1.0" in text
    free = float(re.search(r"^waygate_data_dir_free_bytes (\S+)", text, re.M).group(1))
    assert free > 0
