"""The per-process key cache on PostgreSQL (waygate/keystore.py, issue 32): hosts answer a
known key without reading it again, yet a key revoked, rotated, narrowed or expired on one host
is refused or narrowed on every other at its next request.

Two hosts here are two apps built in this process on one PostgreSQL database, each with its
own data dir and its own services (so its own cache), the default limit storage (that same
database) and the test client's requests; one test runs two gunicorn workers.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import psycopg
import pytest
import requests

from waygate import keystore
from waygate.keys import digest
from waygate.keystore import KeyCache, KeyStore, _Cached
from waygate.storage import PostgresStorage

HIGH = {"rate_limit_auth_failures": "1000/minute", "rate_limit_execute": "1000/minute"}


@pytest.fixture
def pg(pg_migrated_url):
    storage = PostgresStorage(pg_migrated_url)
    yield storage
    storage.close()


@pytest.fixture
def admin(pg) -> str:
    return KeyStore(pg).create("ops-admin", "admin")[1]


@pytest.fixture
def hosts(make_app, pg_migrated_url, tmp_path, admin):
    """Two hosts on one database: (a, b) test clients."""
    return tuple(
        make_app(database_url=pg_migrated_url, data_dir=tmp_path / name, **HIGH).test_client()
        for name in ("a", "b")
    )


def cache_of(client) -> KeyCache:
    return client.application.extensions["waygate"].keys.cache


def make_key(client, admin: str, name: str, **fields) -> str:
    made = client.post(
        "/keys", json={"name": name, "role": "user", **fields}, headers={"X-API-Key": admin}
    )
    assert made.status_code == 201, made.get_json()
    return made.get_json()["key"]


def execute(client, key: str, action: str = "echo") -> int:
    body = {"action": action, "params": {"message": "hi"} if action == "echo" else {}}
    return client.post("/mcp/execute", json=body, headers={"X-API-Key": key}).status_code


def known_to(client, key: str) -> bool:
    return cache_of(client).get(digest(key)) is not None


def test_the_cache_is_used_on_postgresql(hosts, admin):
    a, b = hosts
    key = make_key(a, admin, "agent")
    assert [execute(b, key) for _ in range(3)] == [200] * 3
    assert known_to(b, key)


def test_a_key_revoked_on_one_host_is_refused_on_the_other_at_once(hosts, admin):
    a, b = hosts
    key = make_key(a, admin, "agent")
    assert execute(b, key) == 200 and known_to(b, key)
    assert a.delete("/keys/agent", headers={"X-API-Key": admin}).status_code == 200
    refused = b.post("/mcp/execute", json={"action": "echo"}, headers={"X-API-Key": key})
    assert refused.status_code == 401
    assert refused.get_json()["error"]["code"] == "UNAUTHORIZED"
    assert not known_to(b, key)
    assert b.get("/mcp/status", headers={"X-API-Key": key}).status_code == 401


def test_a_narrowed_scope_is_seen_by_the_other_hosts_next_call(hosts, admin):
    a, b = hosts
    key = make_key(a, admin, "agent", allow=["echo", "Core.status"])
    assert execute(b, key, "status") == 200 and known_to(b, key)
    changed = a.patch("/keys/agent", json={"allow": ["echo"]}, headers={"X-API-Key": admin})
    assert changed.status_code == 200
    assert execute(b, key, "status") == 403
    assert execute(b, key, "echo") == 200


def test_read_only_and_a_rate_limit_set_on_one_host_hold_on_the_other(hosts, admin):
    a, b = hosts
    key = make_key(a, admin, "agent")
    assert execute(b, key, "status") == 200 and known_to(b, key)
    changed = a.patch(
        "/keys/agent", json={"read_only": True, "rate_limit": "1/minute"},
        headers={"X-API-Key": admin},
    )  # fmt: skip
    assert changed.status_code == 200
    first = b.post("/mcp/execute", json={"action": "status"}, headers={"X-API-Key": key})
    assert first.status_code == 200 and first.headers["X-RateLimit-Limit"] == "1"
    assert execute(b, key, "status") == 429


def test_a_rotated_secret_is_refused_after_its_grace_and_the_new_one_works(
    hosts, admin, monkeypatch
):
    a, b = hosts
    old = make_key(a, admin, "agent")
    assert execute(b, old) == 200 and known_to(b, old)
    rotated = a.post("/keys/agent/rotate", json={"grace_seconds": 60}, headers={"X-API-Key": admin})
    assert rotated.status_code == 200
    new = rotated.get_json()["key"]
    assert execute(b, old) == 200  # within its grace
    assert execute(b, new) == 200
    assert known_to(b, old) and known_to(b, new)
    later = keystore.utcnow() + timedelta(seconds=61)
    monkeypatch.setattr(keystore, "utcnow", lambda: later)
    assert execute(b, old) == 401  # past the grace, though cached
    assert execute(b, new) == 200


def test_a_rotation_without_grace_refuses_the_old_secret_on_the_other_host(hosts, admin):
    a, b = hosts
    old = make_key(a, admin, "agent")
    assert execute(b, old) == 200 and known_to(b, old)
    rotated = a.post("/keys/agent/rotate", json={}, headers={"X-API-Key": admin})
    assert rotated.status_code == 200
    assert execute(b, old) == 401
    assert execute(b, rotated.get_json()["key"]) == 200


def test_an_expiry_is_checked_against_the_clock_on_every_cached_use(hosts, admin, monkeypatch):
    a, b = hosts
    key = make_key(a, admin, "agent", expires_in=3600)
    assert execute(b, key) == 200 and known_to(b, key)
    later = keystore.utcnow() + timedelta(hours=2)
    monkeypatch.setattr(keystore, "utcnow", lambda: later)
    answer = b.post("/mcp/execute", json={"action": "echo"}, headers={"X-API-Key": key})
    assert answer.status_code == 401 and "expired" in answer.get_json()["error"]["message"]


def test_an_expiry_brought_forward_on_one_host_holds_on_the_other(hosts, admin, monkeypatch):
    a, b = hosts
    key = make_key(a, admin, "agent", expires_in=3600)
    assert execute(b, key) == 200 and known_to(b, key)
    changed = a.patch("/keys/agent", json={"expires_in": 1800}, headers={"X-API-Key": admin})
    assert changed.status_code == 200
    later = keystore.utcnow() + timedelta(minutes=45)  # past the new expiry, not the old
    monkeypatch.setattr(keystore, "utcnow", lambda: later)
    assert execute(b, key) == 401


def test_a_wrong_key_never_enters_the_cache(hosts, admin):
    a, b = hosts
    before = len(cache_of(b))
    for n in range(5):
        assert execute(b, f"wg_wrong_{n}") == 401
    assert len(cache_of(b)) == before
    key = make_key(a, admin, "agent")
    assert a.delete("/keys/agent", headers={"X-API-Key": admin}).status_code == 200
    assert execute(b, key) == 401 and not known_to(b, key)


def test_a_change_to_another_key_costs_a_read_not_a_refusal(hosts, admin):
    a, b = hosts
    key = make_key(a, admin, "agent")
    other = make_key(a, admin, "other")
    assert execute(b, key) == 200 and known_to(b, key)
    assert a.delete("/keys/other", headers={"X-API-Key": admin}).status_code == 200
    assert execute(b, key) == 200 and known_to(b, key)
    assert execute(b, other) == 401


def test_last_use_is_still_written_at_most_once_a_minute(hosts, admin, pg):
    a, b = hosts
    make_key(a, admin, "agent")
    key = KeyStore(pg).rotate("agent")[1]
    for _ in range(5):
        assert execute(b, key) == 200
    first = KeyStore(pg).get("agent").last_used_at
    assert first is not None
    for _ in range(3):
        assert execute(b, key) == 200
    assert KeyStore(pg).get("agent").last_used_at == first


def test_the_cache_is_bounded_by_size_and_age(pg):
    store = KeyStore(pg)
    store.cache = KeyCache(size=2)
    secrets = [store.create(f"k{n}", "user")[1] for n in range(3)]
    for secret in secrets:
        assert store.authenticate_cached(secret)[1] is None  # read from the database
    assert len(store.cache) == 2
    assert store.authenticate_cached(secrets[2])[1] is not None  # answered from the cache
    assert store.authenticate_cached(secrets[0])[1] is None  # pushed out
    store.cache.ttl_s = 0.0
    assert store.authenticate_cached(secrets[0])[1] is None  # aged out


def test_an_answer_read_before_a_known_change_is_not_kept():
    cache = KeyCache()
    cache.saw(5)

    def entry(generation: int) -> _Cached:
        return _Cached(None, generation, None, None, None, 0.0)  # type: ignore[arg-type]

    cache.put("old", entry(4))
    assert len(cache) == 0
    cache.put("now", entry(5))
    assert len(cache) == 1
    cache.saw(6)  # a newer generation empties it
    assert len(cache) == 0


def test_a_forked_child_starts_with_an_empty_cache(pg):
    store = KeyStore(pg)
    secret = store.create("forked", "user")[1]
    store.authenticate_cached(secret)
    assert len(store.cache) == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, str(len(store.cache)).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 10) == b"0"


def test_sqlite_reads_the_key_every_time(make_app, keys):
    client = make_app(**HIGH).test_client()
    assert execute(client, keys.user) == 200
    assert len(cache_of(client)) == 0


def test_with_the_limits_elsewhere_the_cache_is_not_used(
    make_app, pg_migrated_url, tmp_path, admin
):
    table = f"table:///{tmp_path / 'limits.table'}"
    client = make_app(
        database_url=pg_migrated_url, data_dir=tmp_path / "x", ratelimit_storage_uri=table, **HIGH
    ).test_client()
    key = make_key(client, admin, "agent")
    assert execute(client, key) == 200
    assert len(cache_of(client)) == 0


# -- round trips -----------------------------------------------------------------------------


def statements_per_request(pg_cluster, database: str, client, key: str, n: int = 20) -> float:
    """PostgreSQL's own count of the statements (each a round trip) ``n`` executes made."""
    log = pg_cluster.log_path
    start = log.stat().st_size
    for _ in range(n):
        assert execute(client, key) == 200
    with log.open("rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    lines = [
        line for line in text.splitlines() if "LOG:  statement:" in line or "LOG:  execute" in line
    ]
    return len(lines) / n


