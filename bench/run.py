#!/usr/bin/env python3
"""`make bench`: Waygate against its stack's ceiling and against two MCP servers (the official
SDK's and FastMCP).

Every server runs on loopback with 2 worker processes, and wrk drives each worker through a
port of its own (bench/gunicorn_bench.conf.py; one uvicorn process per port), so that a run
measures every worker, not whichever one accepted wrk's connections first. Each group of cases
(Waygate, with --floor Waygate with its features off, and the baselines) is measured back to
back, in alternating order, for ROUNDS rounds; every ratio is taken within a round and the
median of the rounds' ratios is reported, since absolute numbers drift on shared machines.
Then the growth checks: audit and error queries at 1,000 and 1,000,000 rows, /metrics scrape
time with 2, 4 and 8 workers, process_data throughput by size, and worker memory before and
after 100,000 requests. Every section starts on a fresh data dir.

With --tracing, also /mcp/execute with OpenTelemetry tracing off and on (exporting to a
loopback OTLP receiver), back to back in the same run, as a ratio (never a target).

Prints a table, writes bench/results/latest.json, exits 1 when a target is missed.
    python bench/run.py [--quick]      (--quick: short runs, for the harness's smoke test)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"
WRK_LUA = ROOT / "bench" / "wrk" / "bench.lua"
GUNICORN_CONF = ROOT / "bench" / "gunicorn_bench.conf.py"
WORKERS = 2
MCP_VERSION = "2025-11-25"
ECHO_COMMAND = json.dumps({"action": "echo", "params": {"message": "hello"}})
ECHO_TOOL = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "hello"}},
    }
)
HIGH_LIMITS = {
    **{
        f"WAYGATE_RATE_LIMIT_{n}": "100000000/minute"
        for n in ("EXECUTE", "HEALTH", "METRICS", "DEFAULT")
    },
    # one key drives 8 connections per worker: more than its default share (7 of 14 slots)
    "WAYGATE_COMMAND_REQUESTS_PER_KEY": "13",
}
# Issue 19's targets, re-based on the floor (bench/README.md): the ``*_vs_floor`` ones and
# floor/bare need --floor (Waygate with its per-request features off, in the same run).
# Issue 32's (issue 19's 7 x and 10 x were set against peers stalled by a missing TCP_NODELAY,
# see bench/README.md); PostgreSQL / SQLite >= 0.75 is read from the postgresql section.
TARGETS = {
    "mcp_vs_sdk": 2.0,
    "mcp_vs_fastmcp": 1.6,
    "execute_vs_bare_post": 0.55,
    "health_vs_bare": 0.75,
    "p50_1_vs_bare": 2.0,  # at most: /mcp/execute p50 at 1 connection / bare Flask POST's
    "p99_16_vs_bare": 3.0,  # at most
    "csv_10mib_seconds": 1.0,  # at most
}
FLOOR_TARGETS = {
    "health_vs_floor": 0.85,
    "execute_vs_floor": 0.80,
    "mcp_vs_floor": 0.80,
    "floor_health_vs_bare": 0.75,
}
AT_MOST = {"p50_1_vs_bare", "p99_16_vs_bare", "csv_10mib_seconds"}

Round = dict[str, dict]  # one round's result of every case, by case name
Ratio = Callable[[Round], float]


def ratio_of(numerator: str, denominator: str, field: str = "rps") -> Ratio:
    return lambda r: r[numerator][field] / r[denominator][field]


def p99_16_vs_bare(r: Round) -> float:
    return max(
        ratio_of("health@16", "bare_health@16", "p99_ms")(r),
        ratio_of("execute@16", "bare_post@16", "p99_ms")(r),
    )


RATIOS: dict[str, Ratio] = {
    "health_vs_bare": ratio_of("health@16", "bare_health@16"),
    "execute_vs_bare_post": ratio_of("execute@16", "bare_post@16"),
    "mcp_vs_sdk": ratio_of("mcp@16", "sdk@16"),
    "mcp_vs_fastmcp": ratio_of("mcp@16", "fastmcp@16"),
    "p50_1_vs_bare": ratio_of("execute@1", "bare_post@1", "p50_ms"),
    "p99_16_vs_bare": p99_16_vs_bare,
    "scoped_vs_unscoped": ratio_of("execute_scoped@16", "execute_unscoped@16"),
}
FLOOR_RATIOS: dict[str, Ratio] = {
    "health_vs_floor": ratio_of("health@16", "floor_health@16"),
    "execute_vs_floor": ratio_of("execute@16", "floor_execute@16"),
    "mcp_vs_floor": ratio_of("mcp@16", "floor_mcp@16"),
    "floor_health_vs_bare": ratio_of("floor_health@16", "bare_health@16"),
    "floor_execute_vs_bare_post": ratio_of("floor_execute@16", "bare_post@16"),
    "floor_mcp_vs_sdk": ratio_of("floor_mcp@16", "sdk@16"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A server under test on loopback, with one port per worker process in ``worker_ports``.

    Either a gunicorn master (``workers``) on bench/gunicorn_bench.conf.py, whose workers each
    listen on a port of their own and write it to BENCH_WORKER_PORTS_DIR, or ``processes``
    copies of a one-process server (uvicorn), each on its own port. ``url`` is the first port:
    gunicorn's own bind, which readiness, growth queries and scrapes use."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict | None = None,
        ready_path: str | None = "/health",
        workers: int = 0,
        processes: int = 1,
    ):
        self.name, self.argv, self.ready_path = name, argv, ready_path
        self.env = {**os.environ, **(env or {})}
        self.ports = [free_port() for _ in range(processes)]
        self.port = self.ports[0]
        self.gunicorn_workers = workers
        self.procs: list[subprocess.Popen] = []
        self.worker_ports: list[int] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in __exit__
            prefix=f"bench-{self.name}-", suffix=".log", delete=False
        )
        self.ports_dir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-ports-"))
        try:
            for port in self.ports:
                self.procs.append(
                    subprocess.Popen(
                        [a.replace("{port}", str(port)) for a in self.argv],
                        env={**self.env, "BENCH_WORKER_PORTS_DIR": str(self.ports_dir)},
                        cwd=ROOT,
                        stdout=self.log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            for port in self.ports:
                self._wait_ready(port, time.monotonic() + 30)
            self.worker_ports = (
                self._gunicorn_worker_ports(time.monotonic() + 60)
                if self.gunicorn_workers
                else list(self.ports)
            )
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self, port: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            if any(proc.poll() is not None for proc in self.procs):
                raise RuntimeError(f"{self.name} exited; see {self.log.name}")
            try:
                if self.ready_path is None:  # uvicorn: its GET /mcp is a stream that never ends
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                else:
                    requests.get(f"http://127.0.0.1:{port}{self.ready_path}", timeout=1)
                return
            except (OSError, requests.RequestException):
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start; see {self.log.name}")

    def _gunicorn_worker_ports(self, deadline: float) -> list[int]:
        """Each live worker's own port, in pid order, once every worker has written one."""
        while time.monotonic() < deadline:
            pids = {worker.pid for worker in self.workers()}
            ports = {
                int(f.name): int(f.read_text())
                for f in self.ports_dir.iterdir()
                if f.name.isdigit() and int(f.name) in pids
            }
            if len(ports) == self.gunicorn_workers:
                return [ports[pid] for pid in sorted(ports)]
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: not every worker opened its port; see {self.log.name}")

    def __exit__(self, *exc) -> None:
        running = [proc for proc in self.procs if proc.poll() is None]
        for proc in running:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in running:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.log.close()
        shutil.rmtree(self.ports_dir, ignore_errors=True)

    def workers(self) -> list[psutil.Process]:
        if self.gunicorn_workers:
            return psutil.Process(self.procs[0].pid).children()
        return [psutil.Process(proc.pid) for proc in self.procs]


