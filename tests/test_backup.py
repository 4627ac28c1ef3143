"""`waygate backup PATH` while the service runs, and a restore from that copy."""

import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.conftest import BIN
from waygate.app import create_app
from waygate.config import Config


def executions(client, admin_key):
    body = client.get("/mcp/executions?limit=100", headers={"X-API-Key": admin_key})
    assert body.status_code == 200, body.get_json()
    return sorted(
        (e["command_id"], e["action"], e["status"]) for e in body.get_json()["executions"]
    )


def waygate(*args, data_dir, cwd):
    return subprocess.run(
        [str(BIN / "waygate"), *args],
        env={"PATH": "/usr/bin:/bin", "WAYGATE_DATA_DIR": str(data_dir)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_backup_taken_under_load_restores_every_key_and_execution(
    server_factory, keys, data_dir, tmp_path
):
    server = server_factory(workers=2)
    session = requests.Session()

    def execute(n):
        return session.post(
            server.url + "/mcp/execute",
            headers={"X-API-Key": keys.user},
            json={"action": "echo", "params": {"message": f"m{n}"}},
            timeout=10,
        ).status_code

    assert [execute(n) for n in range(10)] == [200] * 10
    before = executions(
        create_app(Config(data_dir=data_dir, housekeeping_interval_s=0)).test_client(), keys.admin
    )
    backup = tmp_path / "backups" / "waygate.db"
    backup.parent.mkdir()
    with ThreadPoolExecutor(4) as pool:
        writes = pool.map(execute, range(40))  # the service keeps writing during the copy
        made = waygate("backup", str(backup), data_dir=data_dir, cwd=tmp_path)
        assert list(writes) == [200] * 40
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == f"backed up {data_dir / 'waygate.db'} to {backup}"
    again = waygate("backup", str(backup), data_dir=data_dir, cwd=tmp_path)
    assert again.returncode == 1 and "exists already" in again.stderr
    server.stop()

    # the original, now complete, against its copy restored into an empty data dir
    original = create_app(Config(data_dir=data_dir, housekeeping_interval_s=0)).test_client()
    restored_dir = tmp_path / "restored"
    restored_dir.mkdir()
    shutil.copy(backup, restored_dir / "waygate.db")
    restored = create_app(Config(data_dir=restored_dir, housekeeping_interval_s=0)).test_client()
    listed = waygate("keys", "list", "--json", data_dir=restored_dir, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert [k["name"] for k in json.loads(listed.stdout)] == ["ops-admin", "ops-user"]
    assert restored.get("/mcp/status", headers={"X-API-Key": keys.user}).status_code == 200
    copied = executions(restored, keys.admin)
    # every execution finished before the backup is in it, as it was; the copy is one
    # consistent snapshot of the rows written meanwhile
    assert len(before) == 10 and set(before) <= set(copied)
    assert {row[0] for row in copied} <= {row[0] for row in executions(original, keys.admin)}


def test_a_backup_is_its_owners_alone_whatever_the_umask(keys, data_dir, tmp_path):
    import os
    import stat

    backup = tmp_path / "waygate-copy.db"
    made = subprocess.run(
        ["sh", "-c", 'umask 022 && exec "$0" backup "$1"', str(BIN / "waygate"), str(backup)],
        env={"PATH": "/usr/bin:/bin", "WAYGATE_DATA_DIR": str(data_dir)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(os.stat(backup).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_a_backup_into_a_missing_directory_says_so(keys, data_dir, tmp_path):
    target = tmp_path / "no-such-dir" / "waygate.db"
    made = waygate("backup", str(target), data_dir=data_dir, cwd=tmp_path)
    assert made.returncode == 1
    assert made.stdout == ""
    assert made.stderr.strip() == (
        f"waygate: the directory {target.parent} does not exist: create it first (e.g. install"
        f" -d -m 0700 {target.parent}) or give a path in an existing directory"
    )
    assert not target.parent.exists()
