import json
import os
import re
import subprocess

import pytest

from tests.conftest import BIN

pytestmark = pytest.mark.both_backends


@pytest.fixture
def cli(runner):
    """The CLI on a migrated data dir, as after `waygate migrate` (or `make serve`)."""
    code, _, err = runner("migrate")
    assert code == 0, err
    return runner


def test_keys_create_prints_the_key_last_and_stores_only_its_hash(cli, data_dir, db):
    code, out, err = cli("keys", "create", "--name", "alice", "--role", "admin")
    assert code == 0, err
    key = out.strip().splitlines()[-1]
    assert re.fullmatch(r"[A-Za-z0-9]{32}", key)
    for path in data_dir.iterdir():
        assert path.is_dir() or key.encode() not in path.read_bytes()
    rows = db("SELECT name, role, key_hash FROM api_keys")
    assert [(r["name"], r["role"]) for r in rows] == [("alice", "admin")]
    assert key not in str(rows)


def test_keys_list_shows_names_and_roles_but_never_keys(cli):
    _, out, _ = cli("keys", "create", "--name", "bob", "--role", "user")
    key = out.strip().splitlines()[-1]
    code, listing, _ = cli("keys", "list")
    assert code == 0
    assert "bob" in listing and "user" in listing
    assert key not in listing


def test_keys_list_shows_scope_expiry_last_use_and_state(cli, keys):
    keys.store.create("scoped", "user", allow=["echo", "Core.*"], read_only=True)
    keys.store.create("soon", "user", expires_at="2099-01-01T00:00:00.000Z")
    keys.store.create("gone", "user")
    keys.store.revoke("gone")
    keys.store.authenticate(keys.user)  # ops-user has been used
    keys.store.create("lapsed", "user", expires_at="2099-01-01T00:00:00.000Z")
    keys.store.storage.execute_write(
        "UPDATE api_keys SET expires_at = '2020-01-01T00:00:00.000Z' WHERE name = 'lapsed'"
    )
    code, listing, err = cli("keys", "list")
    assert code == 0, err
    header, *lines = listing.splitlines()
    assert header.split() == [
        "NAME", "ROLE", "ALLOW", "READ-ONLY", "EXPIRES", "LAST", "USED", "STATE"
    ]  # fmt: skip
    rows = {line.split()[0]: line.split()[1:] for line in lines}
    assert rows["ops-admin"] == ["admin", "(all)", "no", "never", "never", "live"]
    assert rows["scoped"] == ["user", "echo,Core.*", "yes", "never", "never", "live"]
    assert rows["soon"][3:] == ["2099-01-01T00:00:00.000Z", "never", "live"]
    assert rows["lapsed"][3] == "2020-01-01T00:00:00.000Z" and rows["lapsed"][-1] == "expired"
    assert rows["gone"][-1] == "revoked"
    assert rows["ops-user"][4] != "never" and rows["ops-user"][-1] == "live"


def test_keys_revoke_marks_the_key_revoked(cli):
    cli("keys", "create", "--name", "carol", "--role", "user")
    code, out, _ = cli("keys", "revoke", "carol")
    assert code == 0 and "revoked" in out
    _, listing, _ = cli("keys", "list")
    line = next(line for line in listing.splitlines() if line.startswith("carol"))
    assert line.split()[-1] != "-"


def test_revoking_an_unknown_key_fails_cleanly(cli):
    code, out, err = cli("keys", "revoke", "nobody")
    assert code == 1
    assert "no live key named 'nobody'" in err
    assert "Traceback" not in err


def test_a_duplicate_live_name_is_refused(cli):
    cli("keys", "create", "--name", "dave")
    code, _, err = cli("keys", "create", "--name", "dave")
    assert code == 1 and "already exists" in err


def test_a_revoked_name_can_be_reused(cli):
    cli("keys", "create", "--name", "erin")
    cli("keys", "revoke", "erin")
    code, out, _ = cli("keys", "create", "--name", "erin")
    assert code == 0


def test_bootstrap_creates_an_admin_key_only_when_none_exist(cli):
    code, out, _ = cli("keys", "bootstrap")
    assert code == 0
    assert re.fullmatch(r"[A-Za-z0-9]{32}", out.strip().splitlines()[-1])
    code, out, _ = cli("keys", "bootstrap")
    assert code == 0 and "exist already" in out
    _, listing, _ = cli("keys", "list")
    assert "dev-admin" in listing and "admin" in listing


