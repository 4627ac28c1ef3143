"""Smoke test of the benchmark harness (bench/run.py): it starts every server, drives each case
with wrk and writes its results. Timings are not asserted here: speed is measured by
`make bench`, never by the test suite."""

import json
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench import run
from tests.conftest import ROOT

CASES = {
    f"{name}@{connections}"
    for name in (
        "health",
        "bare_health",
        "execute",
        "bare_post",
        "mcp",
        "sdk",
        "fastmcp",
        "execute_scoped",
        "execute_unscoped",
        "floor_health",
        "floor_execute",
        "floor_mcp",
    )
    for connections in (1, 16)
}


# bench/run.py starts gunicorn and PostgreSQL
@pytest.mark.server
@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is installed by make test")
def test_the_harness_measures_every_case_without_a_failed_request(tmp_path):
    out = tmp_path / "results.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "run.py"),
            "--compare-only",
            "--floor",
            "--tracing",
            "--postgresql",
            "--rounds",
            "1",
            "--seconds",
            "1",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert run.returncode in (0, 1), run.stderr[-2000:]  # 1: a target missed, not a failure
    results = json.loads(out.read_text())
    assert set(results["compare"]) == CASES  # the floor's cases in the same groups
    for name, case in results["compare"].items():
        # every server answered every request with a 2xx: keys, limits and bodies work
        assert case["non_2xx"] == 0, (name, case)
        assert case["rps"] > 0 and case["p99_ms"] > 0, (name, case)
        # every worker had a wrk of its own, and each of them completed requests
        (per_worker,) = case["requests_per_worker"]
        assert len(per_worker) == (2 if name.endswith("@16") else 1), (name, case)
        assert min(per_worker) > 0 and case["idle_wrk"] == 0, (name, case)
    assert set(results["targets"]) == {
        "mcp_vs_sdk",
        "mcp_vs_fastmcp",
        "execute_vs_bare_post",
        "health_vs_bare",
        "p50_1_vs_bare",
        "p99_16_vs_bare",
        "health_vs_floor",
        "execute_vs_floor",
        "mcp_vs_floor",
        "floor_health_vs_bare",
    }
    # each ratio is the median of ratios taken within a round (one round here)
    for name, target in results["targets"].items():
        assert results["ratios_per_round"][name] == [target["value"]], name
    tracing = results["tracing"]
    for name in ("tracing_off@1", "tracing_on@1", "tracing_off@16", "tracing_on@16"):
        assert tracing[name]["non_2xx"] == 0 and tracing[name]["rps"] > 0, (name, tracing)
    assert tracing["exports_received"] > 0  # the traced server really exported its spans
    pg = results["postgresql"]
    for name in ("sqlite@1", "postgresql@1", "sqlite@16", "postgresql@16"):
        assert pg[name]["non_2xx"] == 0 and pg[name]["rps"] > 0, (name, pg)
    assert pg["postgresql_audit_rows"] > 0 and pg["pg_vs_sqlite_rps@16"] > 0
    assert tracing["on_vs_off_rps@16"] > 0
    assert "health_vs_floor" in run.stdout and "mcp_vs_fastmcp" in run.stdout


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def log_message(self, *args):
        pass


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is installed by make test")
def test_the_latency_histogram_gives_wrks_own_percentiles():
    """bench/wrk/bench.lua prints wrk's latency histogram, from which the harness merges the
    runs of several wrk processes: from one run's histogram it finds wrk's own p50 and p99."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = subprocess.run(
            ["wrk", "--latency", "-s", str(run.WRK_LUA), "-t1", "-c2", "-d1s",
             f"http://127.0.0.1:{server.server_address[1]}/"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    latency = run._wrk_result(out, "")["latency_us"]
    assert latency.total() >= run._wrk_result(out, "")["requests"] > 0
    for p in (50, 99):
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)$", out, re.M).groups()
        ours = run.percentile_us(latency, p) / {"us": 1, "ms": 1e3, "s": 1e6}[unit]
        assert f"{ours:.2f}" == value, (p, out)


def test_the_in_process_breakdown_runs_every_variant_on_every_path(tmp_path):
    out = tmp_path / "inprocess.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "inprocess.py"), "--repeat", "1",
         "--requests", "20", "--blocks", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    medians = json.loads(out.read_text())["medians"]
    assert set(medians) == {
        "bare",
        "floor",
        "floor+ratelimit",
        "floor+audit",
        "floor+pool",
        "floor+metrics",
        "waygate",
        "waygate-unchained",
    }
    for name, paths in medians.items():
        # every request answered 200 (a child exits otherwise); bare Flask has no /mcp
        assert set(paths) == (
            {"health", "execute"} if name == "bare" else {"health", "execute", "mcp"}
        )
        assert all(p["cpu_us"] > 0 for p in paths.values())
    assert "floor / variant" in done.stdout
    assert "audit chain, unchained / chained CPU per request: execute" in done.stdout
