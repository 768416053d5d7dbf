"""The embedded default: `dlapp launch` with no server starts a local cluster; `down` stops it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from dlapp import embedded
from dlapp.cli import main as cli

from conftest import AppFactory, wait_for

pytestmark = pytest.mark.cluster


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists()
        and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )


def test_launch_starts_the_embedded_cluster_and_down_stops_it(
    tmp_path: Path,
    make_app: AppFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("DLAPP_HOME", str(home))
    monkeypatch.delenv("DLAPP_SERVER", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no client config file
    assert cli.main(["list"]) == 1
    assert "dlapp up" in capsys.readouterr().err  # nothing runs yet, and it says what to do
    spec = make_app("echo embedded-ok\n", name="emb")
    try:
        assert cli.main(["launch", str(spec), "--wait", "--follow"]) == 0
        captured = capsys.readouterr()
        assert "starting the embedded local cluster" in captured.err
        assert "embedded-ok" in captured.out and "FINISHED SUCCEEDED" in captured.out
        info = embedded.running(home)
        assert info is not None and (home / "dlapp.db").exists()
        assert cli.main(["up"]) == 0
        assert "already running" in capsys.readouterr().out
        assert cli.main(["gpus", "--json"]) == 0
        nodes = json.loads(capsys.readouterr().out)["nodes"]
        assert len(nodes) == 1 and nodes[0]["alive"]
    finally:
        assert cli.main(["down"]) == 0
    assert "stopped" in capsys.readouterr().out
    wait_for(lambda: not _alive(info.pid), 30, "the server to exit")
    assert embedded.running(home) is None
    assert cli.main(["down"]) == 0
    assert "no embedded cluster was running" in capsys.readouterr().out


def test_up_declares_gpus_on_a_machine_without_any(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("DLAPP_HOME", str(home))
    monkeypatch.delenv("DLAPP_SERVER", raising=False)
    try:
        assert cli.main(["up", "--gpus", "3", "--cpus", "2"]) == 0
        up = capsys.readouterr().out
        # a free port, not 8642: its dashboard as `up` prints it, with where the token is
        info = embedded.running(home)
        assert info is not None and f"started: {info.url}" in up
        assert f"dashboard: {info.url}/dashboard/ " in up and str(home / "admin.token") in up
        assert httpx.get(f"{info.url}/dashboard/").status_code == 200  # a browser opens it
        assert cli.main(["gpus", "--json"]) == 0
        (node,) = json.loads(capsys.readouterr().out)["nodes"]
        assert [g["id"] for g in node["gpus"]] == ["0", "1", "2"]
        assert all(g["app_id"] is None for g in node["gpus"])
    finally:
        cli.main(["down"])