def test_the_cache_saves_the_key_lookup_round_trip(
    make_app, pg_cluster, pg_migrated_url, tmp_path, admin, figures_of_round_trips
):
    database = pg_migrated_url.rsplit("/", 1)[1]
    with pg_cluster.connect() as conn:
        conn.autocommit = True
        conn.execute(f"ALTER DATABASE \"{database}\" SET log_statement = 'all'")
    try:
        client = make_app(database_url=pg_migrated_url, data_dir=tmp_path / "rt", **HIGH)
        client = client.test_client()
        key = make_key(client, admin, "agent")
        for _ in range(3):  # warm: pools, plugins, last use written
            assert execute(client, key) == 200
        cached = statements_per_request(pg_cluster, database, client, key)
        client.application.extensions["waygate"].keys.cache.ttl_s = -1.0  # every entry stale
        uncached = statements_per_request(pg_cluster, database, client, key)
    finally:
        with pg_cluster.connect() as conn:
            conn.autocommit = True
            conn.execute(f'ALTER DATABASE "{database}" RESET log_statement')
    figures_of_round_trips.update(cached=cached, uncached=uncached)
    assert cached <= uncached - 1, (cached, uncached)


@pytest.fixture
def figures_of_round_trips(request):
    found: dict = {}
    yield found
    print(f"\nround trips per /mcp/execute on PostgreSQL: {found}")


