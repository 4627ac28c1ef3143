#!/usr/bin/env python3
"""The rate-limit check alone, in-process: ``RateLimiter.check`` as a keyed /mcp/execute
request runs it (the hit on the key's execute counter, the read of the refused-key budget),
CPU time per check, on each one-host storage:

    .venv/bin/python bench/limit_check.py [--checks 20000] [--repeat 5]

``table`` is the default without WAYGATE_DATABASE_URL (waygate/limit_table.py), ``sqlite`` the
file it replaced (still used when configured, and as the table's overflow). Prints the best
of ``--repeat`` blocks per storage, alternating.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def storages(data_dir: Path) -> dict[str, str]:
    return {
        "table": f"table:///{data_dir / 'ratelimits.table'}",
        "sqlite": f"sqlite:///{data_dir / 'ratelimits.db'}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from flask import Flask, g

    from waygate.config import Config
    from waygate.keys import ApiKey
    from waygate.web.limiter import RateLimiter

    with tempfile.TemporaryDirectory(prefix="waygate-limit-") as tmp:
        limiters = {
            name: RateLimiter(
                Config(data_dir=Path(tmp), ratelimit_storage_uri=uri).replace(
                    rate_limit_execute="1000000000/minute"
                )
            )
            for name, uri in storages(Path(tmp)).items()
        }
        app = Flask(__name__)

        @app.post("/mcp/execute")
        def execute():
            return ""

        for limiter in limiters.values():
            limiter._by_endpoint["execute"] = (limiter.groups["execute"], "execute")
        key = ApiKey(id=1, name="bench", role="user", created_at="2026-12-07T00:00:00Z")
        best: dict[str, float] = {name: float("inf") for name in limiters}
        with app.test_request_context("/mcp/execute", method="POST"):
            g.api_key = key
            for _ in range(args.repeat):
                for name, limiter in limiters.items():
                    start = time.process_time()
                    for _ in range(args.checks):
                        limiter.check()
                    used = (time.process_time() - start) / args.checks * 1e6
                    best[name] = min(best[name], used)
        for name, us in best.items():
            print(f"{name:8} {us:6.1f} us per check")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