def gunicorn(
    name: str,
    app: str,
    config: Path,
    env: dict | None = None,
    workers: int = WORKERS,
) -> Server:
    argv = [str(BIN / "gunicorn"), "-c", str(config), "--workers", str(workers)]
    argv += ["--bind", "127.0.0.1:{port}", "--access-logfile", "/dev/null", app]
    return Server(name, argv, env, workers=workers)


def waygate(
    data_dir: Path,
    workers: int = WORKERS,
    app: str = "wsgi:app",
    env: dict | None = None,
    name: str = "waygate",
) -> Server:
    env = {"WAYGATE_DATA_DIR": str(data_dir), **HIGH_LIMITS, **(env or {})}
    return gunicorn(name, app, GUNICORN_CONF, env, workers)


def bare_flask() -> Server:
    return gunicorn("bare", "bench.bare_app:app", ROOT / "bench" / "gunicorn_bare.conf.py")


def sdk_server() -> Server:
    return uvicorn("sdk", "bench.sdk_server:app")


def fastmcp_server() -> Server:
    return uvicorn("fastmcp", "bench.fastmcp_server:app")


def uvicorn(name: str, app: str) -> Server:
    """WORKERS uvicorn processes of one worker each, each on its own port (``uvicorn --workers``
    would share one listening socket between them)."""
    argv = [str(BIN / "uvicorn"), "--host", "127.0.0.1", "--port", "{port}", "--no-access-log", app]
    return Server(name, argv, ready_path=None, processes=WORKERS)