# -- real workers ----------------------------------------------------------------------------


@pytest.mark.server
def test_a_key_revoked_through_one_worker_is_refused_by_every_worker_at_once(
    server_factory, pg_migrated_url, admin, monkeypatch
):
    monkeypatch.setenv("WAYGATE_DATABASE_URL", pg_migrated_url)
    server = server_factory(
        workers=2,
        WAYGATE_DATABASE_URL=pg_migrated_url,
        WAYGATE_RATE_LIMIT_AUTH_FAILURES="1000/minute",
        WAYGATE_RATE_LIMIT_DEFAULT="1000/minute",
    )
    http = requests.Session()
    http.trust_env = False
    made = http.post(
        server.url + "/keys", json={"name": "agent", "role": "user"},
        headers={"X-API-Key": admin}, timeout=10,
    )  # fmt: skip
    key = made.json()["key"]

    def status(_=None) -> int:
        return http.get(
            server.url + "/mcp/status", headers={"X-API-Key": key}, timeout=10
        ).status_code

    with ThreadPoolExecutor(4) as pool:  # concurrent, so both workers know (cache) the key
        assert list(pool.map(status, range(16))) == [200] * 16
    revoked = http.delete(server.url + "/keys/agent", headers={"X-API-Key": admin}, timeout=10)
    assert revoked.status_code == 200
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(status, range(16))) == [401] * 16


