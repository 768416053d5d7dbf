"""`dlapp admin ...`, `dlapp login` and the client's token files, against a real HTTP server
(uvicorn in a thread over the LocalExecutor), through ``dlapp.cli.main``."""

from __future__ import annotations

import io
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from dlapp import embedded
from dlapp.cli import main as cli
from dlapp.client import DlappClient
from dlapp.config import ServerSettings, load_client_settings
from dlapp.credentials import read_private, write_private
from dlapp.errors import DlappError

from inprocess import admin_token, live

TOKEN = re.compile(r"^dlapp_[A-Za-z0-9_-]{40,}$", re.MULTILINE)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """A live server; the CLI points at it as its first admin, with no client config file."""
    home = tmp_path / "home"
    with live(ServerSettings(home=home, schedule_interval_s=0.05)) as url:
        monkeypatch.setenv("DLAPP_SERVER", url)
        monkeypatch.setenv("DLAPP_TOKEN", admin_token(home))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
        yield url, home


def test_admin_commands_manage_users_tokens_and_the_audit_log(
    server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = os.environ["DLAPP_TOKEN"]
    assert cli.main(["admin", "user", "add", "carol", "--group", "ml", "--group", "vision"]) == 0
    out = capsys.readouterr().out
    assert "added user carol (groups ml, vision)" in out and "shown only this once" in out
    (first,) = TOKEN.findall(out)
    assert cli.main(["admin", "user", "add", "ops", "--admin", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["user"]["is_admin"] and TOKEN.fullmatch(made["token"])
    assert cli.main(["admin", "user", "list", "--json"]) == 0
    listing = capsys.readouterr().out
    users = {u["name"]: u for u in json.loads(listing)}
    assert users["carol"]["groups"] == ["ml", "vision"] and not users["carol"]["is_admin"]
    assert first not in listing and made["token"] not in listing
    assert cli.main(["admin", "user", "list"]) == 0
    assert "carol" in capsys.readouterr().out
    assert cli.main(["admin", "token", "rotate", "carol"]) == 0
    (second,) = TOKEN.findall(capsys.readouterr().out)
    assert second != first
    # carol, with her new token: her own apps yes, admin commands no
    monkeypatch.setenv("DLAPP_TOKEN", second)
    assert cli.main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli.main(["admin", "user", "list"]) == 1
    assert "carol is not a cluster admin" in capsys.readouterr().err
    monkeypatch.setenv("DLAPP_TOKEN", first)
    assert cli.main(["list"]) == 1
    assert "invalid or revoked token" in capsys.readouterr().err
    # revoke and disable
    monkeypatch.setenv("DLAPP_TOKEN", admin)
    assert cli.main(["admin", "token", "revoke", "carol"]) == 0
    assert "revoked 1 token(s) of carol" in capsys.readouterr().out
    assert cli.main(["admin", "user", "disable", "ops"]) == 0
    assert cli.main(["admin", "user", "enable", "ops"]) == 0
    assert cli.main(["admin", "user", "disable", "nobody"]) == 1
    assert "no user nobody" in capsys.readouterr().err
    monkeypatch.setenv("DLAPP_TOKEN", second)
    assert cli.main(["list"]) == 1
    monkeypatch.setenv("DLAPP_TOKEN", admin)
    assert cli.main(["admin", "audit", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    changes = [e for e in reversed(entries) if e["action"] != "login.failed"]
    assert {e["user"] for e in entries if e["action"] == "login.failed"} == {"carol"}
    assert [(e["action"], e["target"]) for e in changes][1:] == [
        ("user.add", "carol"),
        ("user.add", "ops"),
        ("token.rotate", "carol"),
        ("token.revoke", "carol"),
        ("user.disable", "ops"),
        ("user.enable", "ops"),
    ]
    assert cli.main(["admin", "audit", "--action", "user.add"]) == 0
    table = capsys.readouterr().out
    assert "carol" in table and "token.rotate" not in table
    for secret in (first, second, made["token"], admin):
        assert secret not in json.dumps(entries)


def new_user_without_env(
    server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> tuple[str, str, Path]:
    """(server URL, a new user's token, where the CLI's config file goes) with DLAPP_SERVER and
    DLAPP_TOKEN unset, so the CLI reads its config file."""
    url, home = server
    with DlappClient(url, admin_token(home)) as c:
        token: str = c.admin_add_user(name)["token"]
    monkeypatch.delenv("DLAPP_SERVER")
    monkeypatch.delenv("DLAPP_TOKEN")
    return url, token, tmp_path / "config" / "dlapp" / "client.yaml"


def test_login_saves_a_private_config_that_the_cli_then_uses(
    server: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    url, dana, path = new_user_without_env(server, monkeypatch, tmp_path, "dana")
    monkeypatch.setattr("sys.stdin", io.StringIO("dlapp_wrong\n"))
    assert cli.main(["login", url, "--token-stdin"]) == 1
    assert "invalid or revoked token" in capsys.readouterr().err and not path.exists()
    monkeypatch.setattr("sys.stdin", io.StringIO(dana + "\n"))
    assert cli.main(["login", url, "--token-stdin"]) == 0
    assert f"logged in to {url} as dana" in capsys.readouterr().out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert yaml.safe_load(path.read_text()) == {"server": url, "token": dana}
    assert dana not in repr(load_client_settings())
    assert cli.main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    path.chmod(0o644)
    assert cli.main(["list"]) == 1
    err = capsys.readouterr().err
    assert "other users can read or write it (mode 0644)" in err and "chmod 600" in err
    assert dana not in err


def test_a_configured_server_without_a_token_says_how_to_log_in(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DLAPP_SERVER", "http://127.0.0.1:9")
    monkeypatch.delenv("DLAPP_TOKEN", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert cli.main(["list"]) == 1
    assert "no token for http://127.0.0.1:9: run `dlapp login" in capsys.readouterr().err


def test_the_embedded_cluster_is_used_with_its_admin_token(
    server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url, home = server
    monkeypatch.delenv("DLAPP_SERVER")
    monkeypatch.delenv("DLAPP_TOKEN")
    monkeypatch.setenv("DLAPP_HOME", str(home))
    monkeypatch.setattr(embedded, "running", lambda h: embedded.Running(url, os.getpid()))
    assert cli.main(["admin", "user", "list", "--json"]) == 0
    assert [u["is_admin"] for u in json.loads(capsys.readouterr().out)] == [True]
    (home / "admin.token").chmod(0o640)
    assert cli.main(["list"]) == 1
    assert "refusing to read the embedded cluster's admin token" in capsys.readouterr().err


# -- the client config file -------------------------------------------------------------------


def _config(tmp_path: Path, text: str, mode: int) -> dict[str, str]:
    path = tmp_path / "dlapp" / "client.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return {"XDG_CONFIG_HOME": str(tmp_path)}


def test_a_token_in_a_config_others_can_read_is_refused(tmp_path: Path) -> None:
    env = _config(tmp_path, "server: http://x\ntoken: dlapp_secret\n", 0o644)
    with pytest.raises(DlappError, match=r"mode 0644\); run `chmod 600") as err:
        load_client_settings(env)
    assert "dlapp_secret" not in str(err.value)
    env = _config(tmp_path, "server: http://x\ntoken: dlapp_secret\n", 0o600)
    settings = load_client_settings(env)
    assert settings.token is not None and settings.token.get_secret_value() == "dlapp_secret"
    assert "dlapp_secret" not in repr(settings)


def test_the_environment_token_wins_and_a_config_without_a_token_may_be_public(
    tmp_path: Path,
) -> None:
    env = _config(tmp_path, "server: http://x\ntoken: dlapp_file\n", 0o644)
    settings = load_client_settings({**env, "DLAPP_TOKEN": "dlapp_env"})
    assert settings.token is not None and settings.token.get_secret_value() == "dlapp_env"
    env = _config(tmp_path, "server: http://x\n", 0o644)
    assert load_client_settings(env).token is None
    env = _config(tmp_path, "server: http://x\nuser: alice\n", 0o600)
    with pytest.raises(DlappError, match="user: Extra inputs are not permitted"):
        load_client_settings(env)


def test_private_files_are_written_0600_and_read_only_when_private(tmp_path: Path) -> None:
    path = tmp_path / "new" / "secret"
    write_private(path, "dlapp_x\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert read_private(path) == "dlapp_x"
    write_private(path, "dlapp_y\n")  # replaced whole
    assert read_private(path) == "dlapp_y"
    path.chmod(0o604)
    with pytest.raises(DlappError, match="mode 0604"):
        read_private(path)
    with pytest.raises(DlappError, match="does not exist"):
        read_private(tmp_path / "missing")


def test_a_token_in_the_environment_reaches_neither_apps_nor_the_embedded_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dlapp.runtime import LaunchRequest
    from dlapp.runtime.process import app_env

    monkeypatch.setenv("DLAPP_TOKEN", "dlapp_secret")
    req = LaunchRequest(
        "application_1_0001", 0, tmp_path, "run.sh", (), {"A": "1"}, tmp_path / "o", tmp_path / "e"
    )
    env = app_env(req)
    assert "DLAPP_TOKEN" not in env and env["A"] == "1"
    spawned: list[dict[str, str]] = []

    class Stop(Exception):
        pass

    def popen(*args: object, **kwargs: dict[str, str]) -> None:
        spawned.append(kwargs["env"])
        raise Stop

    monkeypatch.setattr(embedded.subprocess, "Popen", popen)
    with pytest.raises(Stop):
        embedded.up(tmp_path / "home")
    assert "DLAPP_TOKEN" not in spawned[0] and "PATH" in spawned[0]


# -- dlapp token rotate: anyone's own token ---------------------------------------------------


def _is_refused(url: str, token: str) -> bool:
    with DlappClient(url, token) as c:
        try:
            c.whoami()
        except DlappError as exc:
            return "invalid or revoked token" in str(exc)
    return False


def test_token_rotate_replaces_the_token_in_the_client_config(
    server: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    url, erin, path = new_user_without_env(server, monkeypatch, tmp_path, "erin")
    write_private(path, yaml.safe_dump({"server": url, "token": erin, "timeout_s": 12.0}))
    assert cli.main(["token", "rotate"]) == 0
    out = capsys.readouterr().out
    (new,) = TOKEN.findall(out)
    assert new != erin and "new token for erin (shown only this once" in out
    assert f"saved in {path} (mode 0600)" in out
    assert _is_refused(url, erin)  # the old one stops working at once
    assert yaml.safe_load(path.read_text()) == {"server": url, "token": new, "timeout_s": 12.0}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cli.main(["list", "--json"]) == 0  # the CLI goes on with the saved token
    assert json.loads(capsys.readouterr().out) == []
    with DlappClient(url, admin_token(server[1])) as c:
        (entry,) = c.admin_audit(action="token.rotate")
    assert (entry["user"], entry["target"]) == ("erin", "erin")
    assert new not in json.dumps(entry) and erin not in json.dumps(entry)


def test_token_rotate_with_dlapp_token_prints_it_and_writes_no_file(
    server: tuple[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    url, home = server
    with DlappClient(url, admin_token(home)) as c:
        fred = c.admin_add_user("fred")["token"]
    monkeypatch.setenv("DLAPP_TOKEN", fred)
    assert cli.main(["token", "rotate"]) == 0
    out = capsys.readouterr().out
    (new,) = TOKEN.findall(out)
    assert "DLAPP_TOKEN still holds the old token" in out
    assert _is_refused(url, fred) and not _is_refused(url, new)
    assert not (tmp_path / "config").exists()


def test_token_rotate_on_the_embedded_cluster_rewrites_its_admin_token(
    server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url, home = server
    old = admin_token(home)
    monkeypatch.delenv("DLAPP_SERVER")
    monkeypatch.delenv("DLAPP_TOKEN")
    monkeypatch.setenv("DLAPP_HOME", str(home))
    monkeypatch.setattr(embedded, "running", lambda h: embedded.Running(url, os.getpid()))
    assert cli.main(["token", "rotate"]) == 0
    out = capsys.readouterr().out
    (new,) = TOKEN.findall(out)
    assert f"saved in {home / 'admin.token'}" in out
    assert read_private(home / "admin.token") == new
    assert stat.S_IMODE((home / "admin.token").stat().st_mode) == 0o600
    assert _is_refused(url, old)
    assert cli.main(["admin", "user", "list", "--json"]) == 0  # still the admin, new token
    assert [u["is_admin"] for u in json.loads(capsys.readouterr().out)] == [True]


def test_the_sdk_goes_on_with_its_rotated_token(server: tuple[str, Path]) -> None:
    url, home = server
    with DlappClient(url, admin_token(home)) as admin:
        gina = admin.admin_add_user("gina")["token"]
    with DlappClient(url, gina) as c:
        new = c.rotate_my_token()
        assert c.whoami()["name"] == "gina"  # this client holds the new one
    assert TOKEN.fullmatch(new) and _is_refused(url, gina)
