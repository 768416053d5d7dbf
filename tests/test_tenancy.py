"""The multi-user rules at submit and in the plans (in-process server, LocalExecutor): runtimes
per cluster and queue, local paths, the process runtime on a server that cannot switch
accounts, and which account a container's plan names."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from dlapp import unix_accounts
from dlapp.config import ServerSettings
from dlapp.server import files, tenancy
from dlapp.server.context import Context
from dlapp.store import accounts
from dlapp.unix_accounts import AccountPlan, uid_free_for

from conftest import wait_for
from inprocess import add_user, admin_token, bearer, serve, submit, wait_finished


def settings(tmp: Path, **kw: Any) -> ServerSettings:
    return ServerSettings(home=tmp / "home", schedule_interval_s=0.05, **kw)


def _ctx(api: Any) -> Context:
    ctx: Context = api.app.state.ctx
    return ctx


def test_a_second_user_brings_the_multi_user_rules(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "x").write_text("x")
    with serve(settings(tmp_path)) as api:
        ctx = _ctx(api)
        owner = admin_token(ctx.settings.home)
        # one person: their own local files, apps as the server's user
        local = {"inputs": [{"url": f"file://{data}/x", "path": "x"}]}
        mine = submit(api, tmp_path, owner, "true\n", **local)
        assert mine.status_code == 201, mine.text
        # finished (as the server's user) before a second user exists: no uid is given to it
        done = wait_for(
            lambda: (
                (a := api.get(f"/api/v1/apps/{mine.json()['id']}", headers=bearer(owner)).json())[
                    "state"
                ]
                == "FINISHED"
                and a
            ),
            30,
            "the owner's app",
        )
        assert done["final_status"] == "SUCCEEDED", done
        with ctx.sessions() as s:
            assert not tenancy.multi_user(ctx, s)
            assert tenancy.account_plan(ctx, s, "anyone") is None
        token = add_user(api, ctx.settings.home, "alice")
        # two: unset file_roots allow no local path, and apps get accounts
        refused = submit(api, tmp_path, token, "true\n", **local)
        assert refused.status_code == 400, refused.text
        assert "local paths are not allowed" in refused.text
        with ctx.sessions() as s:
            assert tenancy.multi_user(ctx, s)
            plan = tenancy.account_plan(ctx, s, "alice")
            # the uid of a dlapp-alice a former server left on this machine, else the range's
            # first uid that no other account here holds
            first = unix_accounts.adoptable_uid("dlapp-alice") or next(
                u for u in range(200_000, 300_000) if uid_free_for("dlapp-alice", u)
            )
            assert plan == AccountPlan("alice", first, "dlapp-", True)
            s.commit()
            assert accounts.uids(s) == {"alice": first}


def _alices_uid(api: Any, ctx: Context, tmp: Path) -> int:
    """Users alice and bob (so the multi-user rules apply); the uid alice's app ran as."""
    token = add_user(api, ctx.settings.home, "alice")
    add_user(api, ctx.settings.home, "bob")
    resp = submit(api, tmp, token, "id -u\n")
    assert resp.status_code == 201, resp.text
    done = wait_finished(api, resp.json()["id"], token, timeout=60)
    assert done["final_status"] == "SUCCEEDED", done
    log = api.get(f"/api/v1/apps/{done['id']}/logs", headers=bearer(token))
    return int(log.text.strip().splitlines()[-1])


@pytest.mark.skipif(os.geteuid() != 0, reason="making Unix accounts needs root")
def test_an_account_left_on_the_range_s_first_uid_is_stepped_over(tmp_path: Path) -> None:
    """CI's machine once kept an account a former run made (dlapp-chaos on uid 200000): every
    app of a new server's first user failed 'uid 200000 belongs to dlapp-chaos'."""
    import subprocess

    first = next(u for u in range(243_000, 244_000) if all(uid_free_for("", v) for v in (u, u + 1)))
    left = f"dlt-left{os.getpid()}"
    prefix = f"dls{os.getpid() % 10_000}-"  # its own: no account left by another test adopted
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--uid", str(first), "--user-group", left],
        check=True,
        capture_output=True,
    )
    try:
        with serve(
            settings(tmp_path, app_uid_range=(first, first + 9), app_account_prefix=prefix)
        ) as api:
            ctx = _ctx(api)
            uid = _alices_uid(api, ctx, tmp_path)
            with ctx.sessions() as s:
                assert accounts.uids(s) == {"alice": first + 1}
            assert uid == first + 1
    finally:
        for name in (left, f"{prefix}alice", f"{prefix}bob"):
            subprocess.run(["userdel", name], capture_output=True, check=False)
            subprocess.run(["groupdel", name], capture_output=True, check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="making Unix accounts needs root")
