#!/usr/bin/env python3
"""What an Idempotency-Key costs on ``POST /mcp/execute``, in-process (as bench/inprocess.py:
the WSGI app called straight, one thread, one CPU, each case in its own process).

Cases, Waygate as shipped (SQLite in a temp data dir):
- ``plain``: no key (the baseline);
- ``first``: a new key on every request (the key is claimed, the command runs, its answer is
  stored: two more writes);
- ``replay``: the same key and request every time (one read; nothing runs, no audit row).

    .venv/bin/python bench/idempotency.py [--requests 300] [--blocks 7] [--repeat 3]

Prints CPU and wall microseconds per request (medians over the repeats of each case's best
block) and each case against ``plain``.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.inprocess import best_block, run_child  # noqa: E402

BIN = Path(sys.executable).parent
CASES = ("plain", "first", "replay")
BODY = json.dumps({"action": "echo", "params": {"message": "hello"}}).encode()


def measure(case: str, key: str, requests: int, blocks: int) -> dict:
    from werkzeug.test import EnvironBuilder

    sys.path.insert(0, str(ROOT))
    from wsgi import app

    counter = iter(range(10**9))

    def one() -> None:
        headers = {"X-API-Key": key, "Content-Type": "application/json"}
        if case == "first":
            headers["Idempotency-Key"] = f"bench-{os.getpid()}-{next(counter)}"
        elif case == "replay":
            headers["Idempotency-Key"] = "bench-replay"
        env = EnvironBuilder(path="/mcp/execute", method="POST", data=BODY, headers=headers)
        environ = env.get_environ()
        environ["wsgi.input"] = io.BytesIO(BODY)
        status: list[str] = []
        out = app(environ, lambda s, h, exc=None: status.append(s))
        b"".join(out)
        if hasattr(out, "close"):
            out.close()
        if not status[0].startswith("200"):
            raise SystemExit(f"{case}: {status[0]}")

    return best_block(one, requests, blocks)


def run_case(case: str, data_dir: Path, key: str, requests: int, blocks: int) -> dict:
    return run_child(__file__, [case, key, str(requests), str(blocks)], data_dir, {})


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, case, key, requests, blocks = sys.argv
        print(json.dumps(measure(case, key, int(requests), int(blocks))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="waygate-idempotency-") as tmp:
        data_dir = Path(tmp)
        env = {**os.environ, "WAYGATE_DATA_DIR": str(data_dir)}
        subprocess.run([str(BIN / "waygate"), "migrate"], check=True, capture_output=True, env=env)
        key = subprocess.run(
            [str(BIN / "waygate"), "keys", "create", "--name", "bench", "--role", "admin"],
            check=True, capture_output=True, text=True, env=env,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        for n in range(args.repeat):  # order reversed every other round
            for case in CASES if n % 2 == 0 else reversed(CASES):
                runs.setdefault(case, []).append(
                    run_case(case, data_dir, key, args.requests, args.blocks)
                )
    table = {
        case: {f: statistics.median(r[f] for r in results) for f in ("cpu_us", "wall_us")}
        for case, results in runs.items()
    }
    plain = table["plain"]
    print("POST /mcp/execute in-process, us per request (median of best blocks)")
    print(f"{'case':8}{'cpu':>9}{'wall':>9}{'cpu vs plain':>15}{'wall vs plain':>15}")
    for case in CASES:
        row = table[case]
        print(
            f"{case:8}{row['cpu_us']:9.0f}{row['wall_us']:9.0f}"
            f"{row['cpu_us'] - plain['cpu_us']:+15.0f}{row['wall_us'] - plain['wall_us']:+15.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