def test_a_bad_config_value_is_one_line_naming_the_variable(runner, monkeypatch):
    monkeypatch.setenv("WAYGATE_TRUSTED_PROXIES", "many")
    code, out, err = runner("keys", "list")
    assert code == 2
    assert (
        err.strip()
        == "waygate: configuration error: WAYGATE_TRUSTED_PROXIES: 'many' is not an integer"
    )


@pytest.mark.sqlite_only
def test_migrate_applies_once(runner):
    code, out, _ = runner("migrate")
    assert code == 0 and "m001_api_keys" in out
    code, out, _ = runner("migrate")
    assert out.strip() == "applied 0 migration(s)"


@pytest.mark.parametrize(
    "args",
    [
        ("keys", "list"),
        ("keys", "create", "--name", "alice"),
        ("keys", "revoke", "alice"),
        ("keys", "bootstrap"),
        ("backup", "copy.db"),
    ],
)
@pytest.mark.sqlite_only
def test_commands_on_existing_state_refuse_without_a_database(runner, data_dir, args):
    code, out, err = runner(*args)
    assert code == 1 and out == ""
    assert err.strip().startswith(f"waygate: no database at {data_dir.resolve()}/waygate.db")
    assert "WAYGATE_DATA_DIR" in err and "Traceback" not in err
    assert list(data_dir.iterdir()) == []  # nothing created in the wrong place


def test_keys_list_json_is_one_array_without_keys(cli):
    _, out, _ = cli("keys", "create", "--name", "ci-bot", "--role", "user")
    key = out.strip().splitlines()[-1]
    cli("keys", "create", "--name", "old", "--role", "admin")
    cli("keys", "revoke", "old", "--force")  # the last live admin key: deliberately
    code, out, err = cli("keys", "list", "--json")
    assert code == 0, err
    listing = json.loads(out)
    assert [(k["name"], k["role"]) for k in listing] == [("ci-bot", "user"), ("old", "admin")]
    assert listing[0]["revoked_at"] is None and listing[1]["revoked_at"]
    assert {"id", "name", "role", "created_at", "last_used_at", "revoked_at"} <= set(listing[0])
    assert key not in out


def test_version_is_the_package_version(runner):
    from waygate import __version__

    code, out, _ = runner("--version")
    assert code == 0 and out.strip() == f"waygate {__version__}"


@pytest.mark.sqlite_only
def test_the_cli_reads_the_service_environment_file(cli, data_dir, tmp_path):
    """Run from anywhere, with only the env file the systemd unit reads: the same data."""
    cli("keys", "create", "--name", "ops", "--role", "admin")
    env_file = tmp_path / "waygate.env"
    env_file.write_text(f"# as in /etc/waygate/waygate.env\nWAYGATE_DATA_DIR={data_dir}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no WAYGATE_* at all
    listing = subprocess.run(
        [str(BIN / "waygate"), "--env-file", str(env_file), "keys", "list", "--json"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert [k["name"] for k in json.loads(listing.stdout)] == ["ops"]
    assert list(elsewhere.iterdir()) == []
    missing = subprocess.run(
        [str(BIN / "waygate"), "--env-file", str(tmp_path / "nope.env"), "keys", "list"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "nope.env is not a file" in missing.stderr


@pytest.mark.sqlite_only
def test_the_default_environment_file_is_read_when_present(runner, monkeypatch, tmp_path):
    import waygate.cli

    service_data = tmp_path / "service"
    env_file = tmp_path / "waygate.env"
    env_file.write_text(f'WAYGATE_DATA_DIR="{service_data}"\n')
    monkeypatch.setattr(waygate.cli, "DEFAULT_ENV_FILE", env_file)
    monkeypatch.delenv("WAYGATE_DATA_DIR")
    assert runner("migrate")[0] == 0
    assert (service_data / "waygate.db").is_file()
    # the service started from it (`waygate serve`) knows it: a plugin reload reads it again
    assert os.environ["WAYGATE_ENV_FILE"] == str(env_file.resolve())
    # a variable already in the environment wins over the file
    monkeypatch.setenv("WAYGATE_DATA_DIR", str(tmp_path / "explicit"))
    code, _, err = runner("keys", "list")
    assert code == 1 and str(tmp_path / "explicit") in err