def test_a_revoked_key_with_its_budget_spent_is_told_401_not_429(hosts, admin):
    a, b = hosts
    key = make_key(a, admin, "agent", rate_limit="1/minute")
    assert execute(b, key) == 200 and known_to(b, key)
    assert execute(b, key) == 429
    assert a.delete("/keys/agent", headers={"X-API-Key": admin}).status_code == 200
    assert execute(b, key) == 401


def test_without_a_hit_to_confirm_it_a_cached_key_is_read_again(hosts, admin):
    """The limit storage fails (and fails open): no statement read the generation, so the
    cached key is looked up again before the view runs."""
    from limits.errors import StorageError

    a, b = hosts
    key = make_key(a, admin, "agent")
    assert execute(b, key) == 200 and known_to(b, key)
    assert a.delete("/keys/agent", headers={"X-API-Key": admin}).status_code == 200

    def down(*args):
        raise StorageError(RuntimeError("limit storage down"))

    limiter = b.application.extensions["waygate.limiter"]
    limiter._incr_window_generation = down
    limiter._incr_window = down
    assert execute(b, key) == 401


# -- what a restore, a failover or a hand-made change does to the cache ----------------------


def gen(url) -> int:
    with psycopg.connect(url, autocommit=True) as c:
        return c.execute("SELECT generation FROM key_generation WHERE id = 1").fetchone()[0]


def set_gen(url, value: int) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("UPDATE key_generation SET generation = %s WHERE id = 1", (value,))


def test_a_generation_gone_back_and_climbing_to_a_cached_number_confirms_nothing_stale(
    hosts, admin, pg_migrated_url
):
    """DB restored / failed over to a standby that is 2 generations behind; the key is
    revoked there; one more key change brings the generation back to the cached number."""
    a, b = hosts
    key = make_key(a, admin, "agent")
    make_key(a, admin, "other")  # a key whose change moves the generation on
    assert execute(b, key) == 200 and known_to(b, key)
    cached = gen(pg_migrated_url)
    set_gen(pg_migrated_url, cached - 2)  # the restore / failover
    assert a.delete("/keys/agent", headers={"X-API-Key": admin}).status_code == 200  # -> cached-1
    assert execute(b, key) == 401  # hit reads cached-1: read again, refused ...
    assert not known_to(b, key)  # the refused entry went
    changed = a.patch("/keys/other", json={"read_only": True}, headers={"X-API-Key": admin})
    assert changed.status_code == 200  # -> cached again
    assert gen(pg_migrated_url) == cached
    status = execute(b, key)
    assert status == 401, f"revoked key accepted: {status}"


def test_a_refused_cached_key_records_no_use_after_its_revocation(hosts, admin, pg_migrated_url):
    """The cached path writes last_used_at before the hit confirms the key: a revoked key's
    refused attempt shows as a use later than its revocation."""
    from datetime import timedelta

    from waygate.clock import isoformat, utcnow
    from waygate.keys import digest

    a, b = hosts
    key = make_key(a, admin, "agent")
    assert execute(b, key) == 200 and known_to(b, key)
    # the entry was loaded <60 s ago but the use it remembers is older (loaded 59 s after a use)
    cache_of(b)._entries[digest(key)].last_used_at = isoformat(utcnow() - timedelta(seconds=61))
    with psycopg.connect(pg_migrated_url, autocommit=True) as c:
        c.execute(
            "UPDATE api_keys SET last_used_at = %s WHERE name = 'agent'",
            (isoformat(utcnow() - timedelta(seconds=61)),),
        )
    assert a.delete("/keys/agent", headers={"X-API-Key": admin}).status_code == 200
    assert execute(b, key) == 401
    with psycopg.connect(pg_migrated_url, autocommit=True) as c:
        revoked, used = c.execute(
            "SELECT revoked_at, last_used_at FROM api_keys WHERE name = 'agent'"
        ).fetchone()
    assert used < revoked, "a refused attempt recorded as a use after the revocation"


def test_truncate_moves_the_generation(hosts, admin, pg_migrated_url):
    a, b = hosts
    key = make_key(a, admin, "agent")
    assert execute(b, key) == 200 and known_to(b, key)
    before = gen(pg_migrated_url)
    with psycopg.connect(pg_migrated_url, autocommit=True) as c:
        c.execute("TRUNCATE api_keys CASCADE")
    assert gen(pg_migrated_url) != before
    status = execute(b, key)
    assert status == 401
