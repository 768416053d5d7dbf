"""The CLI on arrays through main(argv), against a live in-process server: launch --array and
a sweep, status of an array and of one member, list grouped and --array, kill an array."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dlapp.cli import main as cli
from dlapp.client import DlappClient
from dlapp.config import ServerSettings

from conftest import wait_for
from inprocess import admin_token, live

ARRAY_ID = re.compile(r"submitted: (array_\d+_\d{4}), an array of (\d+) apps")


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DlappClient]:
    home = tmp_path / "home"
    with live(ServerSettings(home=home, schedule_interval_s=0.05)) as url:
        monkeypatch.setenv("DLAPP_SERVER", url)
        monkeypatch.setenv("DLAPP_TOKEN", admin_token(home))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
        with DlappClient(url, admin_token(home)) as client:
            yield client


def spec_file(tmp: Path, script: str, **extra: Any) -> Path:
    ws = tmp / "ws"
    ws.mkdir(exist_ok=True)
    (ws / "run.sh").write_text(script)
    spec = tmp / "app.yaml"
    data = {
        "name": "arr",
        "workspace": {"path": str(ws)},
        "entry": {"script": "run.sh"},
        "resources": {"memory": "64M"},
        **extra,
    }
    spec.write_text(yaml.safe_dump(data))
    return spec


def launched(out: str) -> tuple[str, int]:
    m = ARRAY_ID.search(out)
    assert m, out
    return m.group(1), int(m.group(2))


def test_launch_array_wait_status_and_one_member(
    server: DlappClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = spec_file(tmp_path, 'echo "member $DLAPP_ARRAY_INDEX"\n')
    assert cli.main(["launch", str(spec), "--array", "0-2%2", "--wait"]) == 0
    out = capsys.readouterr().out
    array_id, size = launched(out)
    assert size == 3 and "at most 2 running at once" in out
    assert f"{array_id} FINISHED: 3 SUCCEEDED, 0 FAILED, 0 KILLED" in out
    assert cli.main(["status", array_id]) == 0
    out = capsys.readouterr().out
    assert f"Array ID       : {array_id}" in out
    assert "Size           : 3 apps (0-2%2)" in out and "Running limit  : 2" in out, out
    assert "0 ACCEPTED, 0 RUNNING, 3 SUCCEEDED" in out
    assert cli.main(["status", f"{array_id}_1"]) == 0
    out = capsys.readouterr().out
    assert f"Array member   : {array_id}_1 (index 1)" in out and "SUCCEEDED" in out
    member = server.get(f"{array_id}_1")
    assert server.logs(member["id"]) == "member 1\n"


def test_a_sweep_launched_from_its_spec_shows_its_values(
    server: DlappClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = spec_file(tmp_path, "true\n", sweep={"lr": [0.1, 0.2], "opt": ["adam"]})
    assert cli.main(["launch", str(spec), "--wait"]) == 0
    array_id, size = launched(capsys.readouterr().out)
    assert size == 2
    assert cli.main(["status", f"{array_id}_1"]) == 0
    out = capsys.readouterr().out
    assert "  lr = 0.2" in out and "  opt = adam" in out
    assert cli.main(["status", array_id]) == 0
    assert "Sweep          : {'lr': [0.1, 0.2], 'opt': ['adam']}" in capsys.readouterr().out


def test_list_groups_an_array_and_kill_ends_every_member(
    server: DlappClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = spec_file(tmp_path, "sleep 30\n")
    assert cli.main(["launch", str(spec), "--array", "0-4%1"]) == 0
    array_id, _ = launched(capsys.readouterr().out)
    wait_for(lambda: server.get_array(array_id)["counts"]["RUNNING"] == 1, 20, "one running")
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert f"{array_id} [5 apps]" in out and "ARRAY" in out and "1 RUNNING" in out
    assert "array limit 1 running" in out
    assert out.count("application_") == 0  # the members are one row
    assert cli.main(["list", "--array", array_id]) == 0
    out = capsys.readouterr().out
    assert all(f"({array_id}_{i})" in out for i in range(5))
    assert cli.main(["kill", array_id]) == 0
    out = capsys.readouterr().out
    assert f"kill sent to {array_id}: 4 queued members killed, 1 running members stopping" in out
    wait_for(lambda: server.get_array(array_id)["counts"]["KILLED"] == 5, 20, "all killed")
    assert cli.main(["kill", array_id]) == 1
    assert "every member has finished already" in capsys.readouterr().err


def test_bad_array_syntax_is_refused_before_anything_is_sent(
    server: DlappClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = spec_file(tmp_path, "true\n")
    assert cli.main(["launch", str(spec), "--array", "0-9%0"]) == 1
    assert "running limit after % must be a whole number of at least 1" in capsys.readouterr().err
    assert cli.main(["launch", str(spec), "--array", "1-3", "--follow"]) == 1
    assert "--follow follows one app" in capsys.readouterr().err
    assert server.list_arrays() == [] and server.list_apps() == []