def wrk(
    server: Server,
    path: str,
    connections: int,
    seconds: float,
    body: str | None = None,
    key: str = "",
    mcp_version: str = "",
    round_: int = 0,
) -> dict:
    """One measurement: a wrk process (one thread) per worker port, all at once, the
    connections spread over them as evenly as they go (16 over 5: 4 + 3 + 3 + 3 + 3); at one
    connection a single wrk on one worker, the ``round_``-th in turn. Requests per second are
    summed, p50 and p99 come from the merged latency histograms (bench/wrk/bench.lua)."""
    ports = server.worker_ports
    if connections == 1:
        shares = [(ports[round_ % len(ports)], 1)]
    else:
        each, extra = divmod(connections, len(ports))
        shares = [(port, each + (i < extra)) for i, port in enumerate(ports) if each + (i < extra)]
    env = {**os.environ, "WRK_BODY": body or "", "WRK_KEY": key, "WRK_MCP_VERSION": mcp_version}
    argv = ["wrk", "-s", str(WRK_LUA), "-t1", "-d", f"{seconds:g}s"]
    procs = [
        subprocess.Popen(
            [*argv, "-c", str(count), f"http://127.0.0.1:{port}{path}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for port, count in shares
    ]
    parts = [_wrk_result(*proc.communicate(timeout=seconds + 60)) for proc in procs]
    latency: Counter[int] = Counter()
    for part in parts:
        latency.update(part["latency_us"])
    if not latency:
        raise RuntimeError(f"wrk got no answer from {server.name} {path}: {parts}")
    return {
        "rps": sum(p["rps"] for p in parts),
        "p50_ms": percentile_us(latency, 50) / 1000,
        "p99_ms": percentile_us(latency, 99) / 1000,
        "requests": sum(p["requests"] for p in parts),
        "non_2xx": sum(p["non_2xx"] for p in parts),
        "socket_errors": "; ".join(p["socket_errors"] for p in parts if p["socket_errors"]),
        "connections_per_worker": [count for _, count in shares],
        "requests_per_worker": [p["requests"] for p in parts],
    }


def _wrk_result(out: str, err: str) -> dict:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"wrk failed: {err or out}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    buckets = [int(n) for n in out.split("latency-histogram-us\n", 1)[1].split()]
    return {
        "rps": float(rps.group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
        "latency_us": Counter(dict(zip(buckets[::2], buckets[1::2], strict=True))),
    }


def percentile_us(latency: Counter[int], p: float) -> int:
    """wrk's own percentile (stats.c stats_percentile): the lowest latency whose bucket brings
    the running count to round(p / 100 * count + 0.5), C's round being half away from zero."""
    rank = math.floor(p / 100 * latency.total() + 1)
    seen = 0
    for us in sorted(latency):
        seen += latency[us]
        if seen >= rank:
            return us
    return max(latency)


def create_key(data_dir: Path, name: str = "bench", *options: str) -> str:
    out = subprocess.run(
        [str(BIN / "waygate"), "keys", "create", "--name", name, *options],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "WAYGATE_DATA_DIR": str(data_dir)},
    )
    return out.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def fresh_data_dir(parent: Path, name: str) -> Iterator[tuple[Path, str]]:
    """A new data dir for one section, migrated, with an admin key: no section measures on a
    database grown by the ones before it. Removed afterwards."""
    data_dir = parent / name
    data_dir.mkdir()
    try:
        subprocess.run(
            [str(BIN / "waygate"), "migrate"],
            check=True,
            capture_output=True,
            env={**os.environ, "WAYGATE_DATA_DIR": str(data_dir)},
        )
        yield data_dir, create_key(data_dir, "bench", "--role", "admin")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@dataclass(frozen=True)
class Case:
    """One measured request: a path on a server, with the body and key it needs."""

    name: str
    server: Server | None  # None: not started in this run (the floor without --floor)
    path: str
    body: str | None = None
    key: str = ""

    def measure(self, connections: int, seconds: float, round_: int) -> dict:
        version = MCP_VERSION if self.path == "/mcp" else ""
        return wrk(
            self.server, self.path, connections, seconds, self.body, self.key, version, round_
        )


def alternating(
    rounds: int, seconds: float, groups: list[list[Case]], connections: tuple[int, ...] = (1, 16)
) -> dict[str, list[dict]]:
    """Every case of a group measured back to back at each connection count, the group's order
    reversed every other round, after one warm-up run of every case (which also loads every
    worker). The results by ``name@connections``, one per round."""
    for group in groups:
        for case in group:
            case.measure(16, seconds, 0)
    runs: dict[str, list[dict]] = {}
    for n in range(rounds):
        for group in groups:
            for c in connections:
                for case in group if n % 2 == 0 else reversed(group):
                    runs.setdefault(f"{case.name}@{c}", []).append(case.measure(c, seconds, n))
    return runs


def medians(runs: dict[str, list[dict]]) -> dict:
    """Each case's median req/s, p50 and p99 over its rounds, its non-2xx total, how many wrk
    processes completed no request at all (a worker not driven), and per round the requests
    each worker's wrk completed."""
    return {
        name: {
            "rps": statistics.median(r["rps"] for r in results),
            "p50_ms": statistics.median(r["p50_ms"] for r in results),
            "p99_ms": statistics.median(r["p99_ms"] for r in results),
            "non_2xx": sum(r["non_2xx"] for r in results),
            "idle_wrk": sum(r["requests_per_worker"].count(0) for r in results),
            "rounds": len(results),
            "requests_per_worker": [r["requests_per_worker"] for r in results],
        }
        for name, results in runs.items()
    }


def paired(
    runs: dict[str, list[dict]], ratios: dict[str, Ratio]
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Each ratio taken within each round, from cases measured back to back, and the median of
    the rounds' ratios; and the per-round values."""
    count = min(len(results) for results in runs.values())
    rounds = [{name: results[n] for name, results in runs.items()} for n in range(count)]
    per_round = {name: [ratio(r) for r in rounds] for name, ratio in ratios.items()}
    return {name: statistics.median(v) for name, v in per_round.items()}, per_round


def add_paired(summary: dict, runs: dict[str, list[dict]], ratios: dict[str, Ratio]) -> dict:
    """A section's ``summary`` with its paired ratios and, as ``<name>_per_round``, their
    per-round values."""
    values, per_round = paired(runs, ratios)
    summary.update(rounded(values))
    summary.update(rounded({f"{name}_per_round": v for name, v in per_round.items()}))
    return summary


def rounded(values: dict) -> dict:
    return {
        name: [round(v, 3) for v in value] if isinstance(value, list) else round(value, 3)
        for name, value in values.items()
    }


# -- 1 to 4: throughput and latency against the baselines --------------------------------------


def compare(
    rounds: int, seconds: float, data_dir: Path, key: str, floor: tuple[Path, str] | None = None
) -> dict[str, list[dict]]:
    """Waygate, with ``floor`` (a data dir and its key) also Waygate with its features off
    (bench/ablate.py), bare Flask, the SDK server and FastMCP, all running at once; in each
    group Waygate, its floor and the baselines back to back."""
    # The cost of a key's scope: a user key with an allow-list against one without.
    allow = ("--allow", "echo", "--allow", "Core.*", "--allow", "Data*.*")
    scoped = create_key(data_dir, "scoped", *allow)
    unscoped = create_key(data_dir, "unscoped")
    with contextlib.ExitStack() as stack:
        wg = stack.enter_context(waygate(data_dir))
        fl = None
        if floor is not None:
            fl = stack.enter_context(waygate(floor[0], app="bench.ablate:app", name="floor"))
        bare = stack.enter_context(bare_flask())
        sdk = stack.enter_context(sdk_server())
        fm = stack.enter_context(fastmcp_server())
        floor_key = floor[1] if floor else ""
        groups = [
            [
                Case("health", wg, "/health"),
                Case("floor_health", fl, "/health"),
                Case("bare_health", bare, "/health"),
            ],
            [
                Case("execute", wg, "/mcp/execute", ECHO_COMMAND, key),
                Case("floor_execute", fl, "/mcp/execute", ECHO_COMMAND, floor_key),
                Case("bare_post", bare, "/echo", ECHO_COMMAND),
            ],
            [
                Case("mcp", wg, "/mcp", ECHO_TOOL, key),
                Case("floor_mcp", fl, "/mcp", ECHO_TOOL, floor_key),
                Case("sdk", sdk, "/mcp", ECHO_TOOL),
                Case("fastmcp", fm, "/mcp", ECHO_TOOL),
            ],
            [
                Case("execute_scoped", wg, "/mcp/execute", ECHO_COMMAND, scoped),
                Case("execute_unscoped", wg, "/mcp/execute", ECHO_COMMAND, unscoped),
            ],
        ]
        groups = [[case for case in group if case.server is not None] for group in groups]
        return alternating(rounds, seconds, groups)


# -- tracing: /mcp/execute with OpenTelemetry off and on ----------------------------------------


class _OtlpSink(BaseHTTPRequestHandler):
    """Takes OTLP/HTTP exports and answers 200 with an empty ExportTraceServiceResponse (an
    empty protobuf message is zero bytes): a collector that costs as little as one can."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.exports += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def tracing_cost(rounds: int, seconds: float, data_dir: Path, key: str) -> dict:
    """/mcp/execute (echo) against the same server with
    WAYGATE_TRACING on, exporting every span to a loopback receiver; alternating order."""
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _OtlpSink)
    sink.exports = 0  # type: ignore[attr-defined]
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    traced = {
        "WAYGATE_TRACING": "true",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink.server_address[1]}",
    }
    try:
        with waygate(data_dir) as off, waygate(data_dir, env=traced, name="traced") as on:
            group = [
                Case("tracing_off", off, "/mcp/execute", ECHO_COMMAND, key),
                Case("tracing_on", on, "/mcp/execute", ECHO_COMMAND, key),
            ]
            runs = alternating(rounds, seconds, [group])
    finally:
        sink.shutdown()
        sink.server_close()
    summary = medians(runs)
    summary["exports_received"] = sink.exports  # type: ignore[attr-defined]
    return add_paired(
        summary,
        runs,
        {
            "on_vs_off_rps@16": ratio_of("tracing_on@16", "tracing_off@16"),
            "on_vs_off_p99@16": ratio_of("tracing_on@16", "tracing_off@16", "p99_ms"),
        },
    )


def audit_chain_cost(
    rounds: int, seconds: float, chained: tuple[Path, str], plain: tuple[Path, str]
) -> dict:
    """/mcp/execute (echo) with the audit chain (the default) and with WAYGATE_AUDIT_CHAIN=false,
    alternating order: what the tamper-evident audit costs, its housekeeping (checkpoints, the
    verification of each round) included. Each on a data dir of its own (the chained server's
    housekeeping would otherwise chain the other's rows)."""
    off = {"WAYGATE_AUDIT_CHAIN": "false"}
    with (
        waygate(chained[0]) as on_server,
        waygate(plain[0], env=off, name="unchained") as off_server,
    ):
        group = [
            Case("chain_on", on_server, "/mcp/execute", ECHO_COMMAND, chained[1]),
            Case("chain_off", off_server, "/mcp/execute", ECHO_COMMAND, plain[1]),
        ]
        runs = alternating(rounds, seconds, [group])
    return add_paired(
        medians(runs),
        runs,
        {
            "on_vs_off_rps@1": ratio_of("chain_on@1", "chain_off@1"),
            "on_vs_off_rps@16": ratio_of("chain_on@16", "chain_off@16"),
            "on_vs_off_p99@16": ratio_of("chain_on@16", "chain_off@16", "p99_ms"),
        },
    )


def postgresql_cost(rounds: int, seconds: float, data_dir: Path, key: str) -> dict:
    """/mcp/execute on SQLite and on PostgreSQL side by side (bench/pg.py)."""
    if str(ROOT) not in sys.path:  # run as a script: bench/ and tests/ are under ROOT
        sys.path.insert(0, str(ROOT))
    from bench import pg

    return pg.postgresql_cost(rounds, seconds, data_dir, key, sys.modules[__name__])


def inprocess_costs(quick: bool) -> dict:
    """Each per-request feature's CPU time without the network (bench/inprocess.py)."""
    if str(ROOT) not in sys.path:  # run as a script: bench/ is under ROOT
        sys.path.insert(0, str(ROOT))
    from bench import inprocess

    table, _ = inprocess.run(*((1, 50, 2) if quick else (3, 300, 9)))
    return table


# -- worker pinning: on and off, with more workers than cores ---------------------------------


def pinning_cost(
    rounds: int, seconds: float, data_dir: Path, key: str, workers: int | None = None
) -> dict:
    """/health and /mcp/execute (echo) against two Waygates with ``workers`` workers
    (gunicorn's default, 2 x cores + 1, unless given), one with its workers kept on one CPU
    each, one with WAYGATE_PIN_WORKERS=false; alternating order, 16 connections spread over
    the workers."""
    workers = workers or 2 * (os.cpu_count() or 1) + 1
    with (
        waygate(data_dir, workers, name="pinned") as pinned,
        waygate(data_dir, workers, env={"WAYGATE_PIN_WORKERS": "false"}, name="free") as free,
    ):
        groups = [
            [Case("pinned_health", pinned, "/health"), Case("unpinned_health", free, "/health")],
            [
                Case("pinned_execute", pinned, "/mcp/execute", ECHO_COMMAND, key),
                Case("unpinned_execute", free, "/mcp/execute", ECHO_COMMAND, key),
            ],
        ]
        runs = alternating(rounds, seconds, groups, connections=(16,))
    return add_paired(
        {"workers": workers, **medians(runs)},
        runs,
        {
            f"pinned_vs_unpinned_{path}": ratio_of(f"pinned_{path}@16", f"unpinned_{path}@16")
            for path in ("health", "execute")
        },
    )


# -- 5: growth -------------------------------------------------------------------------------


def fill(db: Path, rows: int, start: int) -> None:
    conn = sqlite3.connect(db)
    statuses = ("success", "success", "success", "failed", "timeout")
    base = time.time() - 6 * 86400
    with conn:
        conn.executemany(
            "INSERT INTO executions (command_id, action, plugin, key_name, mode, status,"
            " duration_ms, timeout_s, worker_pid, created_at, finished_at)"
            " VALUES (?, ?, 'Core', 'bench', 'sync', ?, 3, 30, 1, ?, ?)",
            (
                (
                    f"cmd_fill_{i:09d}",
                    ("echo", "test", "status")[i % 3],
                    statuses[i % 5],
                    _iso(base + i * 0.5),
                    _iso(base + i * 0.5),
                )
                for i in range(start, start + rows)
            ),
        )
        conn.executemany(
            "INSERT INTO errors (timestamp, level, code, message, context, worker_pid)"
            " VALUES (?, 'ERROR', 'INTERNAL_ERROR', 'filler', '{}', 1)",
            ((_iso(base + i * 0.5),) for i in range(start, start + rows)),
        )
        # rows written behind Waygate's back: their count as Waygate's own totals would have it
        conn.execute(
            "UPDATE row_counts SET n = (SELECT count(*) FROM executions) WHERE name = 'executions'"
        )
    conn.close()


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"


def timed_get(url: str, key: str, n: int = 15) -> float:
    session = requests.Session()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        response = session.get(url, headers={"X-API-Key": key}, timeout=30)
        samples.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    return statistics.median(samples)


GROWTH_QUERIES = {
    "executions": "/mcp/executions?limit=10",
    "executions_filtered": "/mcp/executions?status=failed&action=echo&limit=10",
    "executions_since": "/mcp/executions?since=2000-01-01T00:00:00Z&limit=10&page=50",
    "errors": "/diagnostics/errors?limit=10",
    "errors_since": "/diagnostics/errors?since=2000-01-01T00:00:00Z&limit=100",
}


def growth(data_dir: Path, key: str, big_rows: int) -> dict:
    db = data_dir / "waygate.db"
    result: dict[str, dict] = {}
    fill(db, 1000, 0)
    with waygate(data_dir) as wg:
        small = {name: timed_get(wg.url + path, key) for name, path in GROWTH_QUERIES.items()}
    fill(db, big_rows - 1000, 1000)
    with waygate(data_dir) as wg:
        big = {name: timed_get(wg.url + path, key) for name, path in GROWTH_QUERIES.items()}
    for name in GROWTH_QUERIES:
        result[name] = {
            "ms_at_1k": round(small[name], 2),
            f"ms_at_{big_rows}": round(big[name], 2),
            "ratio": round(big[name] / small[name], 2),
        }
    return result


def scrape_times(fresh: Callable[[str], contextlib.AbstractContextManager]) -> dict:
    result = {}
    for workers in (2, 4, 8):
        with fresh(f"scrape-{workers}") as (data_dir, key), waygate(data_dir, workers) as wg:
            wrk(wg, "/mcp/execute", 16, 2, ECHO_COMMAND, key)  # every worker writes files
            result[f"{workers}_workers_ms"] = round(timed_get(wg.url + "/metrics", key), 2)
    return result


def process_data(data_dir: Path, key: str) -> dict:
    result = {}
    row = "web-host-0001,eu-west-1,0.4567,8192,ok\n"
    record = {
        "host": "web-host-0001",
        "region": "eu-west-1",
        "cpu": 0.4567,
        "mem": 8192,
        "state": "ok",
    }
    with waygate(data_dir) as wg:
        session = requests.Session()
        for label, size in (("1KiB", 1024), ("1MiB", 2**20), ("10MiB", 10 * 2**20 - 4096)):
            csv = "host,region,cpu,mem,state\n" + row * (size // len(row))
            records = json.dumps([record] * (size // (len(json.dumps(record)) + 2)))
            for fmt, text in (("csv", csv), ("json", records)):
                body = {
                    "action": "process_data",
                    "timeout": 300,
                    "params": {"input": text, "format": fmt, "options": {"transform": True}},
                }
                samples = []
                for _ in range(3 if size > 2**20 else 5):
                    started = time.perf_counter()
                    response = session.post(
                        wg.url + "/mcp/execute", json=body, headers={"X-API-Key": key}, timeout=300
                    )
                    samples.append(time.perf_counter() - started)
                    assert response.status_code == 200, response.text[:300]
                seconds = statistics.median(samples)
                result[f"{fmt}_{label}"] = {
                    "bytes": len(text),
                    "seconds": round(seconds, 4),
                    "mb_per_s": round(len(text) / 2**20 / seconds, 2),
                }
    return result


def memory(data_dir: Path, key: str, total: int) -> dict:
    with waygate(data_dir) as wg:
        # Every worker warmed up (a worker that served nothing yet has not loaded everything:
        # its "growth" would be its first requests, not a leak).
        wrk(wg, "/mcp/execute", 16, 4, ECHO_COMMAND, key)
        before = {w.pid: w.memory_info().rss for w in wg.workers()}
        done = 0
        while done < total:
            done += wrk(wg, "/mcp/execute", 16, 10, ECHO_COMMAND, key)["requests"]
        after = {w.pid: w.memory_info().rss for w in wg.workers()}
    return {
        "requests": done,
        "rss_mb_before": [round(v / 2**20, 1) for v in before.values()],
        "rss_mb_after": [round(after.get(pid, 0) / 2**20, 1) for pid in before],
        "growth_mb": round(
            max((after.get(pid, 0) - rss) / 2**20 for pid, rss in before.items()), 1
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (harness smoke test)")
    parser.add_argument(
        "--compare-only",
        action="store_true",
        help="only the side-by-side throughput and latency cases (for profiling changes)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure Waygate with its per-request features off (bench/ablate.py) in the "
        "same groups, to show what the features cost",
    )
    parser.add_argument(
        "--tracing",
        action="store_true",
        help="also /mcp/execute with OpenTelemetry tracing off and on, in the same run",
    )
    parser.add_argument(
        "--postgresql",
        action="store_true",
        help="/mcp/execute on SQLite and on PostgreSQL side by side (part of every full run;"
        " this adds it to --compare-only)",
    )
    parser.add_argument(
        "--audit-chain",
        action="store_true",
        help="/mcp/execute with the audit chain on and off side by side (part of every full"
        " run; this adds it to --compare-only)",
    )
    parser.add_argument(
        "--pinning",
        action="store_true",
        help="also Waygate with 2 x cores + 1 workers, pinned to CPUs and not, in the same run",
    )
    parser.add_argument(
        "--inprocess",
        action="store_true",
        help="each feature's CPU cost per request in-process (bench/inprocess.py; part of every"
        " full run, this adds it to --compare-only)",
    )
    parser.add_argument(
        "--pinning-workers",
        type=int,
        help="workers of the --pinning servers (default 2 x cores + 1)",
    )
    parser.add_argument("--rounds", type=int, help="rounds of the comparison (default 3)")
    parser.add_argument(
        "--out",
        type=Path,
        help="where to write the results (default bench/results/latest.json, or "
        "compare-only.json with --compare-only)",
    )
    parser.add_argument("--seconds", type=int, help="seconds per wrk run (default 5)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("bench: wrk is missing; `make bench` installs it", file=sys.stderr)
        return 2
    rounds, seconds = (1, 1) if args.quick else (3, 5)
    rounds, seconds = args.rounds or rounds, args.seconds or seconds
    big_rows = 20_000 if args.quick else 1_000_000
    requests_for_memory = 2_000 if args.quick else 100_000
    results: dict = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "quick": args.quick,
    }
    with tempfile.TemporaryDirectory(prefix="waygate-bench-") as tmp:

        def fresh(name: str) -> contextlib.AbstractContextManager:
            return fresh_data_dir(Path(tmp), name)

        with fresh("compare") as (data_dir, key), contextlib.ExitStack() as stack:
            floor = stack.enter_context(fresh("floor")) if args.floor else None
            runs = compare(rounds, seconds, data_dir, key, floor)
        if args.tracing:
            with fresh("tracing") as (data_dir, key):
                results["tracing"] = tracing_cost(rounds, seconds, data_dir, key)
        if args.audit_chain or not args.compare_only:
            with fresh("audit_chain") as chained, fresh("audit_chain_off") as plain:
                results["audit_chain"] = audit_chain_cost(rounds, seconds, chained, plain)
        if args.postgresql or not args.compare_only:
            with fresh("postgresql") as (data_dir, key):
                results["postgresql"] = postgresql_cost(rounds, seconds, data_dir, key)
        if args.pinning:
            with fresh("pinning") as (data_dir, key):
                results["pinning"] = pinning_cost(
                    rounds, seconds, data_dir, key, args.pinning_workers
                )
        if args.inprocess or not args.compare_only:
            results["inprocess"] = inprocess_costs(args.quick)
        if not args.compare_only:
            with fresh("process_data") as (data_dir, key):
                results["process_data"] = process_data(data_dir, key)
            with fresh("memory") as (data_dir, key):
                results["memory"] = memory(data_dir, key, requests_for_memory)
            results["scrape"] = scrape_times(fresh)
            with fresh("growth") as (data_dir, key):
                results["growth"] = growth(data_dir, key, big_rows)
    results["compare"] = medians(runs)
    ratios, per_round = paired(runs, {**RATIOS, **(FLOOR_RATIOS if args.floor else {})})
    targets = {**TARGETS, **(FLOOR_TARGETS if args.floor else {})}
    if not args.compare_only:
        ratios["csv_10mib_seconds"] = results["process_data"]["csv_10MiB"]["seconds"]
    results["targets"] = {
        name: {
            "value": round(value, 3),
            "target": targets[name],
            "met": value <= targets[name] if name in AT_MOST else value >= targets[name],
        }
        for name, value in ratios.items()
        if name in targets
    }
    results["ratios"] = rounded(ratios)
    results["ratios_per_round"] = rounded(per_round)
    report(results)
    out = args.out or RESULTS / ("compare-only.json" if args.compare_only else "latest.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return 0 if all(t["met"] for t in results["targets"].values()) and not failures(results) else 1


def failures(results: dict) -> int:
    """Non-2xx answers, and wrk processes that completed no request (a worker not driven), in
    every section that drives servers with wrk; said on stderr."""
    cases = [
        case
        for section in ("compare", "tracing", "postgresql", "pinning", "audit_chain")
        for case in results.get(section, {}).values()
        if isinstance(case, dict) and "non_2xx" in case
    ]
    errors = sum(case["non_2xx"] for case in cases)
    idle = sum(case["idle_wrk"] for case in cases)
    if errors:
        print(f"bench: {errors} non-2xx responses during the comparison", file=sys.stderr)
    if idle:
        print(f"bench: {idle} wrk runs on a worker's port completed no request", file=sys.stderr)
    return errors + idle


def report(results: dict) -> None:
    print(f"\n{'case':22} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}  (median of rounds)")
    for name, r in sorted(results["compare"].items()):
        print(f"{name:22} {r['rps']:10.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}")
    print(f"\n{'ratio':26} {'median':>7}  per round (within a round)")
    for name, value in results["ratios"].items():
        per_round = results["ratios_per_round"].get(name)
        rounds = f"[{', '.join(f'{v:.3f}' for v in per_round)}]" if per_round else ""
        target = results["targets"].get(name)
        if target is None:
            met = "(not a target)"
        else:
            bound = "<=" if name in AT_MOST else ">="
            met = f"{bound} {target['target']}: {'met' if target['met'] else 'NOT MET'}"
        print(f"{name:26} {value:7.3f}  {rounds}  {met}")
    if "postgresql" in results:
        from bench import pg

        pg.report(results["postgresql"])
    if "inprocess" in results:
        from bench import inprocess

        inprocess.report(results["inprocess"])
    if "tracing" in results:
        t = results["tracing"]
        print("\ntracing: /mcp/execute echo, OpenTelemetry off and on (OTLP to loopback)")
        for name in ("tracing_off@1", "tracing_on@1", "tracing_off@16", "tracing_on@16"):
            r = t[name]
            print(f"{name:22} {r['rps']:10.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}")
        print(f"{'on/off req/s @16':22} {t['on_vs_off_rps@16']:10.3f}  (not a target)")
        print(
            f"{'on/off p99 @16':22} {t['on_vs_off_p99@16']:10.3f}  exports: {t['exports_received']}"
        )
    if "audit_chain" in results:
        a = results["audit_chain"]
        print("\naudit chain: /mcp/execute echo, WAYGATE_AUDIT_CHAIN on and off (target: >= 0.95)")
        for name in ("chain_off@1", "chain_on@1", "chain_off@16", "chain_on@16"):
            r = a[name]
            print(f"{name:22} {r['rps']:10.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}")
        for name in ("on_vs_off_rps@1", "on_vs_off_rps@16", "on_vs_off_p99@16"):
            rounds = ", ".join(f"{v:.3f}" for v in a[f"{name}_per_round"])
            print(f"{'on/off ' + name[10:]:22} {a[name]:10.3f}  [{rounds}]")
    if "pinning" in results:
        p = results["pinning"]
        print(f"\nworker pinning, {p['workers']} workers, 16 connections")
        for name in ("pinned_health", "unpinned_health", "pinned_execute", "unpinned_execute"):
            r = p[f"{name}@16"]
            print(f"{name:22} {r['rps']:10.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}")
        for path in ("health", "execute"):
            print(f"{'pinned/unpinned ' + path:22} {p[f'pinned_vs_unpinned_{path}']:10.3f}")
    if "process_data" not in results:
        return
    print("\nprocess_data (transform):")
    for name, r in results["process_data"].items():
        print(f"  {name:12} {r['bytes']:>10} B  {r['seconds']:8.4f} s  {r['mb_per_s']:8.2f} MB/s")
    print("\n/metrics scrape:", results["scrape"])
    print("memory per worker:", results["memory"])
    print("growth (median ms per query):")
    for name, g in results["growth"].items():
        print(f"  {name:22} {g}")


if __name__ == "__main__":
    sys.exit(main())
