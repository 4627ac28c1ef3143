"""Smoke test of the benchmark harness (bench/run.py): it starts every server, drives each case
with wrk and writes its results. Timings are not asserted here: speed is measured by
`make bench`, never by the test suite."""

import json
import shutil
import subprocess
import sys

import pytest

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
    )
    for connections in (1, 16)
}


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
    for section in ("compare", "floor"):
        assert set(results[section]) == CASES
        for name, case in results[section].items():
            # every server answered every request with a 2xx: keys, limits and bodies work
            assert case["non_2xx"] == 0, (section, name, case)
            assert case["rps"] > 0 and case["p99_ms"] > 0, (section, name, case)
    assert set(results["targets"]) == {
        "mcp_vs_sdk",
        "mcp_vs_fastmcp",
        "p50_1_vs_bare",
        "p99_16_vs_bare",
        "health_vs_floor",
        "execute_vs_floor",
        "mcp_vs_floor",
        "floor_health_vs_bare",
    }
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
