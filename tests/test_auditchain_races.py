"""The deferred audit chain's batches against what runs beside them: a row deleted while a
batch numbers it (PostgreSQL), and a batch that fails for an unexpected reason."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import psycopg
import pytest

from tests.test_auditchain import services_of, until, verify
from waygate.clock import isoformat, utcnow


def record(services, command_id, created_at=None):
    services.audit.record(
        command_id=command_id, action="echo", plugin="Core", key_name="k", mode="sync",
        status="success", duration_ms=1, error=None, timeout_s=30,
        created_at=created_at or isoformat(), started_at=None,
    )  # fmt: skip


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_row_deleted_while_a_batch_numbers_it_leaves_no_hole_in_the_chain(
    plugin_dist, make_app, runner, database_url, backend
):
    """A batch numbers the unchained rows in its statement's snapshot; a row a concurrent
    DELETE takes (PostgreSQL skips it once the deleter commits) would leave its number unused
    for good. The batch is rolled back instead, and the next one numbers what is left."""
    services = services_of(make_app(audit_chain_delay_ms=10_000).test_client())
    before_the_chain = isoformat(utcnow() - timedelta(days=30))
    for command_id in ("cmd_a", "cmd_old", "cmd_z"):
        # cmd_old: created before the chain began, so the retention may delete it unchained
        created = before_the_chain if command_id == "cmd_old" else None
        record(services, command_id, created)
        time.sleep(0.002)
    with psycopg.connect(database_url) as other:
        other.execute("UPDATE audit_chain_head SET started_at = %s", (isoformat(),))
        other.commit()
        other.execute("DELETE FROM executions WHERE command_id = 'cmd_old'")  # held open
        outcome = []
        batch = threading.Thread(target=lambda: outcome.append(services.audit.chain.seal_pending()))
        batch.start()
        until(lambda: other.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        ).fetchone()[0] > 0)  # fmt: skip
        other.commit()  # the batch waited for cmd_old's row: now it is gone
        batch.join(10)
        assert outcome == [False]  # rolled back, retried later
        assert other.execute("SELECT count(*) FROM audit_chain").fetchone()[0] == 0
    assert services.audit.chain.seal_pending()
    code, out = verify(runner)
    assert code == 0 and "(2 executions, 0 events)" in out and "not yet" not in out, out


def test_a_batch_that_fails_unexpectedly_is_retried_not_the_end_of_chaining(
    plugin_dist, make_app, monkeypatch, db
):
    services = services_of(make_app(audit_chain_delay_ms=50).test_client())
    chain = services.audit.chain
    real = type(chain).seal_unchained
    calls = []

    def fails_once(self, limit=500):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("a bug, once")
        return real(self, limit)

    monkeypatch.setattr(type(chain), "seal_unchained", fails_once)
    record(services, "cmd_1")
    until(lambda: calls)
    record(services, "cmd_2")
    until(lambda: not db("SELECT 1 FROM executions WHERE chain_seq IS NULL"))
    assert len(db("SELECT 1 FROM audit_chain")) == 2
