"""What the gate costs an upstream MCP server's tool call (issue 30), in one run.

The same stdio upstream (@modelcontextprotocol/server-filesystem, from tests/upstreams) is
called with the official MCP SDK client twice, in alternating rounds:

- direct: the SDK client spawns the server over stdio and calls ``list_allowed_directories``;
- forwarded: the SDK client calls ``files__list_allowed_directories`` on Waygate (gunicorn, 2
  workers, ``POST /mcp``, an admin key), which checks the key, audits the call and forwards
  it to its own child of the same server with the SDK client;
- waygate_echo: the same client calls Waygate's built-in ``echo``: Waygate's own cost of a
  tools/call, so that forwarded - waygate_echo is what forwarding itself adds.

Calls are sequential (one client): the figures are per-call latency, not throughput. Printed
as JSON: p50/p90 in ms of each, the p50 ratio, the added p50, and the resident memory of the
upstream's processes per worker (the cost of one child per worker). ``python bench/upstream.py
[--calls N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx2
import mcp
import psutil
import requests
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FILESYSTEM = (
    ROOT / "tests/upstreams/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_waygate(base: Path, files: Path) -> tuple[subprocess.Popen, str, str]:
    data_dir = base / "data"
    data_dir.mkdir()
    upstreams = base / "upstreams.json"
    upstreams.write_text(
        json.dumps(
            {"mcpServers": {"files": {"command": "node", "args": [str(FILESYSTEM), str(files)]}}}
        )
    )
    env = {
        **os.environ,
        "WAYGATE_DATA_DIR": str(data_dir),
        "WAYGATE_UPSTREAMS": str(upstreams),
        "WAYGATE_RATE_LIMIT_DEFAULT": "1000000/minute",
        "WAYGATE_RATE_LIMIT_EXECUTE": "1000000/minute",
    }
    subprocess.run([str(BIN / "waygate"), "migrate"], env=env, check=True, capture_output=True)
    made = subprocess.run(
        [str(BIN / "waygate"), "keys", "create", "--name", "bench", "--role", "admin"],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    key = made.stdout.strip().splitlines()[-1].strip()
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), "--bind",
         f"127.0.0.1:{port}", "--workers", "2", "--chdir", str(ROOT), "wsgi:app"],
        env=env, stdout=open(base / "gunicorn.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        log = (base / "gunicorn.log").read_text(errors="replace")
        try:
            if requests.get(url + "/ready", timeout=1).ok and log.count("worker ready:") >= 2:
                return proc, url, key
        except requests.RequestException:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"gunicorn did not start: {log[-2000:]}")


async def timed(call, calls: int) -> list[float]:
    for _ in range(20):  # warm-up
        await call()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        result = await call()
        samples.append((time.perf_counter() - started) * 1000)
        assert not result.is_error, result
    return samples


async def direct(files: Path, calls: int) -> list[float]:
    params = StdioServerParameters(command="node", args=[str(FILESYSTEM), str(files)])
    with open(os.devnull, "w") as quiet:
        async with (
            stdio_client(params, errlog=quiet) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await timed(lambda: session.call_tool("list_allowed_directories", {}), calls)


async def through_waygate(url: str, key: str, tool: str, arguments: dict, calls: int):
    http = httpx2.AsyncClient(headers={"X-API-Key": key})
    client = mcp.Client(streamable_http_client(url + "/mcp", http_client=http), mode="legacy")
    async with http, client:
        return await timed(lambda: client.call_tool(tool, arguments), calls)


def pct(samples: list[float], p: float) -> float:
    return round(statistics.quantiles(samples, n=100)[int(p) - 1], 3)


def upstream_rss_mib(proc: subprocess.Popen) -> list[float]:
    """Resident memory of each worker's upstream child (the per-worker cost)."""
    sizes = []
    for worker in psutil.Process(proc.pid).children():
        for child in worker.children(recursive=True):
            if str(FILESYSTEM) in " ".join(child.cmdline()):
                sizes.append(round(child.memory_info().rss / 2**20, 1))
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="timed calls per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not FILESYSTEM.exists():
        raise SystemExit("run `make install-test` first (it installs tests/upstreams)")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        files = base / "files"
        files.mkdir()
        proc, url, key = start_waygate(base, files)
        try:
            runs: dict[str, list[float]] = {"direct": [], "forwarded": [], "waygate_echo": []}
            for _ in range(args.rounds):  # alternating, so that drift hits all alike
                runs["direct"] += asyncio.run(direct(files, args.calls))
                runs["forwarded"] += asyncio.run(
                    through_waygate(url, key, "files__list_allowed_directories", {}, args.calls)
                )
                runs["waygate_echo"] += asyncio.run(
                    through_waygate(url, key, "echo", {"message": "hi"}, args.calls)
                )
            rss = upstream_rss_mib(proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=40)
    p50 = {side: pct(samples, 50) for side, samples in runs.items()}
    print(
        json.dumps(
            {
                "calls": {side: len(samples) for side, samples in runs.items()},
                "p50_ms": p50,
                "p90_ms": {side: pct(samples, 90) for side, samples in runs.items()},
                "ratio_p50": round(p50["forwarded"] / p50["direct"], 2),
                "added_p50_ms": round(p50["forwarded"] - p50["direct"], 3),
                # of which Waygate's own tools/call (a built-in plugin's echo, same client)
                "forwarding_p50_ms": round(p50["forwarded"] - p50["waygate_echo"], 3),
                "upstream_rss_mib_per_worker": rss,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
