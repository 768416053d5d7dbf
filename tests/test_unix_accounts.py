"""Apps act as their users' Unix accounts: the guard's switch, the process runtime's clean
environment, accounts made from the range, staging helpers that act as the account.

These run as root (as CI does): they make Unix accounts and remove them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlapp import unix_accounts
from dlapp.errors import DataError
from dlapp.runtime.base import GUARD_PATH, LaunchRequest
from dlapp.runtime.process import ProcessRuntime
from dlapp.store import accounts as account_store
from dlapp.unix_accounts import Account, AccountError, AccountPlan

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching accounts needs root")

NOBODY_UID = 64_123  # an id no account has: setuid needs no account behind it


def _free_uid(start: int) -> int:
    uid = start
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            try:
                import grp

                grp.getgrgid(uid)
            except KeyError:
                return uid
        uid += 1


@pytest.fixture
def passable_dir() -> Iterator[Path]:
    """A directory every account may pass through (pytest's own is its owner's alone)."""
    path = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="dlapp-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def made_accounts() -> Iterator[list[str]]:
    """Names of the accounts a test made: removed at the end."""
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)


@needs_root
def test_the_guard_runs_the_app_as_the_account_with_no_groups_and_umask_077(
    tmp_path: Path,
) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-I",
            str(GUARD_PATH),
            *("--parent", str(os.getpid()), "--user", f"{NOBODY_UID}:{NOBODY_UID}", "--"),
            *("sh", "-c", "id -u; id -g; id -G; umask"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    assert out.stdout.split() == [str(NOBODY_UID)] * 3 + ["0077"]


@needs_root
def test_an_app_with_an_account_gets_a_clean_environment_and_cannot_read_the_servers_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the node's environment holds what an app must never see
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    monkeypatch.setenv("DLAPP_HOME", "/secret/home")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "node-credential")
    secret = tmp_path / "admin.token"
    secret.write_text("dlapp_admin")
    secret.chmod(0o600)
    account = Account("tester", NOBODY_UID, NOBODY_UID)
    root = tmp_path / "c"
    root.mkdir()
    root.chmod(0o711)
    tmp_path.chmod(0o711)
    work = unix_accounts.private_dir(root / "workspace", account)
    home = unix_accounts.private_dir(root / "home", account)
    (work / "run.sh").write_text(
        f"env | sort > env.txt\nid -u > id.txt\ncat {secret} > stolen.txt 2>/dev/null\n"
        f"echo $? > read.txt\nkill -0 {os.getpid()} 2>/dev/null; echo $? > signal.txt\n"
    )
    req = LaunchRequest(
        app_id="application_1_0001",
        index=0,
        workdir=work,
        script="run.sh",
        args=(),
        env={"DLAPP_APP_ID": "application_1_0001", "MINE": "1"},
        stdout=root / "stdout",
        stderr=root / "stderr",
        account=account,
        home=home,
    )
    assert ProcessRuntime().launch(req).wait(30) == 0
    env = dict(line.split("=", 1) for line in (work / "env.txt").read_text().splitlines())
    assert (work / "id.txt").read_text().strip() == str(NOBODY_UID)
    assert env["HOME"] == str(home) and env["USER"] == "tester" and env["MINE"] == "1"
    assert not [k for k in env if k.startswith("RAY_") or k in ("DLAPP_HOME",)]
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert (work / "read.txt").read_text().strip() != "0"  # the server's file: denied
    assert (work / "stolen.txt").read_text() == ""
    assert (work / "signal.txt").read_text().strip() != "0"  # the server's processes: denied
    assert (work / "env.txt").stat().st_mode & 0o077 == 0  # umask 077


@needs_root
def test_an_account_is_made_from_the_range_once_and_found_again(
    made_accounts: list[str],
) -> None:
    name = f"u{uuid.uuid4().hex[:8]}"
    plan = AccountPlan(user=name, uid=_free_uid(240_000), prefix="dlt-", map_existing=False)
    made_accounts.append(plan.made_name)
    first = unix_accounts.resolve(plan)
    assert (first.name, first.uid, first.gid) == (plan.made_name, plan.uid, plan.uid)
    pw = pwd.getpwnam(plan.made_name)
    assert pw.pw_shell == unix_accounts.NO_SHELL and pw.pw_dir == unix_accounts.NO_HOME
    assert unix_accounts.resolve(plan) == first  # made once


@needs_root
def test_an_app_never_runs_as_an_account_that_holds_its_uid_under_another_name(
    made_accounts: list[str],
) -> None:
    taken = AccountPlan(user="owner1", uid=_free_uid(241_000), prefix="dlt-", map_existing=False)
    made_accounts.append(taken.made_name)
    unix_accounts.resolve(taken)
    thief = AccountPlan(user="thief1", uid=taken.uid, prefix="dlt-", map_existing=False)
    with pytest.raises(AccountError, match=f"uid {taken.uid} belongs to 'dlt-owner1'"):
        unix_accounts.resolve(thief)
    assert _exists(thief.made_name) is False


def test_a_dlapp_user_named_root_is_never_mapped_to_root() -> None:
    plan = AccountPlan(user="root", uid=42, map_existing=True)  # uid under min_uid
    with pytest.raises(AccountError, match="below 1000"):
        unix_accounts.resolve(plan, create=False)
    daemon = AccountPlan(user="daemon", uid=250_777, prefix="dlt-", map_existing=True)
    with pytest.raises(AccountError, match="no Unix account 'dlt-daemon'"):
        unix_accounts.resolve(daemon, create=False)  # not the system account 'daemon'


@needs_root
def test_staging_helpers_act_as_the_account(passable_dir: Path) -> None:
    account = Account("tester", NOBODY_UID, NOBODY_UID)
    tmp_path = passable_dir
    private = tmp_path / "shadow"
    private.write_text("root only")
    private.chmod(0o600)
    public = tmp_path / "public"
    public.write_text("anyone")
    public.chmod(0o644)
    lines: list[str] = []

    def read(path: Path) -> object:
        def fn(say: object) -> int:
            assert callable(say)
            say(f"reading {path.name} as {os.getuid()}")
            return len(path.read_text())

        return fn

    assert unix_accounts.run_as(account, read(public), lines.append) == len("anyone")  # type: ignore[arg-type]
    assert lines == [f"reading public as {NOBODY_UID}"]
    with pytest.raises(DataError, match=r"Permission denied.*as the app's account"):
        unix_accounts.run_as(account, read(private), lines.append)  # type: ignore[arg-type]


def test_uids_are_given_once_each_from_the_range(session: object) -> None:
    from sqlalchemy.orm import Session

    from dlapp.store.models import User

    assert isinstance(session, Session)
    for name in ("a", "b", "c"):
        session.add(User(name=name, created=0.0))
    assert account_store.uid_for(session, "a", 5000, 5001) == 5000
    assert account_store.uid_for(session, "b", 5000, 5001) == 5001
    assert account_store.uid_for(session, "a", 5000, 5001) == 5000  # kept
    session.commit()
    assert account_store.uids(session) == {"a": 5000, "b": 5001}
    with pytest.raises(Exception, match="no free uid left"):
        account_store.uid_for(session, "c", 5000, 5001)
    assert account_store.user_count(session) == 3


def test_a_uid_held_on_this_machine_is_skipped_when_uids_are_given(session: object) -> None:
    from sqlalchemy.orm import Session

    assert isinstance(session, Session)
    held = {5000: "dlapp-left-behind"}  # an account a former server made, say
    usable = lambda uid: held.get(uid, "dlapp-a") == "dlapp-a"  # noqa: E731
    assert account_store.uid_for(session, "a", 5000, 5002, usable) == 5001
    assert account_store.uid_for(session, "b", 5000, 5002, usable) == 5002


@needs_root
def test_a_uid_is_free_for_its_own_account_only(made_accounts: list[str]) -> None:
    left = AccountPlan(user="left1", uid=_free_uid(242_000), prefix="dlt-", map_existing=False)
    made_accounts.append(left.made_name)
    assert unix_accounts.uid_free_for("dlt-other1", left.uid)
    unix_accounts.resolve(left)
    assert unix_accounts.uid_free_for(left.made_name, left.uid)  # its own: given again
    assert not unix_accounts.uid_free_for("dlt-other1", left.uid)  # someone else's: skipped


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
