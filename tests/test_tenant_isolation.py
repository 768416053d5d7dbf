"""Tenant isolation on a real multi-user server: a hostile app of one user, on each runtime,
reaches nothing of another user, of the server or of Ray; staging acts as the app's account;
the server's files are its own.

The server is the embedded one (its own process and Ray) with three users, so the multi-user
rules apply by themselves (``tenancy: auto``), and ``file_roots: [/]``: the widest roots an
admin could set, to show that the account, not the roots, is the fence. Runs as root, as CI
does: the server makes the users' Unix accounts (prefix ``dlt-``), the test removes them.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from dlapp import embedded
from dlapp.client import DlappClient
from dlapp.config import ServerSettings
from dlapp.credentials import ADMIN_TOKEN_FILE
from dlapp.errors import DlappError
from dlapp.spec import AppSpec
from docker_support import MINIMAL, require_docker, require_podman

from storage_servers import S3Server, s3_server

__all__ = ["s3_server"]  # fixtures

from conftest import pack, wait_for, wait_running

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(os.geteuid() != 0, reason="apps switch Unix accounts only as root"),
]

PREFIX = "dlt-"

# Each probe prints "denied <what>" or "LEAK <what>"; the test wants every one denied.
HOSTILE = r"""#!/bin/sh
probe() {
  what=$1; shift
  if "$@" > /dev/null 2>&1; then echo "LEAK $what"; else echo "denied $what"; fi
}
probe admin-token cat "$DATA_DIR/admin.token"
probe store cat "$DATA_DIR/dlapp.db"
probe data-dir ls "$DATA_DIR"
probe kept-logs ls "$DATA_DIR/artifacts/logs"
probe work-root ls "$WORK_ROOT"
probe other-workspace cat "$VICTIM_DIR/workspace/secret.txt"
probe other-workspace-list ls "$VICTIM_DIR/workspace"
probe other-live-log cat "$VICTIM_DIR/logs/stdout"
probe ray-token cat /root/.ray/auth_token
probe ray-session ls "$SESSION_DIR"
pid=""
for d in /proc/[0-9]*; do
  if grep -q "victim-$VICTIM_TAG" "$d/cmdline" 2>/dev/null; then pid=${d#/proc/}; fi
done
echo "victim pid: ${pid:-none}"
probe other-env cat "/proc/${pid:-999999}/environ"
probe signal kill -KILL "${pid:-999999}"
probe server-env sh -c "env | grep -qE '^(RAY_|DLAPP_HOME=|DLAPP_TOKEN=)'"
echo "hostile done"
"""
PROBES = (
    "admin-token",
    "store",
    "data-dir",
    "kept-logs",
    "work-root",
    "other-workspace",
    "other-workspace-list",
    "other-live-log",
    "ray-token",
    "ray-session",
    "other-env",
    "signal",
    "server-env",
)
VICTIM = """#!/bin/sh
echo "$SECRET" > secret.txt
mkdir -p out && echo intact > out/result.txt
bash -c "exec -a victim-$VICTIM_TAG sleep 12"
echo "victim done"
"""


@dataclass
class Cluster:
    home: Path
    url: str
    work: Path
    drop: Path  # a sticky, world-writable directory (as /tmp): where outputs land
    tokens: dict[str, str]

    def client(self, user: str) -> DlappClient:
        return DlappClient(self.url, self.tokens[user])


def _free_range(start: int, size: int = 100) -> tuple[int, int]:
    import grp

    taken = {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    while any(u in taken for u in range(start, start + size)):
        start += size
    return start, start + size - 1


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("tenants-home")
    shared = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="dlapp-tenants-"))
    shared.chmod(0o711)
    drop = shared / "drop"
    drop.mkdir()
    drop.chmod(0o1777)
    settings = {
        "tenancy": "auto",
        "app_uid_range": list(_free_range(250_000)),
        "app_account_prefix": PREFIX,
        "map_unix_accounts": False,
        "file_roots": ["/"],
        "container": {"gpus": "none"},
        "softkill_grace_s": 2.0,
        "storage_profiles": {"lab": {"protocol": "s3", "options": s3_server.options}},
    }
    (home / "server.yaml").write_text(yaml.safe_dump(settings))
    info, started = embedded.up(home, gpus=2, cpus=4)
    assert started
    try:
        admin = (home / ADMIN_TOKEN_FILE).read_text().strip()
        tokens = {"admin": admin}
        with DlappClient(info.url, admin) as c:
            made = c.admin_add_user("alice")
            # the second user: the admin is told that the multi-user rules apply now
            assert "multi-user rules apply" in made["notice"]
            tokens["alice"] = made["token"]
            tokens["bob"] = c.admin_add_user("bob")["token"]
            assert "notice" not in c.admin_add_user("carol")  # said once, at the second
        work = ServerSettings(home=home).work
        yield Cluster(home, info.url, work, drop, tokens)
    finally:
        embedded.down(home)
        shutil.rmtree(shared, ignore_errors=True)
        for user in ("alice", "bob", "carol", "root"):
            subprocess.run(["userdel", f"{PREFIX}{user}"], capture_output=True, check=False)
            subprocess.run(["groupdel", f"{PREFIX}{user}"], capture_output=True, check=False)


def _app(tmp: Path, name: str, script: str, **spec: Any) -> AppSpec:
    ws = tmp / f"ws-{name}"
    ws.mkdir(parents=True)
    (ws / "run.sh").write_text(script)
    data: dict[str, Any] = {
        "name": name,
        "entry": {"script": "run.sh"},
        "workspace": {"path": str(ws)},
        "resources": {"cpus": 1, "memory": "256M", "gpus": 0},
        **spec,
    }
    return AppSpec.from_dict(data)


def _submit(c: DlappClient, spec: AppSpec, tmp: Path) -> str:
    app_id: str = c.submit(spec, pack(Path(spec.workspace.path), tmp))["id"]
    return app_id


def _ray_session(home: Path) -> str:
    """The embedded server's Ray session directory, found as root: the one its GCS server
    (a child of the server's process) logs into."""
    info = embedded.running(home)
    assert info is not None
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if int(fields[1]) != info.pid or not any("gcs_server" in a for a in args[:1]):
            continue
        for a in args:
            found = re.search(r"(/\S*?/session_[^/]+)", a)
            if found:
                return found.group(1)
    raise AssertionError("no GCS server under the embedded server")


@pytest.mark.parametrize("runtime", ["process", "docker", "podman"])
def test_a_hostile_app_reaches_nothing_of_another_user_the_server_or_ray(
    cluster: Cluster, runtime: str, tmp_path: Path
) -> None:
    if runtime == "docker":
        require_docker()
    if runtime == "podman":
        require_podman()
    tag = uuid.uuid4().hex[:10]
    secret = f"bob-secret-{tag}"
    out_url = f"file://{cluster.drop}/bob-{runtime}-{tag}"
    victim = _app(
        tmp_path,
        "victim",
        VICTIM,
        env={"SECRET": secret, "VICTIM_TAG": tag},
        outputs=[{"path": "out", "url": out_url}],
    )
    with cluster.client("bob") as bob, cluster.client("alice") as alice:
        victim_id = _submit(bob, victim, tmp_path)
        wait_running(bob, victim_id)
        victim_dir = cluster.work / victim_id / "1" / "0"
        wait_for(lambda: (victim_dir / "workspace" / "secret.txt").exists(), 30, "the victim")
        extra: dict[str, Any] = {}
        if runtime != "process":
            extra = {"runtime": runtime, "image": MINIMAL}
        hostile = _app(
            tmp_path,
            "hostile",
            HOSTILE,
            env={
                "DATA_DIR": str(cluster.home),
                "WORK_ROOT": str(cluster.work),
                "VICTIM_DIR": str(victim_dir),
                "VICTIM_TAG": tag,
                "SESSION_DIR": _ray_session(cluster.home),
            },
            **extra,
        )
        hostile_id = _submit(alice, hostile, tmp_path)
        done = alice.wait(hostile_id, timeout_s=90)
        log = alice.logs(hostile_id)
        assert done["final_status"] == "SUCCEEDED", (done, log)
        assert "hostile done" in log
        assert "LEAK" not in log, log
        for what in PROBES:
            assert f"denied {what}" in log, (what, log)
        assert secret not in log
        if runtime == "process":  # the victim was there to signal, and the signal was refused
            assert "victim pid: none" not in log, log
        finished = bob.wait(victim_id, timeout_s=60)
        assert finished["final_status"] == "SUCCEEDED", finished
        assert "victim done" in bob.logs(victim_id)
    result = Path(out_url.removeprefix("file://")) / "result.txt"
    assert result.read_text() == "intact\n"
    # written by bob's account, not by the server: staging acted as the app's user
    assert result.stat().st_uid == pwd.getpwnam(f"{PREFIX}bob").pw_uid
    assert result.parent.stat().st_mode & 0o077 == 0  # only bob's account may read it


def test_staging_cannot_reach_the_servers_files_or_other_users_data(
    cluster: Cluster, tmp_path: Path
) -> None:
    home = cluster.home
    with cluster.client("alice") as alice, cluster.client("bob") as bob:
        # 1. the server's own files: refused at submit, whatever file_roots say
        for binding in (
            {"inputs": [{"url": f"file://{home}/{ADMIN_TOKEN_FILE}", "path": "t"}]},
            {"inputs": [{"url": f"file://{home}/dlapp.db", "path": "db"}]},
            {"inputs": [{"url": f"file://{home}/artifacts/logs", "path": "logs"}]},
            {"inputs": [{"url": f"file://{cluster.work}", "path": "w"}]},
            {"outputs": [{"url": f"file://{home}/artifacts/logs/x", "path": "o"}]},
            {"outputs": [{"url": f"file://{home.parent}", "path": "o", "overwrite": True}]},
        ):
            spec = _app(tmp_path / uuid.uuid4().hex, "bad", "true\n", **binding)
            with pytest.raises(DlappError, match="the server's own files"):
                _submit(alice, spec, tmp_path)
        # 2. files only root may read: allowed by the roots, denied to the account
        private = cluster.drop.parent / "root-only"
        private.write_text("root's secret\n")
        private.chmod(0o600)
        for url in ("file:///etc/shadow", f"file://{private}"):
            spec = _app(
                tmp_path / uuid.uuid4().hex,
                "shadow",
                "cat secret\n",
                inputs=[{"url": url, "path": "secret"}],
            )
            app_id = _submit(alice, spec, tmp_path)
            done = alice.wait(app_id, timeout_s=60)
            assert done["final_status"] == "FAILED"
            assert "Permission denied" in done["diagnostics"], done
            log = alice.logs(app_id)
            assert "root:" not in log and "root's secret" not in log
        assert private.read_text() == "root's secret\n"
        # 3. bob's output, overwritten by alice: denied by the accounts, bob's left whole
        target = f"file://{cluster.drop}/bobs-{uuid.uuid4().hex[:8]}"
        mine = _app(
            tmp_path,
            "bobs",
            "mkdir out; echo bob > out/r\n",
            outputs=[{"path": "out", "url": target}],
        )
        bob_id = _submit(bob, mine, tmp_path)
        assert bob.wait(bob_id, timeout_s=60)["final_status"] == "SUCCEEDED"
        forged = _app(
            tmp_path,
            "forge",
            "mkdir out; echo forged > out/r\n",
            outputs=[{"path": "out", "url": target, "overwrite": True}],
        )
        forge_id = _submit(alice, forged, tmp_path)
        done = alice.wait(forge_id, timeout_s=60)
        assert done["final_status"] == "FAILED", done
        assert "staging out failed" in done["diagnostics"]
        assert (Path(target.removeprefix("file://")) / "r").read_text() == "bob\n"


def test_the_servers_files_are_its_own(cluster: Cluster, tmp_path: Path) -> None:
    home = cluster.home
    with cluster.client("alice") as alice:  # an app has run: the work root is there
        done = alice.wait(_submit(alice, _app(tmp_path, "files", "true\n"), tmp_path), timeout_s=60)
        assert done["final_status"] == "SUCCEEDED", done["diagnostics"]

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(home) == 0o700
    for name in (ADMIN_TOKEN_FILE, "dlapp.db", "server.log"):
        assert mode(home / name) & 0o077 == 0, name
    for p in home.glob("dlapp.db-*"):  # the WAL
        assert mode(p) & 0o077 == 0, p
    assert mode(home / "artifacts") == 0o700
    for tarball in (home / "artifacts" / "workspaces").glob("*"):
        assert mode(tarball) & 0o077 == 0, tarball
    token = Path.home() / ".ray" / "auth_token"
    if token.exists():
        assert mode(token) == 0o600
    assert mode(cluster.work) == 0o711  # apps' accounts pass through, never list


def test_a_remote_output_of_an_app_with_an_account_is_committed(
    cluster: Cluster, s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket()
    spec = _app(
        tmp_path,
        "remote",
        "mkdir -p out/sub && echo one > out/a && echo two > out/sub/b\n",
        outputs=[{"path": "out", "url": f"s3://{bucket}/run"}],
    )
    with cluster.client("bob") as bob:
        app_id = _submit(bob, spec, tmp_path)
        done = bob.wait(app_id, timeout_s=60)
        assert done["final_status"] == "SUCCEEDED", (done["diagnostics"], bob.logs(app_id))
    fs = s3_server.filesystem()
    assert fs.cat(f"{bucket}/run/a") == b"one\n"
    assert fs.cat(f"{bucket}/run/sub/b") == b"two\n"
