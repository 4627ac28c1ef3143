"""`waygate db copy --to postgresql://...`: a host's SQLite state moves into PostgreSQL, keys
keep working there, a second run copies nothing twice, and the password never shows."""

from __future__ import annotations

import psycopg


def test_sqlite_state_moves_into_postgresql_idempotently_and_verified(
    runner, make_app, keys, pg_url, monkeypatch
):
    client = make_app().test_client()
    for message in ("a", "b", "c"):
        ran = client.post(
            "/mcp/execute",
            json={"action": "echo", "params": {"message": message}},
            headers=keys.headers(),
        )
        assert ran.status_code == 200
    client.post("/mcp/execute", json={"action": "nope"}, headers=keys.headers())
    retried = {"action": "echo", "params": {"message": "once"}}
    first = client.post(
        "/mcp/execute", json=retried, headers=keys.headers(**{"Idempotency-Key": "move-1"})
    )
    assert first.status_code == 200
    # the host stops before the copy that counts (docs/operations.md), which folds its
    # totals into the database (waygate/totals.py) and chains what it left (auditchain.py)
    services = client.application.extensions["waygate"]
    services.audit.totals.fold()
    assert services.audit.chain.seal_pending()
    code, out, err = runner("db", "copy", "--to", pg_url)
    assert code == 0, err
    password = pg_url.split(":")[2].split("@")[0]
    assert password not in out + err and ":***@" in out
    assert "api_keys: 2 in " in out and "2 copied" in out
    assert "executions: 4 in " in out and "every row verified" in out
    assert "idempotency_keys: 1 in " in out

    # the same state answers from PostgreSQL: keys, audit, statistics, totals
    moved = make_app(database_url=pg_url).test_client()
    assert (
        moved.post(
            "/mcp/execute",
            json={"action": "echo", "params": {"message": "d"}},
            headers=keys.headers(),
        ).status_code
        == 200
    )
    # a retry of the call made before the move gets its first answer, and runs nothing
    again = moved.post(
        "/mcp/execute", json=retried, headers=keys.headers(**{"Idempotency-Key": "move-1"})
    )
    assert again.status_code == 200
    assert again.get_json()["command_id"] == first.get_json()["command_id"]
    listed = moved.get("/mcp/executions", headers=keys.headers("admin"))
    assert listed.status_code == 200 and listed.headers["X-Total-Count"] == "5"
    with psycopg.connect(pg_url) as conn:
        calls = conn.execute("SELECT sum(calls_total) FROM plugin_stats").fetchone()[0]
        assert calls == 5  # four copied totals and the new call, never double counted
        created = conn.execute("SELECT count(*) FROM key_events").fetchone()[0]
        assert created == 2

    # the audit chain came along and goes on: the copy verifies, the new call included
    assert moved.application.extensions["waygate"].audit.chain.seal_pending()
    monkeypatch.setenv("WAYGATE_DATABASE_URL", pg_url)
    code, out, err = runner("audit", "verify")
    assert code == 0 and "(5 executions, 0 events)" in out, out + err
    monkeypatch.delenv("WAYGATE_DATABASE_URL")

    # again: nothing copied twice, nothing lost
    code, out, err = runner("db", "copy", "--to", pg_url)
    assert code == 0, err
    assert "executions: 4 in " in out and "0 copied, 4 already there" in out
    assert "idempotency_keys: 1 in " in out and "0 copied, 1 already there" in out


def test_a_copy_to_something_else_than_postgresql_is_refused_without_repeating_it(runner, keys):
    code, out, err = runner("db", "copy", "--to", "mysql://root:hunter2@db/ops")
    assert code == 1 and "hunter2" not in out + err
    assert "--to: use postgresql://" in err


def test_a_key_revoked_between_the_two_copies_stays_revoked_after_the_move(
    runner, make_app, keys, pg_url
):
    """The documented move copies while the host serves, then again after it stopped: what
    changed in between (here a leaked key revoked) must arrive, not only what is new."""
    client = make_app().test_client()
    echo = {"action": "echo", "params": {"message": "x"}}
    assert client.post("/mcp/execute", json=echo, headers=keys.headers()).status_code == 200
    assert runner("db", "copy", "--to", pg_url)[0] == 0  # while the host serves
    keys.store.revoke("ops-user")
    code, out, err = runner("db", "copy", "--to", pg_url)  # after the stop
    assert code == 0, err
    assert "api_keys: 2 in " in out and "0 copied, 2 already there" in out
    moved = make_app(database_url=pg_url).test_client()
    assert moved.post("/mcp/execute", json=echo, headers=keys.headers()).status_code == 401


def test_an_idempotency_key_answered_between_the_two_copies_keeps_its_answer(
    runner, make_app, keys, pg_url, storage
):
    """A keyed call still running at the first copy (its row claimed, no answer yet): the
    answer stored before the second copy arrives with it, so a retry after the move gets it."""
    client = make_app().test_client()
    body = {"action": "echo", "params": {"message": "once"}}
    headers = keys.headers(**{"Idempotency-Key": "k1"})
    first = client.post("/mcp/execute", json=body, headers=headers)
    assert first.status_code == 200
    with storage.write() as conn:  # as the first copy saw it: claimed, not answered
        answered = tuple(conn.execute("SELECT answer, live FROM idempotency_keys").fetchone())
        conn.execute("UPDATE idempotency_keys SET answer = NULL, live = 1")
    assert runner("db", "copy", "--to", pg_url)[0] == 0
    with storage.write() as conn:
        conn.execute("UPDATE idempotency_keys SET answer = ?, live = ?", answered)
    assert runner("db", "copy", "--to", pg_url)[0] == 0
    moved = make_app(database_url=pg_url).test_client()
    again = moved.post("/mcp/execute", json=body, headers=headers)
    assert again.status_code == 200
    assert again.get_json()["command_id"] == first.get_json()["command_id"]
