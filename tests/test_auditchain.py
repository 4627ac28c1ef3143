"""The tamper-evident audit (issue 31): the hash chain over executions and their events, its
signed checkpoints, `waygate audit verify` on an intact and on a tampered database (SQLite
file and PostgreSQL alike), pruning that keeps it verifiable, the export and the audit file."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from datetime import timedelta

import pytest

from tests.test_approvals import decide, events, request_wipe, until_ended
from waygate.auditchain import EVENT_FIELDS, EXECUTION_FIELDS, checkpoint_message
from waygate.clock import isoformat, utcnow

pytestmark = pytest.mark.both_backends

ECHO = {"action": "echo", "params": {"message": "s3cret-value"}}


@pytest.fixture
def client(plugin_dist, make_app):
    return make_app().test_client()


def services_of(client):
    return client.application.extensions["waygate"]


def chained(client) -> None:
    """Chain now what the deferred chain would within its delay (WAYGATE_AUDIT_CHAIN_DELAY_MS;
    its own thread is tested by test_the_deferred_chain_chains_within_its_delay_unasked)."""
    assert services_of(client).audit.chain.seal_pending()


def run(client, keys, body=ECHO, n=1) -> list[str]:
    """The command ids of ``n`` calls, chained, in their chain's order (the order they
    finished, to the millisecond; ties by command id)."""
    ids = []
    for _ in range(n):
        response = client.post("/mcp/execute", json=body, headers=keys.headers())
        assert response.status_code in (200, 202), response.get_json()
        ids.append(response.get_json()["command_id"])
    chained(client)
    conn = services_of(client).storage.conn
    seqs = {
        command_id: seq
        for command_id, seq in conn.execute("SELECT command_id, chain_seq FROM executions")
    }
    return sorted(ids, key=lambda command_id: seqs[command_id] or 0)


def approved_flow(client, keys) -> str:
    """An execution held for approval, approved, run: four events and its final record."""
    command_id = request_wipe(client, keys)
    assert decide(client, keys.headers("admin"), command_id).status_code == 202
    until_ended(client, keys, command_id)
    for _ in range(500):  # its last event follows the final record
        if "executed" in [e["event"] for e in events(client, keys, command_id)]:
            chained(client)
            return command_id
        time.sleep(0.01)
    raise AssertionError("no executed event")


def until(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"not within {seconds} s: {predicate}"
        time.sleep(0.01)


def write(storage, sql, params=()):
    with storage.write() as tx:
        tx.execute(sql, params)


def verify(runner, *args):
    code, out, err = runner("audit", "verify", *args)
    return code, out + err


# -- intact ----------------------------------------------------------------------------------


def test_an_intact_audit_verifies_with_a_one_line_summary(client, keys, runner):
    run(client, keys, n=3)
    approved_flow(client, keys)
    services_of(client).audit.chain.checkpoint(force=True)
    code, out = verify(runner)
    assert code == 0, out
    assert out.startswith("audit intact: ") and out.count("\n") == 1
    # 3 echoes, the approved execution, its requested/approved/executed events
    assert "(4 executions, 3 events)" in out and "1 signed checkpoints verified" in out


def test_each_entry_is_recomputable_from_the_documented_canonical_form(client, keys, db):
    """What docs/operations.md promises a verifier in another language: sorted-key compact
    JSON of the row's columns, hashed with the previous entry's hash."""
    run(client, keys, n=2)
    approved_flow(client, keys)
    previous = "0" * 64
    for entry in db("SELECT * FROM audit_chain ORDER BY seq"):
        if entry["kind"] == "execution":
            table, key, names = "executions", "command_id", EXECUTION_FIELDS
            ref = entry["command_id"]
        else:
            table, key, names = "execution_events", "id", EVENT_FIELDS
            ref = entry["event_id"]
        (row,) = db(f"SELECT * FROM {table} WHERE {key} = ?", (ref,))  # noqa: S608
        content = {"kind": entry["kind"], "row": {n: row[n] for n in names}, "seq": entry["seq"]}
        text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        previous = hashlib.sha256(bytes.fromhex(previous) + text.encode()).hexdigest()
        assert previous == entry["hash"], entry
    assert len(db("SELECT * FROM audit_chain")) == 6


def test_the_export_has_events_principal_arguments_hash_and_chain_but_no_secret(
    client, keys, runner
):
    (echo,) = run(client, keys)
    wipe = approved_flow(client, keys)
    code, out, err = runner("audit", "export", "--format", "jsonl")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["command_id"] for line in lines] == [echo, wipe]
    first, second = lines
    canonical = json.dumps(ECHO["params"], sort_keys=True, separators=(",", ":"))
    assert first["arguments_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert first["principal"] and first["chain"]["seq"] >= 1 and len(first["chain"]["hash"]) == 64
    assert [e["event"] for e in second["events"]] == ["requested", "approved", "executed"]
    assert all(e["chain"]["hash"] for e in second["events"])
    assert "s3cret-value" not in out
    # the window: created before the first's creation excludes everything
    code, out, _ = runner("audit", "export", "--until", first["created_at"])
    assert code == 0 and out == ""
    code, out, _ = runner("audit", "export", "--since", second["created_at"])
    assert [json.loads(line)["command_id"] for line in out.splitlines()] == [wipe]


@pytest.mark.sqlite_only
@pytest.mark.parametrize("option", ["--since", "--until"])
def test_a_bad_time_is_a_clear_usage_error(runner, option):
    for command in ("export", "verify"):
        args = ["audit", command, option, "yesterday"]
        code, out, err = runner(*args)
        assert code == 2, (command, out, err)
        if command == "export":
            assert f"Invalid value for '{option}'" in err and "ISO 8601" in err
        assert "Traceback" not in err


# -- tampered --------------------------------------------------------------------------------


def test_an_edited_result_names_its_execution(client, keys, runner, storage):
    first, edited, _ = run(client, keys, n=3)
    write(storage, "UPDATE executions SET error = 'nothing to see' WHERE command_id = ?", (edited,))
    code, out = verify(runner)
    assert code == 1
    assert out.startswith(f"audit BROKEN: execution {edited} (entry 2) was altered"), out
    assert first not in out


def test_an_edited_event_names_its_execution(client, keys, runner, storage):
    command_id = approved_flow(client, keys)
    write(
        storage,
        "UPDATE execution_events SET key_name = 'someone-else' WHERE event = 'approved'",
    )
    code, out = verify(runner)
    assert code == 1 and f"of execution {command_id}" in out and "was altered" in out, out


def test_a_deleted_row_is_reported_missing(client, keys, runner, storage):
    _, gone, _ = run(client, keys, n=3)
    write(storage, "DELETE FROM executions WHERE command_id = ?", (gone,))
    code, out = verify(runner)
    assert code == 1
    assert f"execution {gone} (entry 2) is missing: its row was deleted" in out


def test_a_row_deleted_with_its_entry_is_reported_missing(client, keys, runner, storage):
    _, gone, _ = run(client, keys, n=3)
    write(storage, "DELETE FROM executions WHERE command_id = ?", (gone,))
    write(storage, "DELETE FROM audit_chain WHERE command_id = ?", (gone,))
    code, out = verify(runner)
    assert code == 1 and "entries 2 to 2 are missing" in out


def test_the_newest_rows_deleted_are_reported_missing(client, keys, runner, storage):
    *_, last = run(client, keys, n=3)
    write(storage, "DELETE FROM executions WHERE command_id = ?", (last,))
    write(storage, "DELETE FROM audit_chain WHERE command_id = ?", (last,))
    code, out = verify(runner)
    assert code == 1 and "entries 3 to 3 are missing: the newest rows" in out


def test_the_newest_rows_deleted_with_the_head_rewound_fail_the_checkpoint(
    client, keys, runner, storage, db
):
    *_, last = run(client, keys, n=3)
    services_of(client).audit.chain.checkpoint(force=True)
    write(storage, "DELETE FROM executions WHERE command_id = ?", (last,))
    write(storage, "DELETE FROM audit_chain WHERE command_id = ?", (last,))
    (second,) = db("SELECT hash FROM audit_chain WHERE seq = 2")
    write(storage, "UPDATE audit_chain_head SET seq = 2, hash = ?", (second["hash"],))
    code, out = verify(runner)
    assert code == 1 and "the checkpoint at entry 3 is past the chain's end" in out, out


def test_swapped_rows_are_detected(client, keys, runner, storage):
    a, b, _ = run(client, keys, n=3)
    for old, new in ((a, "swap"), (b, a), ("swap", b)):
        write(storage, "UPDATE executions SET command_id = ? WHERE command_id = ?", (new, old))
    code, out = verify(runner)
    assert code == 1 and f"execution {a} is out of order" in out, out


def test_reordered_entries_are_detected(client, keys, runner, storage):
    run(client, keys, n=3)
    for old, new in ((1, 100), (2, 1), (100, 2)):
        write(storage, "UPDATE audit_chain SET seq = ? WHERE seq = ?", (new, old))
    code, out = verify(runner)
    assert code == 1 and "is out of order" in out, out


def test_a_rewritten_chain_fails_its_signed_checkpoint(client, keys, runner, storage, db):
    """Someone who edits a row and recomputes every hash after it is caught by the
    checkpoint signed over the old hashes."""
    from waygate.auditchain import canonical, link

    _, edited, _ = run(client, keys, n=3)
    services_of(client).audit.chain.checkpoint(force=True)
    write(storage, "UPDATE executions SET status = 'failed' WHERE command_id = ?", (edited,))
    previous = "0" * 64
    for entry in db("SELECT * FROM audit_chain ORDER BY seq"):
        (row,) = db("SELECT * FROM executions WHERE command_id = ?", (entry["command_id"],))
        previous = link(previous, canonical(entry["seq"], "execution", row))
        write(storage, "UPDATE audit_chain SET hash = ? WHERE seq = ?", (previous, entry["seq"]))
    write(storage, "UPDATE audit_chain_head SET hash = ?", (previous,))
    code, out = verify(runner)
    assert code == 1 and "the checkpoint at entry 3 does not match the chain" in out, out


def test_a_checkpoint_with_an_edited_hash_is_forged(client, keys, runner, storage):
    run(client, keys, n=2)
    services_of(client).audit.chain.checkpoint(force=True)
    write(storage, "UPDATE audit_checkpoints SET hash = ?", ("f" * 64,))
    code, out = verify(runner)
    assert code == 1
    assert "the checkpoint at entry 2 has a signature that does not verify" in out, out


def test_a_checkpoint_signed_by_another_key_is_not_trusted(
    client, keys, runner, storage, db, tmp_path
):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    run(client, keys, n=2)
    services_of(client).audit.chain.checkpoint(force=True)
    (checkpoint,) = db("SELECT * FROM audit_checkpoints")
    other = Ed25519PrivateKey.generate()
    raw = other.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    message = checkpoint_message(checkpoint["seq"], checkpoint["hash"], checkpoint["at"])
    write(
        storage,
        "UPDATE audit_checkpoints SET public_key = ?, signature = ?",
        (base64.b64encode(raw).decode(), base64.b64encode(other.sign(message)).decode()),
    )
    code, out = verify(runner)
    assert code == 1 and "which this verifier does not trust" in out, out
    # the operator who knows that key trusts it explicitly
    trusted = tmp_path / "other.pub"
    trusted.write_text(base64.b64encode(raw).decode())
    code, out = verify(runner, "--trust", str(trusted))
    assert code == 0, out


# -- pruning ---------------------------------------------------------------------------------


def test_pruning_past_the_retention_keeps_the_chain_verifiable(client, keys, runner, db):
    services = services_of(client)
    old = isoformat(utcnow() - timedelta(days=30))
    for n in range(30):
        services.audit.record(
            command_id=f"cmd_old_{n:03d}",
            action="echo",
            plugin="Core",
            key_name="k",
            mode="sync",
            status="success",
            duration_ms=1,
            error=None,
            timeout_s=30,
            created_at=old,
            started_at=old,
        )
    kept = run(client, keys, n=3)
    approved_flow(client, keys)
    assert services.housekeeper.retention.prune(batch=7) == 30
    assert {r["command_id"] for r in db("SELECT command_id FROM executions")} >= set(kept)
    assert not db("SELECT * FROM executions WHERE command_id LIKE 'cmd_old_%'")
    code, out = verify(runner)
    assert code == 0, out
    assert "after entry 30 " in out and "(4 executions, 3 events)" in out
    # and again: nothing more to prune, still intact
    assert services.housekeeper.retention.prune() == 0
    assert verify(runner)[0] == 0


def test_pruning_keeps_a_tampered_prefix_and_signs_nothing_over_it(client, keys, runner, storage):
    services = services_of(client)
    old = isoformat(utcnow() - timedelta(days=30))
    for n in range(5):
        services.audit.record(
            command_id=f"cmd_old_{n}", action="echo", plugin="Core", key_name="k", mode="sync",
            status="success", duration_ms=1, error=None, timeout_s=30, created_at=old,
            started_at=old,
        )  # fmt: skip
    chained(client)
    write(storage, "UPDATE executions SET error = 'hidden' WHERE command_id = 'cmd_old_2'")
    assert services.housekeeper.retention.prune() == 0
    code, out = verify(runner)
    assert code == 1 and "execution cmd_old_2 (entry 3) was altered" in out, out


@pytest.mark.sqlite_only
def test_pruning_to_the_budget_keeps_the_chain_verifiable(make_app, runner):
    services = services_of(make_app(audit_max_bytes=2 * 1024 * 1024).test_client())
    for n in range(400):
        services.audit.record(
            command_id=f"cmd_{n:05d}",
            action="echo",
            plugin="Core",
            key_name="k",
            mode="sync",
            status="failed",
            duration_ms=1,
            error="x" * 10_000,
            timeout_s=30,
            created_at=isoformat(),
            started_at=None,
        )
    assert services.audit.chain.seal_pending()
    assert services.housekeeper.retention.prune_to_budget() > 0
    assert services.audit.get("cmd_00000") is None and services.audit.get("cmd_00399")
    code, out = verify(runner)
    assert code == 0 and "up to 400" in out, out


@pytest.mark.sqlite_only
def test_pruning_to_the_budget_never_takes_a_row_that_waits_for_its_entry(
    plugin_dist, make_app, runner, tmp_path
):
    """Rows finished since the chain began and not chained yet (the deferred batch's moment)
    are not pruned ahead of it: they would be gone from the chain and the audit file
    without a trace. The oldest of the chain goes instead."""
    audit_log = tmp_path / "audit.jsonl"
    services = services_of(
        make_app(
            audit_max_bytes=2 * 1024 * 1024, audit_log=str(audit_log), audit_chain_delay_ms=5000
        ).test_client()
    )

    def record(command_id, error):
        services.audit.record(
            command_id=command_id, action="echo", plugin="Core", key_name="k", mode="sync",
            status="failed", duration_ms=1, error=error, timeout_s=30, created_at=isoformat(),
            started_at=None,
        )  # fmt: skip

    for n in range(300):  # the chained history that fills the budget
        record(f"cmd_old_{n:05d}", "x" * 10_000)
    assert services.audit.chain.seal_pending()
    for n in range(3):  # just answered, waiting for their batch
        record(f"cmd_new_{n}", "y")
    assert services.housekeeper.retention.prune_to_budget() > 0
    assert all(services.audit.get(f"cmd_new_{n}") for n in range(3))
    assert services.audit.get("cmd_old_00000") is None  # the chain's oldest went
    assert services.audit.chain.seal_pending()
    assert all(f"cmd_new_{n}" in audit_log.read_text() for n in range(3))
    code, out = verify(runner)
    assert code == 0 and "not yet chained" not in out, out


# -- what is chained later -------------------------------------------------------------------


def test_executions_closed_by_the_sweep_are_chained_by_the_housekeeping(
    client, keys, runner, storage
):
    services = services_of(client)
    services.audit.accept(
        command_id="cmd_orphan", action="echo", plugin="Core", key_name="k", timeout_s=30,
        created_at=isoformat(),
    )  # fmt: skip
    assert services.leases.fail_open_executions("shutdown") == 1
    code, out = verify(runner)
    assert code == 0 and "1 finished rows not yet chained" in out, out
    services.housekeeper.run_once(prune=False)
    code, out = verify(runner)
    assert code == 0 and "not yet chained" not in out and "(1 executions" in out, out


# -- a refused chain write -------------------------------------------------------------------

_REFUSE = {
    "sqlite": [
        "CREATE TRIGGER refuse BEFORE INSERT ON audit_chain"
        " BEGIN SELECT RAISE(ABORT, 'the chain is read-only'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN RAISE EXCEPTION 'the chain is read-only'; END $$",
        "CREATE TRIGGER refuse BEFORE INSERT ON audit_chain FOR EACH ROW EXECUTE FUNCTION refuse()",
    ],
}


def test_a_refused_chain_write_fails_the_request_and_records_nothing_half(
    plugin_dist, make_app, keys, storage, db, backend, runner
):
    """With the chain in the row's own transaction (WAYGATE_AUDIT_CHAIN_DELAY_MS=0)."""
    client = make_app(audit_chain_delay_ms=0).test_client()
    run(client, keys)
    for statement in _REFUSE[backend]:
        write(storage, statement)
    response = client.post("/mcp/execute", json=ECHO, headers=keys.headers())
    assert response.status_code >= 500
    assert response.get_json()["error"]["code"] in ("SERVICE_UNAVAILABLE", "INTERNAL_ERROR")
    assert len(db("SELECT * FROM executions")) == 1  # the row went with its chain entry
    assert verify(runner)[0] == 0


def test_a_refused_deferred_chain_write_loses_nothing_and_is_chained_once_it_is_taken(
    client, keys, storage, db, backend, runner
):
    """The default: the record is committed before the answer, its entry in a later batch;
    a batch the database refuses leaves the rows as they were, for the next one."""
    run(client, keys)
    for statement in _REFUSE[backend]:
        write(storage, statement)
    response = client.post("/mcp/execute", json=ECHO, headers=keys.headers())
    assert response.status_code == 200
    command_id = response.get_json()["command_id"]
    assert not services_of(client).audit.chain.seal_pending()  # refused: logged, retried
    assert [r["chain_seq"] for r in db(
        "SELECT chain_seq FROM executions WHERE command_id = ?", (command_id,)
    )] == [None]  # fmt: skip
    code, out = verify(runner)
    assert code == 0 and "1 finished rows not yet chained" in out, out
    write(storage, "DROP TRIGGER refuse" + (" ON audit_chain" if backend == "postgresql" else ""))
    chained(client)
    code, out = verify(runner)
    assert code == 0 and "(2 executions, 0 events)" in out and "not yet" not in out, out


def test_the_deferred_chain_chains_within_its_delay_unasked(client, keys, db):
    """Nobody calls seal_pending: the process's own thread chains what it wrote."""
    ids = []
    for _ in range(3):
        response = client.post("/mcp/execute", json=ECHO, headers=keys.headers())
        ids.append(response.get_json()["command_id"])
    began = time.monotonic()
    until(lambda: len(db("SELECT 1 FROM executions WHERE chain_seq IS NULL")) == 0)
    assert time.monotonic() - began < 5
    chain = {r["command_id"]: r["seq"] for r in db("SELECT seq, command_id FROM audit_chain")}
    assert sorted(chain) == sorted(ids) and sorted(chain.values()) == [1, 2, 3]
    rows = db("SELECT command_id, chain_seq FROM executions")
    assert {r["command_id"]: r["chain_seq"] for r in rows} == chain


# -- several writers -------------------------------------------------------------------------


def test_two_instances_writing_at_once_make_one_verifiable_chain(
    plugin_dist, make_app, keys, runner, db, tmp_path, monkeypatch
):
    """Two app instances (two hosts on PostgreSQL; two processes' worth of connections on
    SQLite) each with four threads: the database orders the chain. Each signs checkpoints
    with its own key, which the verifier is told to trust."""
    hosts = [
        make_app(
            instance_id=f"host-{n}",
            rate_limit_execute="10000/minute",
            audit_signing_key=str(tmp_path / f"host-{n}.key"),
        ).test_client()
        for n in range(2)
    ]
    failures = []

    def hammer(client):
        try:
            for n in range(15):  # sync records and async closings: both lock the head first
                body = {**ECHO, "async": True} if n % 2 else ECHO
                response = client.post("/mcp/execute", json=body, headers=keys.headers())
                assert response.status_code in (200, 202), response.get_json()
        except Exception as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=hammer, args=(hosts[n % 2],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    for _ in range(1000):
        if not db("SELECT 1 FROM executions WHERE status IN ('pending', 'running')"):
            break
        time.sleep(0.01)
    chained(hosts[0])  # either host chains what both wrote
    assert [r["n"] for r in db("SELECT count(*) AS n FROM audit_chain")] == [120]
    chains = [services_of(host).audit.chain for host in hosts]
    assert chains[0].checkpoint(force=True) == 120
    run(hosts[1], keys)
    assert chains[1].checkpoint(force=True) == 121
    code, out = verify(runner)
    assert code == 1 and "which this verifier does not trust" in out, out
    trusted = ",".join(chain.signer.public_key() for chain in chains)
    monkeypatch.setenv("WAYGATE_AUDIT_TRUSTED_KEYS", trusted)
    code, out = verify(runner)
    assert code == 0 and "(121 executions, 0 events), 2 signed checkpoints" in out, out


# -- the admin endpoint and the metric -------------------------------------------------------


def test_the_admin_endpoint_verifies_and_sets_the_metric(client, keys, storage):
    run(client, keys, n=2)
    assert client.post("/audit/verify", headers=keys.headers()).status_code == 403
    body = client.post("/audit/verify", headers=keys.headers("admin")).get_json()
    assert body["intact"] is True and body["executions"] == 2
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "waygate_audit_broken 0.0" in metrics
    write(storage, "UPDATE executions SET error = 'x'")
    body = client.post("/audit/verify", headers=keys.headers("admin")).get_json()
    assert body["intact"] is False and "was altered" in body["problems"][0]
    assert "waygate_audit_broken 1.0" in client.get("/metrics").get_data(as_text=True)


# -- the audit file --------------------------------------------------------------------------


@pytest.mark.sqlite_only
def test_the_audit_file_gets_a_line_per_entry_after_the_commit(
    plugin_dist, make_app, keys, tmp_path
):
    path = tmp_path / "audit.jsonl"
    client = make_app(audit_log=str(path)).test_client()
    (echo,) = run(client, keys)
    wipe = approved_flow(client, keys)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    # the events are chained in their own transactions, the final record within the
    # deferred chain's delay: after the event that says it ran
    assert [(line["type"], line["command_id"]) for line in lines] == [
        ("execution", echo),
        ("event", wipe),
        ("event", wipe),
        ("event", wipe),
        ("execution", wipe),
    ]
    assert [line["chain"]["seq"] for line in lines] == [1, 2, 3, 4, 5]
    assert "s3cret-value" not in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.sqlite_only
def test_the_audit_file_rotates_and_follows_logrotate_without_losing_a_line(
    plugin_dist, make_app, keys, tmp_path
):
    path = tmp_path / "audit.jsonl"
    client = make_app(audit_log=str(path), audit_log_max_bytes=4096).test_client()
    ids = run(client, keys, n=20)  # ~900 bytes a line: rotated every few lines
    path.rename(tmp_path / "moved-by-logrotate.jsonl")  # logrotate's create mode
    ids += run(client, keys, n=3)
    files = [path, tmp_path / "moved-by-logrotate.jsonl", *tmp_path.glob("audit.jsonl.*")]
    written = [
        json.loads(line)["command_id"] for file in files for line in file.read_text().splitlines()
    ]
    assert sorted(written) == sorted(ids)
    assert len(list(tmp_path.glob("audit.jsonl.[0-9]"))) >= 2
    assert [json.loads(line)["command_id"] for line in path.read_text().splitlines()] == ids[-3:]


# -- the housekeeping's own verification -------------------------------------------------------


@pytest.mark.sqlite_only
def test_the_housekeeping_verifies_a_bounded_stretch_a_round(
    plugin_dist, make_app, keys, storage, data_dir
):
    client = make_app(audit_verify_entries=3).test_client()
    housekeeper = services_of(client).housekeeper
    run(client, keys, n=5)
    before = gauges(client).get("waygate_audit_verified_timestamp_seconds")
    housekeeper.run_once(prune=False)  # entries 1-3: not at the head yet, nothing reported
    assert gauges(client).get("waygate_audit_verified_timestamp_seconds") == before
    housekeeper.run_once(prune=False)  # 4-5: the head, intact
    assert gauges(client)["waygate_audit_verified_timestamp_seconds"] != before
    assert gauges(client)["waygate_audit_broken"] == 0.0
    assert oct((data_dir / "audit-signing.key").stat().st_mode & 0o777) == "0o600"
    write(storage, "UPDATE executions SET error = 'x' WHERE chain_seq = 1")
    housekeeper.run_once(prune=False)  # on from 5: the edit is behind it
    assert gauges(client)["waygate_audit_broken"] == 0.0
    housekeeper.chain.check()  # a whole verification finds it
    assert gauges(client)["waygate_audit_broken"] == 1.0


def gauges(client) -> dict[str, float]:
    text = client.get("/metrics").get_data(as_text=True)
    return {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("waygate_audit_")
    }


@pytest.mark.sqlite_only
def test_the_audit_file_of_several_workers_loses_and_mixes_no_line(server_factory, keys, tmp_path):
    """Two gunicorn workers append at once while the file is rotated by size and moved away
    by "logrotate": every execution is one whole line in one of the files, once."""
    import requests

    path = tmp_path / "audit.jsonl"
    server = server_factory(
        workers=2,
        WAYGATE_AUDIT_LOG=str(path),
        WAYGATE_AUDIT_LOG_MAX_BYTES="40000",
        WAYGATE_RATE_LIMIT_EXECUTE="10000/minute",
    )
    answered: list[str] = []
    moved = threading.Event()

    def hammer(n: int) -> None:
        with requests.Session() as session:
            for i in range(25):
                response = session.post(
                    server.url + "/mcp/execute", json=ECHO, headers=keys.headers(), timeout=10
                )
                assert response.status_code == 200, response.text
                answered.append(response.json()["command_id"])
                if n == 0 and i == 12:
                    until(path.exists)  # the first batch is chained within 200 ms
                    path.rename(tmp_path / "moved-by-logrotate.jsonl")
                    moved.set()

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert moved.is_set() and len(answered) == 200

    def written_lines() -> list[str]:
        try:
            files = tmp_path.glob("*.jsonl*")
            return [line for file in files for line in file.read_text().splitlines()]
        except FileNotFoundError:  # rotated while read: read again
            return []

    def written() -> list[str]:  # each line a whole JSON object
        return sorted(json.loads(line)["command_id"] for line in written_lines())

    until(lambda: len(written()) >= 200)  # the last batch is chained within 200 ms
    assert written() == sorted(answered)  # every execution once, none lost
    assert list(tmp_path.glob("audit.jsonl.[0-9]"))  # rotated by size too


@pytest.mark.sqlite_only
def test_the_export_pages_through_ties_without_losing_or_repeating_a_row(
    make_app, runner, monkeypatch
):
    from waygate import auditchain

    monkeypatch.setattr(auditchain, "_BATCH", 7)  # pages of 7: ties straddle the pages
    services = services_of(make_app().test_client())
    for n in range(40):
        services.audit.record(
            command_id=f"cmd_{(n * 7919) % 40:03d}",
            action="echo",
            plugin="Core",
            key_name="k",
            mode="sync",
            status="success",
            duration_ms=1,
            error=None,
            timeout_s=30,
            created_at=f"2026-01-01T00:00:0{n // 10}.000Z",  # ten rows a moment
            started_at=None,
        )
    code, out, err = runner("audit", "export")
    assert code == 0, err
    exported = [json.loads(line)["command_id"] for line in out.splitlines()]
    assert sorted(exported) == sorted(set(exported)) and len(exported) == 40
    code, out, _ = runner("audit", "export", "--since", "2026-01-01T00:00:01Z")
    assert len(out.splitlines()) == 30


def test_pruning_one_execution_at_a_time_keeps_the_chain_verifiable(client, keys, runner):
    """A prune that stops at the first entry keeps it as the anchor of its checkpoint, and
    the next prune starts there (before: 'cmd_... (entry 1) is missing')."""
    run(client, keys, n=3)
    chain = services_of(client).audit.chain
    for _ in range(2):
        end = chain.prunable_prefix(executions=1)
        assert end is not None and chain.prune_prefix(end) == 1
        code, out = verify(runner)
        assert code == 0, out


def test_deleted_checkpoints_and_a_rewritten_chain_are_caught_by_the_signing_schedule(
    client, keys, runner, storage, db, monkeypatch
):
    """Someone with write access deletes every checkpoint, edits a row and recomputes the
    chain and head: no signature is left to contradict it, but a chain far longer than the
    checkpoint spacing without one is reported (red team: it verified as intact)."""
    from waygate.auditchain import canonical, link

    monkeypatch.setenv("WAYGATE_AUDIT_CHECKPOINT_ENTRIES", "1")
    _, edited, *_ = run(client, keys, n=12)
    services_of(client).audit.chain.checkpoint(force=True)
    assert verify(runner)[0] == 0
    write(storage, "DELETE FROM audit_checkpoints")
    write(storage, "UPDATE executions SET status = 'failed' WHERE command_id = ?", (edited,))
    previous = "0" * 64
    for entry in db("SELECT * FROM audit_chain ORDER BY seq"):
        (row,) = db("SELECT * FROM executions WHERE command_id = ?", (entry["command_id"],))
        previous = link(previous, canonical(entry["seq"], "execution", row))
        write(storage, "UPDATE audit_chain SET hash = ? WHERE seq = ?", (previous, entry["seq"]))
    write(storage, "UPDATE audit_chain_head SET hash = ?", (previous,))
    code, out = verify(runner)
    assert code == 1 and "12 entries since the newest signed checkpoint" in out, out
