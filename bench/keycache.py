#!/usr/bin/env python3
"""What the key cache saves on PostgreSQL, in-process: ``POST /mcp/execute`` (echo) through
the WSGI app (Flask's test client, one thread) on a throwaway cluster (bench/pg.py's
durability), blocks alternating between the cache on and every entry stale (the key read on
each request, as without the cache). Per mode: the median over rounds of the best block's
wall and CPU time per request.

    .venv/bin/python bench/keycache.py [--rounds 5] [--blocks 5] [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--blocks", type=int, default=5, help="blocks per mode and round")
    parser.add_argument("--requests", type=int, default=200, help="requests per block")
    args = parser.parse_args()

    from bench.pg import DURABLE
    from bench.run import ECHO_COMMAND, HIGH_LIMITS
    from tests.pgcluster import PgCluster
    from waygate.app import create_app
    from waygate.config import Config
    from waygate.keystore import KEY_CACHE_TTL_S, KeyStore
    from waygate.storage import PostgresStorage

    cluster = PgCluster(settings=DURABLE).start()
    try:
        url = cluster.create_database("waygate_keycache")
        storage = PostgresStorage(url)
        storage.migrate()
        key = KeyStore(storage).create("bench", "admin")[1]
        storage.close()
        limits = {
            name.removeprefix("WAYGATE_").lower(): value
            for name, value in HIGH_LIMITS.items()
            if name.startswith("WAYGATE_RATE_LIMIT_")
        }
        with tempfile.TemporaryDirectory(prefix="waygate-keycache-") as tmp:
            config = Config(
                data_dir=Path(tmp), database_url=url, housekeeping_interval_s=0, **limits
            )
            app = create_app(config)
            client = app.test_client()
            cache = app.extensions["waygate"].keys.cache
            headers = {"X-API-Key": key, "Content-Type": "application/json"}

            def block(n: int) -> tuple[float, float]:
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(n):
                    answer = client.post("/mcp/execute", data=ECHO_COMMAND, headers=headers)
                    assert answer.status_code == 200, answer.data
                return (
                    (time.perf_counter() - wall) / n * 1e6,
                    (time.process_time() - cpu) / n * 1e6,
                )

            block(300)  # warm: pools, plugins, prepared statements
            found: dict[str, list[tuple[float, float]]] = {"on": [], "stale": []}
            for n in range(args.rounds):
                for mode in ("on", "stale") if n % 2 == 0 else ("stale", "on"):
                    cache.ttl_s = KEY_CACHE_TTL_S if mode == "on" else -1.0
                    blocks = [block(args.requests) for _ in range(args.blocks)]
                    found[mode].append(min(blocks))
    finally:
        cluster.destroy()
    result = {
        mode: {
            "wall_us": round(statistics.median(b[0] for b in bests)),
            "cpu_us": round(statistics.median(b[1] for b in bests)),
            "per_round_wall_us": [round(b[0]) for b in bests],
        }
        for mode, bests in found.items()
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
