"""The PostgreSQL backend's own parts: the shared SQL dialect, migrations applied once when
hosts start together, execution leases across hosts, secrets kept out of what users see, and
bounded waits when the database does not answer. Behaviour shared with SQLite is tested by
the both_backends modules (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import time

import psycopg
import pytest

from tests.conftest import BIN, free_port, run_gunicorn_once
from waygate.audit import AuditLog
from waygate.clock import isoformat
from waygate.config import Config, ConfigError
from waygate.leases import Leases
from waygate.outcomes import ExecutionStatus
from waygate.storage import PostgresStorage, Storage
from waygate.storage.dialect import translate
from waygate.storage.migrations import STATE
from waygate.storage.postgresql import redact_url

pytestmark = pytest.mark.both_backends


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (
            "SELECT a FROM t WHERE b = ? AND c IN (?, ?)",
            "SELECT a FROM t WHERE b = %s AND c IN (%s, %s)",
        ),
        ("VALUES (:key, :amount) -- :key", "VALUES (%(key)s, %(amount)s) -- %(key)s"),
        (
            "SELECT '?', 'it''s ?', \"odd?\" WHERE x LIKE '50%' AND y = ?",
            "SELECT '?', 'it''s ?', \"odd?\" WHERE x LIKE '50%%' AND y = %s",
        ),
        ("SELECT 5 % 2, now()::text", "SELECT 5 %% 2, now()::text"),
    ],
)
def test_one_sql_text_serves_both_backends(sql, expected):
    assert translate(sql) == expected


def test_a_url_shown_anywhere_never_carries_its_password():
    shown = redact_url("postgresql://waygate:s3cr3t-pw@db.example:5433/ops?sslpassword=x2")
    assert shown == "postgresql://waygate:***@db.example:5433/ops"
    assert "s3cr3t" not in shown and "x2" not in shown
    with pytest.raises(ConfigError) as refused:
        Config(database_url="mysql://root:s3cr3t-pw@db/ops").validate()
    assert "s3cr3t" not in str(refused.value) and "postgresql://" in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        Config(database_url="postgresql://u:s3cr3t-pw@db:port/ops").validate()
    assert "s3cr3t" not in str(refused.value)


def test_hosts_starting_at_once_apply_each_migration_once(pg_url, tmp_path):
    """Four `waygate migrate` processes on one empty database, released together."""
    env = {**os.environ, "WAYGATE_DATABASE_URL": pg_url, "WAYGATE_DATA_DIR": str(tmp_path)}
    procs = [
        subprocess.Popen(
            [str(BIN / "waygate"), "migrate"], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    applied = sorted(int(o.split()[1]) for o in outputs)
    assert applied == [0, 0, 0, len(STATE.migrations)], outputs  # one did all, the others nothing
    with psycopg.connect(pg_url) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM _waygate_migrations ORDER BY name")]
    assert names == STATE.names


def _accept(audit: AuditLog, command_id: str) -> None:
    audit.accept(
        command_id=command_id,
        action="sleep",
        plugin="Testing",
        key_name="ops",
        key_id=1,
        timeout_s=600,
        created_at=isoformat(),
    )


def _status(storage, command_id: str) -> tuple[str, str | None]:
    row = storage.conn.execute(
        "SELECT status, error FROM executions WHERE command_id = ?", (command_id,)
    ).fetchone()
    return row["status"], row["error"]


def test_another_host_ends_executions_whose_lease_lapsed(storage):
    _accept(AuditLog(storage, host="host-a"), "cmd_on_a")
    host_a = Leases(storage, host="host-a", lease_s=3)
    host_b = Leases(storage, host="host-b", lease_s=3)
    host_a.heartbeat()
    # B cannot see A's processes: while A renews its lease, B leaves A's execution alone
    assert host_b.sweep() == 0
    assert _status(storage, "cmd_on_a") == ("pending", None)
    # A stops renewing (its host died): past the lease, B ends the execution as failed
    storage.execute_write("UPDATE worker_leases SET renewed_at = renewed_at - 4")
    assert host_b.sweep() == 1
    status, error = _status(storage, "cmd_on_a")
    assert status == ExecutionStatus.FAILED
    assert f"pid {os.getpid()} on host-a" in error and "lease" in error


def test_a_restart_closes_only_its_own_hosts_executions(storage):
    _accept(AuditLog(storage, host="host-a"), "cmd_on_a")
    _accept(AuditLog(storage, host="host-b"), "cmd_on_b")
    assert (
        Leases(storage, host="host-b").fail_open_executions(
            "the service restarted while this command ran"
        )
        == 1
    )
    assert _status(storage, "cmd_on_a")[0] == "pending"
    assert _status(storage, "cmd_on_b")[0] == "failed"


def test_an_unreachable_database_is_a_quick_503_and_health_names_it(make_app, keys):
    """A PostgreSQL that does not answer (nothing listens on its port): requests get the
    spec's envelope with 503 and Retry-After within the connect timeout, never a hang, and
    never the URL's password."""
    url = f"postgresql://waygate:pw-never-shown@127.0.0.1:{free_port()}/waygate"
    app = make_app()
    svc = app.extensions["waygate"]
    svc.storage = svc.audit.storage = PostgresStorage(url, connect_timeout_s=1)
    svc.keys.storage = svc.storage
    client = app.test_client()
    started = time.monotonic()
    health = client.get("/health")
    assert time.monotonic() - started < 3
    assert health.status_code == 503
    assert health.get_json()["checks"]["database"].startswith("failed:")
    assert "pw-never-shown" not in health.get_data(as_text=True)
    started = time.monotonic()
    refused = client.post("/mcp/execute", json={"action": "test"}, headers={"X-API-Key": keys.user})
    assert time.monotonic() - started < 3
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert refused.get_json()["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert "pw-never-shown" not in refused.get_data(as_text=True)
    svc.storage.close()


@pytest.mark.server
def test_a_bad_database_url_stops_the_service_before_it_starts(tmp_path):
    url = f"postgresql://waygate:pw-never-shown@127.0.0.1:{free_port()}/waygate"
    done = run_gunicorn_once(
        {
            "WAYGATE_DATA_DIR": str(tmp_path),
            "WAYGATE_DATABASE_URL": url,
            "WAYGATE_DB_CONNECT_TIMEOUT_S": "1",
        },
        timeout=60,
    )
    assert done.returncode != 0
    assert "cannot use the database postgresql://waygate:***@127.0.0.1" in done.stderr
    assert "pw-never-shown" not in done.stderr + done.stdout


MALFORMED_URLS = [
    # a bare % in the password: libpq's "invalid percent-encoded token" quoted it
    "postgresql://waygate:Pa%zzSECRET77@127.0.0.1:{port}/waygate",
    # an unencoded @ in the password: libpq's "failed to resolve host" quoted the rest of it
    "postgresql://waygate:Pa@ssSECRET88@127.0.0.1:{port}/waygate",
    # an unencoded / in the password: libpq read the password's start as the port
    "postgresql://waygate:9999/SECRET99@127.0.0.1:{port}/waygate",
    "postgresql://127.0.0.1:{port}/waygate?password=Pa%zzSECRET66",
]


@pytest.mark.server
@pytest.mark.sqlite_only
@pytest.mark.parametrize("url", MALFORMED_URLS)
def test_a_malformed_database_url_is_refused_without_showing_its_password(url, tmp_path):
    url = url.format(port=free_port())
    secret = url.partition("SECRET")[2][:2]
    with pytest.raises(ConfigError) as refused:
        Config.from_env({"WAYGATE_DATABASE_URL": url})
    message = str(refused.value)
    assert message.startswith("WAYGATE_DATABASE_URL: ") and "percent-encode" in message
    assert "SECRET" not in message and secret not in message
    env = {**os.environ, "WAYGATE_DATA_DIR": str(tmp_path), "WAYGATE_DATABASE_URL": url}
    migrate = subprocess.run(
        [str(BIN / "waygate"), "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert migrate.returncode == 2
    assert migrate.stderr == f"waygate: configuration error: {message}\n"
    served = run_gunicorn_once({"WAYGATE_DATA_DIR": str(tmp_path), "WAYGATE_DATABASE_URL": url})
    assert served.returncode != 0
    assert f"waygate: configuration error: {message}" in served.stderr
    assert "SECRET" not in served.stderr + served.stdout


def test_a_well_formed_database_url_with_encoded_characters_is_accepted():
    url = "postgresql://waygate:P%40s%25s%2Fw%3Ad@[::1]:5432/waygate?sslmode=require"
    assert Config.from_env({"WAYGATE_DATABASE_URL": url}).database_url == url


def test_without_redis_the_limits_of_hosts_on_one_database_are_one(
    make_app, pg_migrated_url, tmp_path
):
    """Two hosts (own data dirs) on one PostgreSQL and no limit storage set: the per-key
    limit counts their requests together."""
    from waygate.keystore import KeyStore

    storage = PostgresStorage(pg_migrated_url)
    _, key = KeyStore(storage).create("ops", "user")
    storage.close()
    hosts = [
        make_app(
            database_url=pg_migrated_url, data_dir=tmp_path / name, rate_limit_execute="3/minute"
        ).test_client()
        for name in ("a", "b")
    ]
    body = {"action": "test"}
    answers = [
        hosts[n % 2].post("/mcp/execute", json=body, headers={"X-API-Key": key}).status_code
        for n in range(4)
    ]
    assert answers == [200, 200, 200, 429]


def test_every_backend_offers_the_whole_storage_interface(storage):
    assert isinstance(storage, Storage)


def test_a_backup_is_sqlites_and_postgresql_is_pointed_to_pg_dump(
    storage, runner, backend, tmp_path
):
    copy = tmp_path / "copy.db"
    code, out, err = runner("backup", str(copy))
    if backend == "sqlite":
        assert (code, copy.is_file()) == (0, True), err
        assert out.strip() == f"backed up {storage.describe()} to {copy}"
    else:
        assert (code, copy.exists()) == (1, False)
        assert "back it up with pg_dump" in err and "Traceback" not in err


def test_a_read_on_a_connection_the_server_dropped_is_answered_from_another(pg_migrated_url):
    """Connections back in the pool within a second are not checked on checkout (a round trip
    per statement under load); a read that meets one the server has dropped since (a restart,
    an administrator) is repeated once on another connection instead of failing."""
    storage = PostgresStorage(pg_migrated_url, pool_size=1)
    try:
        assert storage.conn.execute("SELECT 1").fetchone()[0] == 1  # the pool's connection
        with psycopg.connect(pg_migrated_url, autocommit=True) as admin:
            dropped = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'waygate' AND pid <> pg_backend_pid()"
            ).fetchone()[0]
        assert dropped == 1
        assert storage.conn.execute("SELECT count(*) FROM _waygate_migrations").fetchone()[0] > 0
    finally:
        storage.close()
