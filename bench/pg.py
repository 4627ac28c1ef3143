"""The cost of PostgreSQL: ``POST /mcp/execute`` (echo) on one server with SQLite and one on
PostgreSQL (a cluster on this machine), in the same run, rounds alternating.

Durability is matched, not maximised: SQLite runs as shipped (WAL, synchronous=NORMAL: a
commit reaches the OS, fsync at checkpoints), PostgreSQL with fsync on and
synchronous_commit=off (a commit reaches the WAL buffers and is flushed within 200 ms; a
crash never corrupts, a power loss may lose the last fraction of a second on either).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.pgcluster import PgCluster

DURABLE = {"fsync": "on", "full_page_writes": "on", "synchronous_commit": "off"}


def postgresql_cost(rounds: int, seconds: float, data_dir: Path, key: str, bench) -> dict:
    """``bench`` is bench/run.py (its servers, wrk and constants)."""
    cluster = PgCluster(settings=DURABLE).start()
    try:
        url = cluster.create_database("waygate_bench")
        pg_dir = data_dir / "pg-host"
        pg_dir.mkdir()
        env = {**os.environ, "WAYGATE_DATA_DIR": str(pg_dir), "WAYGATE_DATABASE_URL": url}
        subprocess.run([str(bench.BIN / "waygate"), "migrate"], check=True, env=env,
                       capture_output=True)  # fmt: skip
        pg_key = subprocess.run(
            [str(bench.BIN / "waygate"), "keys", "create", "--name", "bench", "--role", "admin"],
            check=True, env=env, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        with (
            bench.waygate(data_dir) as lite,
            bench.waygate(pg_dir, env={"WAYGATE_DATABASE_URL": url}, name="pg") as pg,
        ):
            group = [
                bench.Case("sqlite", lite, "/mcp/execute", bench.ECHO_COMMAND, key),
                bench.Case("postgresql", pg, "/mcp/execute", bench.ECHO_COMMAND, pg_key),
            ]
            runs = bench.alternating(rounds, seconds, [group])
        rows = cluster.connect("waygate_bench").execute("SELECT count(*) FROM executions")
        audit_rows = rows.fetchone()[0]
    finally:
        cluster.destroy()
    summary = bench.medians(runs)
    summary["postgresql_audit_rows"] = audit_rows
    ratios = {}
    for c in (1, 16):
        ratios[f"pg_vs_sqlite_rps@{c}"] = bench.ratio_of(f"postgresql@{c}", f"sqlite@{c}")
        ratios[f"pg_vs_sqlite_p99@{c}"] = bench.ratio_of(f"postgresql@{c}", f"sqlite@{c}", "p99_ms")
    return bench.add_paired(summary, runs, ratios)


def report(p: dict) -> None:
    print("\npostgresql: /mcp/execute echo, SQLite and PostgreSQL (same machine) side by side")
    for name in ("sqlite@1", "postgresql@1", "sqlite@16", "postgresql@16"):
        r = p[name]
        print(f"  {name:<15} {r['rps']:>8.0f} req/s  p50 {r['p50_ms']:6.2f} ms"
              f"  p99 {r['p99_ms']:6.2f} ms  non-2xx {r['non_2xx']}")  # fmt: skip
    rps, p99, rows = (
        p["pg_vs_sqlite_rps@16"],
        p["pg_vs_sqlite_p99@16"],
        p["postgresql_audit_rows"],
    )
    print(f"  PostgreSQL / SQLite at 16 connections: {rps:.2f}x req/s, p99 {p99:.2f}x; {rows} rows")


def main() -> int:
    """This section alone, e.g. to compare a setting on both servers of the same run
    (``WAYGATE_AUDIT_CHAIN_DELAY_MS=0 .venv/bin/python -m bench.pg``): the environment
    reaches both."""
    import argparse
    import json
    import tempfile

    from bench import run as bench

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="waygate-bench-pg-") as parent,
        bench.fresh_data_dir(Path(parent), "sqlite") as (data_dir, key),
    ):
        results = postgresql_cost(args.rounds, args.seconds, data_dir, key, bench)
    report(results)
    print(f"  per round at 16 connections: {results['pg_vs_sqlite_rps@16_per_round']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
