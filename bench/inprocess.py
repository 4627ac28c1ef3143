#!/usr/bin/env python3
"""What each per-request feature costs, in CPU time, without the network or wrk.

Every variant runs in its own process on one CPU: the WSGI app called straight with a
prepared environ (no socket, no gunicorn), requests one after another, the process's CPU time
per request (the command pool's thread counts) and the wall time. Variants: bare Flask (the
stack's ceiling, bench/bare_app.py), Waygate's floor (bench/ablate.py: rate limit, audit row,
pool hand-off and metrics off), the floor plus one feature at a time, and Waygate as shipped.
Metrics are written in multiprocess mode (files), as under gunicorn.

CPU time per request does not drift with the machine's load the way req/s through loopback
does, so this is the breakdown to read beside `bench/run.py`'s ratios:

    .venv/bin/python bench/inprocess.py [--requests 300] [--blocks 9] [--repeat 3]

Prints a table (median over the repeats of each variant's best block) and writes
bench/results/inprocess.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FEATURES = ("ratelimit", "audit", "pool", "metrics")
PATHS = ("health", "execute", "mcp")
# name -> (app, features switched off); "bare" answers only /health and /echo
VARIANTS = {
    "bare": ("bench.bare_app:app", None),
    "floor": ("bench.ablate:app", FEATURES),
    **{
        f"floor+{feature}": ("bench.ablate:app", tuple(f for f in FEATURES if f != feature))
        for feature in FEATURES
    },
    "waygate": ("wsgi:app", ()),
    # as shipped but with WAYGATE_AUDIT_CHAIN=false: the tamper-evident audit's price
    "waygate-unchained": ("wsgi:app", ()),
}
EXECUTE = {"action": "echo", "params": {"message": "hello"}}
TOOL_CALL = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {"message": "hello"}},
}


def _environ(path: str, key: str, bare: bool) -> tuple[dict, bytes]:
    from werkzeug.test import EnvironBuilder

    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    if path == "health":
        builder = EnvironBuilder(path="/health", method="GET")
    elif path == "execute" or bare:
        builder = EnvironBuilder(
            path="/echo" if bare else "/mcp/execute",
            method="POST",
            data=json.dumps(EXECUTE),
            headers=headers,
        )
    else:
        headers.update(
            {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
        )
        builder = EnvironBuilder(
            path="/mcp", method="POST", data=json.dumps(TOOL_CALL), headers=headers
        )
    environ = builder.get_environ()
    return environ, environ["wsgi.input"].read()


def measure(app_name: str, key: str, requests: int, blocks: int) -> dict:
    """In the variant's own process: each path's best block, CPU and wall us per request."""
    module, _, attr = app_name.partition(":")
    sys.path.insert(0, str(ROOT))
    app = getattr(__import__(module, fromlist=[attr]), attr)
    bare = module == "bench.bare_app"
    result = {}
    for path in PATHS:
        if bare and path == "mcp":
            continue
        environ, body = _environ(path, key, bare)

        def one(environ=environ, body=body, path=path):
            env = dict(environ)
            env["wsgi.input"] = io.BytesIO(body)
            status = []
            out = app(env, lambda s, h, exc=None, status=status: status.append(s))
            b"".join(out)
            if hasattr(out, "close"):
                out.close()
            if not status[0].startswith("200"):
                raise SystemExit(f"{app_name} {path}: {status[0]}")

        result[path] = best_block(one, requests, blocks)
    return result


def best_block(one, requests: int, blocks: int) -> dict:
    """``one()`` warmed up, then timed in ``blocks`` blocks of ``requests`` calls: the best
    block's CPU and wall microseconds per call."""
    for _ in range(200):  # warm up: caches, lazily made threads and connections
        one()
    cpu, wall = [], []
    for _ in range(blocks):
        c, w = time.process_time(), time.perf_counter()
        for _ in range(requests):
            one()
        cpu.append((time.process_time() - c) / requests * 1e6)
        wall.append((time.perf_counter() - w) / requests * 1e6)
    return {"cpu_us": round(min(cpu), 1), "wall_us": round(min(wall), 1)}


