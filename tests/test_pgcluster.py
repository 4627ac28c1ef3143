"""The test run's throwaway PostgreSQL (tests/pgcluster.py): password-authenticated, loopback
only, one empty database per test, and never left running when the run that made it dies."""

import os
import subprocess
import sys
import time

import psycopg
import pytest

from tests.conftest import ROOT

# every test uses or starts a PostgreSQL cluster
pytestmark = pytest.mark.server


def test_the_cluster_wants_the_password(pg_cluster):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_cluster.url().replace(pg_cluster.password, "wrong"), connect_timeout=5)


def test_the_cluster_listens_on_loopback_only(pg_cluster):
    with pg_cluster.connect() as conn:
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == "127.0.0.1"
        assert conn.execute("SHOW fsync").fetchone()[0] == "off"


def test_each_test_gets_its_own_empty_database(pg_url, pg_database):
    other = pg_database()
    assert other != pg_url
    for url in (pg_url, other):
        with psycopg.connect(url) as conn:
            tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            assert tables.fetchone()[0] == 0


def test_a_killed_test_run_leaves_no_server_behind():
    # A run that is SIGKILLed runs no finalizer: the cluster's watchdog stops it.
    child = subprocess.run(
        [sys.executable, "-c",
         "import os, signal\nfrom tests.pgcluster import PgCluster\n"
         "c = PgCluster().start()\nprint(c.root, c.port, flush=True)\n"
         "os.kill(os.getpid(), signal.SIGKILL)"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    root, port = child.stdout.split()
    deadline = time.monotonic() + 15
    while os.path.exists(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(root)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://x:y@127.0.0.1:{port}/postgres", connect_timeout=2)