def test_a_users_account_left_by_a_former_server_is_adopted(tmp_path: Path) -> None:
    """CI's machine kept dlt-alice (uid 250000) from a run killed before its teardown; the next
    run's server gave alice uid 250101 from its range, and every app of hers failed
    "'dlt-alice' exists". The account is hers: she gets its uid back, outside the range too."""
    import subprocess

    left = next(u for u in range(246_000, 247_000) if uid_free_for("", u))
    prefix = f"dlt{os.getpid() % 10_000}-"
    name = f"{prefix}alice"
    for argv in (
        ["groupadd", "--gid", str(left), name],
        ["useradd", "--no-create-home", "--uid", str(left), "--gid", str(left), name],
    ):
        made = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert made.returncode == 0, made.stderr
    try:
        assert unix_accounts.adoptable_uid(name) == left
        assert unix_accounts.adoptable_uid(f"{prefix}nobody-such") is None
        first = next(u for u in range(247_000, 248_000) if uid_free_for("", u))
        with serve(
            settings(tmp_path, app_uid_range=(first, first + 9), app_account_prefix=prefix)
        ) as api:
            ctx = _ctx(api)
            uid = _alices_uid(api, ctx, tmp_path)
            with ctx.sessions() as s:
                assert accounts.uids(s) == {"alice": left}
                # bob, with no account left behind, gets the range's first uid
                assert tenancy.account_plan(ctx, s, "bob", multi=True).uid == first  # type: ignore[union-attr]
            assert uid == left
    finally:
        for user in ("alice", "bob"):
            subprocess.run(["userdel", f"{prefix}{user}"], capture_output=True, check=False)
            subprocess.run(["groupdel", f"{prefix}{user}"], capture_output=True, check=False)


def test_a_single_tenancy_server_keeps_the_one_person_rules(tmp_path: Path) -> None:
    with serve(settings(tmp_path, tenancy="single")) as api:
        ctx = _ctx(api)
        add_user(api, ctx.settings.home, "alice")
        with ctx.sessions() as s:
            assert not tenancy.multi_user(ctx, s)


def test_runtimes_are_refused_by_the_cluster_and_by_the_queue(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "queues.yaml").write_text(
        "queues:\n"
        "  open: {guaranteed: {gpus: 50%}}\n"
        "  boxed: {guaranteed: {gpus: 50%}, runtimes: [docker]}\n"
    )
    with serve(settings(tmp_path, runtimes=("process", "docker"))) as api:
        token = admin_token(home)
        podman = submit(api, tmp_path, token, "true\n", queue="open", runtime="podman")
        assert podman.status_code == 403, podman.text
        assert (
            "runtime 'podman' is not allowed on this cluster (allowed: process, docker)"
            in (podman.json()["error"]["message"])
        )
        boxed = submit(api, tmp_path, token, "true\n", queue="boxed")
        assert boxed.status_code == 403, boxed.text
        assert (
            "runtime 'process' is not allowed in queue root.boxed (allowed: docker)"
            in (boxed.json()["error"]["message"])
        )
        assert submit(api, tmp_path, token, "true\n", queue="open").status_code == 201


def test_the_process_runtime_is_refused_where_accounts_cannot_be_switched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tenancy, "can_switch", lambda: False)  # a server not running as root
    with serve(settings(tmp_path, tenancy="multi")) as api:
        token = admin_token(tmp_path / "home")
        refused = submit(api, tmp_path, token, "true\n")
        assert refused.status_code == 400, refused.text
        assert "use runtime: docker" in refused.json()["error"]["message"]


def test_the_servers_own_files_are_never_data_whatever_the_roots(tmp_path: Path) -> None:
    with serve(settings(tmp_path, file_roots=(str(tmp_path),))) as api:
        home = tmp_path / "home"
        token = admin_token(home)
        for binding in (
            {"inputs": [{"url": f"file://{home}/admin.token", "path": "t"}]},
            {"inputs": [{"url": str(home / "dlapp.db"), "path": "db"}]},  # a plain path too
            {"outputs": [{"url": f"file://{home}/artifacts/x", "path": "o"}]},
            {"outputs": [{"url": f"file://{tmp_path}", "path": "o", "overwrite": True}]},
        ):
            resp = submit(api, tmp_path, token, "true\n", **binding)
            assert resp.status_code == 403, (binding, resp.text)
            assert "the server's own files are never an app's data" in resp.text
        kept = list((home / "artifacts" / "workspaces").glob("*"))
        assert kept == []  # nothing was kept of the refused apps


def test_the_servers_home_is_its_own_at_rest(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    (home / "admin.token").write_text("t")
    (home / "admin.token").chmod(0o644)  # as an older version left it
    (home / "dlapp.db").write_text("")
    (home / "dlapp.db").chmod(0o644)
    (home / "artifacts").mkdir(mode=0o755)
    changed = files.harden(ServerSettings(home=home))
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "admin.token").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "dlapp.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "artifacts").stat().st_mode) == 0o700
    assert home in changed and files.harden(ServerSettings(home=home)) == []


def test_rays_token_file_becomes_private(tmp_path: Path) -> None:
    from dlapp.executor.ray import private_ray_files, private_temp_dir

    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir(mode=0o755)
    token.write_text("secret")
    token.chmod(0o644)  # as Ray 2.60 writes it
    assert private_ray_files(home=tmp_path) == [token, token.parent]
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    temp = private_temp_dir()
    try:
        assert stat.S_IMODE(temp.parent.stat().st_mode) == 0o700
        assert temp.parent.stat().st_uid == os.geteuid()
        assert (
            len(str(temp))
            + len("/session_2026-12-02_18-06-50_575525_18623")
            + len("/sockets/plasma_store")
            < 108
        )  # a Unix socket's path
    finally:
        temp.parent.rmdir()