def run_child(script: str, args: list[str], data_dir: Path, env: dict[str, str]) -> dict:
    """``script --child ARGS`` in a process of its own on the last CPU, Waygate's data dir and
    a metrics dir of its own, rate limits out of the way: the JSON it prints last."""
    env = {
        **os.environ,
        "WAYGATE_DATA_DIR": str(data_dir),
        "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="prom-", dir=data_dir),
        **{
            f"WAYGATE_RATE_LIMIT_{n}": "100000000/minute"
            for n in ("EXECUTE", "HEALTH", "METRICS", "DEFAULT")
        },
        **env,
    }
    cpu = sorted(os.sched_getaffinity(0))[-1]
    out = subprocess.run(
        ["taskset", "-c", str(cpu), sys.executable, script, "--child", *args],
        env=env, capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def run_variant(name: str, data_dir: Path, key: str, requests: int, blocks: int) -> dict:
    app, off = VARIANTS[name]
    env = {
        "WAYGATE_BENCH_ABLATE": ",".join(off or ()),
        "WAYGATE_AUDIT_CHAIN": "false" if name == "waygate-unchained" else "true",
    }
    return run_child(__file__, [app, key, str(requests), str(blocks)], data_dir, env)


def run(
    repeat: int, requests: int, blocks: int, variants: list[str] | None = None
) -> tuple[dict, dict]:
    """Every variant (or those named) ``repeat`` times, alternating order: the medians and
    every run."""
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="waygate-inprocess-") as tmp:
        data_dir = Path(tmp)
        env = {**os.environ, "WAYGATE_DATA_DIR": str(data_dir)}
        subprocess.run([str(BIN / "waygate"), "migrate"], check=True, capture_output=True, env=env)
        key = subprocess.run(
            [str(BIN / "waygate"), "keys", "create", "--name", "bench", "--role", "admin"],
            check=True, capture_output=True, text=True, env=env,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        names = variants or list(VARIANTS)
        for n in range(repeat):  # order reversed every other round
            for name in names if n % 2 == 0 else reversed(names):
                runs.setdefault(name, []).append(run_variant(name, data_dir, key, requests, blocks))
    table = {
        name: {
            path: {
                field: statistics.median(r[path][field] for r in results)
                for field in ("cpu_us", "wall_us")
            }
            for path in results[0]
        }
        for name, results in runs.items()
    }
    return table, runs


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, app, key, requests, blocks = sys.argv
        print(json.dumps(measure(app, key, int(requests), int(blocks))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per block")
    parser.add_argument("--blocks", type=int, default=9, help="blocks per path (best is kept)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over all variants")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "inprocess.json")
    parser.add_argument(
        "--variants",
        help="comma-separated variants to run alone, e.g. waygate,waygate-unchained (the"
        " audit chain's price: more repeats of the pair in the same time)",
    )
    args = parser.parse_args()
    variants = args.variants.split(",") if args.variants else None
    if variants and set(variants) - set(VARIANTS):
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}")
    table, runs = run(args.repeat, args.requests, args.blocks, variants)
    report(table, runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"medians": table, "runs": runs}, indent=2))
    return 0


def report(table: dict, runs: dict | None = None) -> None:
    if "floor" not in table:  # --variants: the pair alone, each repeat's ratio
        report_chain(table, runs or {})
        return
    floor = table["floor"]
    print("\nin-process, us per request (bench/inprocess.py: one thread, no network)")
    print(f"{'variant':18}" + "".join(f"{p + ' cpu':>13}{'wall':>8}" for p in PATHS))
    for name, paths in table.items():
        cells = ""
        for path in PATHS:
            r = paths.get(path)
            cells += f"{r['cpu_us']:13.0f}{r['wall_us']:8.0f}" if r else f"{'-':>13}{'-':>8}"
        print(f"{name:18}{cells}")
    print("\nfloor / variant, CPU per request (what the variant leaves of the floor's speed)")
    for name in [n for n in table if n not in ("bare", "floor")]:
        print(
            f"{name:18}"
            + "".join(f"{floor[p]['cpu_us'] / table[name][p]['cpu_us']:21.2f}" for p in PATHS)
        )
    if "waygate-unchained" in table:
        plain, chained = table["waygate-unchained"], table["waygate"]
        print(
            "audit chain, unchained / chained CPU per request:"
            + "".join(
                f" {p} {plain[p]['cpu_us'] / chained[p]['cpu_us']:.3f}" for p in ("execute", "mcp")
            )
        )
    bare = table["bare"]
    for path in ("health", "execute"):
        print(f"bare / floor {path:8} {bare[path]['cpu_us'] / floor[path]['cpu_us']:.2f}")


def report_chain(table: dict, runs: dict) -> None:
    print("\nin-process CPU us per request")
    for name, paths in table.items():
        print(f"{name:18}" + "".join(f"  {p} {r['cpu_us']:.0f}" for p, r in paths.items()))
    if {"waygate", "waygate-unchained"} <= set(runs):
        for path in ("execute", "mcp"):
            each = [
                round(plain[path]["cpu_us"] / chained[path]["cpu_us"], 3)
                for chained, plain in zip(runs["waygate"], runs["waygate-unchained"], strict=True)
            ]
            print(
                f"audit chain {path}: unchained / chained CPU, each repeat {each},"
                f" median {statistics.median(each):.3f}"
            )


if __name__ == "__main__":
    sys.exit(main())
