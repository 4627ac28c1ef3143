import re
import sqlite3


def test_keys_create_prints_the_key_last_and_stores_only_its_hash(runner, data_dir):
    code, out, err = runner("keys", "create", "--name", "alice", "--role", "admin")
    assert code == 0, err
    key = out.strip().splitlines()[-1]
    assert re.fullmatch(r"[A-Za-z0-9]{32}", key)
    raw = (data_dir / "waygate.db").read_bytes()
    assert key.encode() not in raw
    rows = (
        sqlite3.connect(data_dir / "waygate.db")
        .execute("SELECT name, role, key_hash FROM api_keys")
        .fetchall()
    )
    assert rows[0][:2] == ("alice", "admin") and rows[0][2] != key


def test_keys_list_shows_names_and_roles_but_never_keys(runner):
    _, out, _ = runner("keys", "create", "--name", "bob", "--role", "user")
    key = out.strip().splitlines()[-1]
    code, listing, _ = runner("keys", "list")
    assert code == 0
    assert "bob" in listing and "user" in listing
    assert key not in listing


def test_keys_revoke_marks_the_key_revoked(runner):
    runner("keys", "create", "--name", "carol", "--role", "user")
    code, out, _ = runner("keys", "revoke", "carol")
    assert code == 0 and "revoked" in out
    _, listing, _ = runner("keys", "list")
    line = next(line for line in listing.splitlines() if line.startswith("carol"))
    assert line.split()[-1] != "-"


def test_revoking_an_unknown_key_fails_cleanly(runner):
    code, out, err = runner("keys", "revoke", "nobody")
    assert code == 1
    assert "no live key named 'nobody'" in err
    assert "Traceback" not in err


def test_a_duplicate_live_name_is_refused(runner):
    runner("keys", "create", "--name", "dave")
    code, _, err = runner("keys", "create", "--name", "dave")
    assert code == 1 and "already exists" in err


def test_a_revoked_name_can_be_reused(runner):
    runner("keys", "create", "--name", "erin")
    runner("keys", "revoke", "erin")
    code, out, _ = runner("keys", "create", "--name", "erin")
    assert code == 0


def test_bootstrap_creates_an_admin_key_only_when_none_exist(runner):
    code, out, _ = runner("keys", "bootstrap")
    assert code == 0
    assert re.fullmatch(r"[A-Za-z0-9]{32}", out.strip().splitlines()[-1])
    code, out, _ = runner("keys", "bootstrap")
    assert code == 0 and "exist already" in out
    _, listing, _ = runner("keys", "list")
    assert "dev-admin" in listing and "admin" in listing


def test_a_bad_config_value_is_one_line_naming_the_variable(runner, monkeypatch):
    monkeypatch.setenv("WAYGATE_TRUSTED_PROXIES", "many")
    code, out, err = runner("keys", "list")
    assert code == 2
    assert (
        err.strip()
        == "waygate: configuration error: WAYGATE_TRUSTED_PROXIES: 'many' is not an integer"
    )


def test_migrate_applies_once(runner):
    code, out, _ = runner("migrate")
    assert code == 0 and "m001_api_keys" in out
    code, out, _ = runner("migrate")
    assert out.strip() == "applied 0 migration(s)"
