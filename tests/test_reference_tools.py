"""The reference system's tool names (dlapp-launcher, -status, -list, -kill, -softkill, -shell,
-run): installed, each with its help, and saying so when USER names someone else or no one."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from dlapp.cli import main as cli
from dlapp.cli.containers import run, shell
from dlapp.client import DlappClient

from conftest import AppFactory, wait_running

REFERENCE = {
    "dlapp-launcher": (cli.launcher_main, "SPEC_FILE", "Launch the app"),
    "dlapp-status": (cli.status_main, "APP_ID", "Show one app"),
    "dlapp-list": (cli.list_main, "[USER]", "List apps"),
    "dlapp-kill": (cli.kill_main, "[USER] APP_ID", "End an app now"),
    "dlapp-softkill": (cli.softkill_main, "[USER] APP_ID", "SIGTERM an app"),
    # the commands of `dlapp shell` and `dlapp run`, with their help
    "dlapp-shell": (cli.shell_main, "SPEC_FILE", " ".join((shell.help or "?").split()[:4])),
    "dlapp-run": (cli.run_main, "[SPEC_FILE]", " ".join((run.help or "?").split()[:4])),
}


def _launched_id(text: str) -> str:
    m = re.search(r"submitted: (application_\d+_\d+)", text)
    assert m, text
    return m.group(1)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_each_reference_name_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    main, usage, words = REFERENCE[name]
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert f"Usage: {name} " in text and usage in text
    assert words in " ".join(text.split()), text


def test_every_reference_name_is_an_installed_command() -> None:
    scripts = {e.name: e for e in entry_points(group="console_scripts")}
    for name, (main, *_) in REFERENCE.items():
        assert name in scripts and scripts[name].load() is main, name
    bindir = Path(sys.executable).parent
    for name in ("dlapp-shell", "dlapp-run"):
        done = subprocess.run(
            [str(bindir / name), "--help"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and f"Usage: {name}" in done.stdout, done.stderr


def test_dlapp_list_of_an_unknown_user_says_so(
    use_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.list_main(["tony"]) == 1
    assert "no user 'tony' on this server" in capsys.readouterr().err


def test_dlapp_kill_refuses_an_app_that_is_not_users(
    use_server: str,
    make_app: AppFactory,
    client: DlappClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = make_app("sleep 60\n", name="owned")
    assert cli.launcher_main([str(spec)]) == 0
    app_id = _launched_id(capsys.readouterr().out)
    wait_running(client, app_id)
    for main in (cli.kill_main, cli.softkill_main):
        assert main(["tony", app_id]) == 1
        assert f"{app_id} is alice's app, not tony's: nothing was killed" in (
            capsys.readouterr().err
        )
    assert client.get(app_id)["state"] == "RUNNING"
    assert cli.kill_main(["alice", app_id]) == 0
    assert client.wait(app_id, timeout_s=30)["final_status"] == "KILLED"


def test_the_launcher_warns_that_username_is_ignored(
    use_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "start.sh").write_text("echo hi\n")
    props = tmp_path / "dl_app.properties"
    props.write_text(
        "[application]\nusername=tony\nappname=u\nuser_dev_workspace_path=./ws\n"
        "user_shell_script=start.sh\nmemory=256M\n"
    )
    assert cli.launcher_main([str(props)]) == 0
    err = capsys.readouterr().err
    assert "username=tony, which dlapp ignores: the app runs as the user of your token, alice" in (
        err
    )
    props.write_text(props.read_text().replace("username=tony", "username=alice"))
    assert cli.launcher_main([str(props)]) == 0
    assert "ignores" not in capsys.readouterr().err  # it names the caller: nothing to say
