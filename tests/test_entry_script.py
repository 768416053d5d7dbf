"""A missing or unstartable entry script is refused at launch, before the upload (and before an
embedded cluster is started for it), and again by the server at submit: never after a wait in
the queue. Real files, the real CLI through ``main(argv)``, the real server in-process."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml

from dlapp.cli import main as cli
from dlapp.config import ServerSettings
from dlapp.data.workspace import check_entry_script, inspect_tarball, pack_workspace
from dlapp.errors import WorkspaceError
from dlapp.spec import AppSpec

from inprocess import admin_token, bearer, serve


def _tarball(path: Path, *members: tuple[str, bytes, str, int]) -> Path:
    """Members as (name, tar type, link target, mode); files hold one line."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, link, mode in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = kind, link, mode
            data = b"echo hi\n" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


REG, DIR, SYM = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE


@pytest.mark.parametrize(
    ("members", "script", "problem"),
    [
        ([("run.sh", REG, "", 0o644)], "train.sh", "'train.sh' is not in the workspace"),
        ([("bin", DIR, "", 0o755)], "bin", "'bin' is a directory"),
        ([("train", REG, "", 0o644)], "train", "'train' is not executable: make it executable"),
        ([("a", SYM, "b", 0o777), ("b", SYM, "a", 0o777)], "a", "in a loop"),
        ([("go.sh", SYM, "gone.sh", 0o777)], "go.sh", "'go.sh' is not in the workspace"),
    ],
)
def test_the_server_refuses_a_tarball_that_cannot_start_its_entry(
    tmp_path: Path, members: list[tuple[str, bytes, str, int]], script: str, problem: str
) -> None:
    tarball = _tarball(tmp_path / "w.tar.gz", *members)
    with pytest.raises(WorkspaceError, match=problem):
        inspect_tarball(tarball, entry=script)


def test_an_entry_through_links_inside_the_workspace_is_found(tmp_path: Path) -> None:
    tarball = _tarball(
        tmp_path / "w.tar.gz",
        ("./tools", DIR, "", 0o755),
        ("tools/train", REG, "", 0o755),
        ("bin", SYM, "tools", 0o777),
        ("start", SYM, "bin/train", 0o777),
    )
    assert inspect_tarball(tarball, entry="start") == (1, len(b"echo hi\n"))
    assert inspect_tarball(tarball, entry="bin/train") == (1, len(b"echo hi\n"))


def test_the_client_names_the_exclude_pattern_that_leaves_the_entry_out(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "scripts").mkdir(parents=True)
    (ws / "scripts" / "run.sh").write_text("echo hi\n")
    check_entry_script(ws, [], "scripts/run.sh")
    with pytest.raises(WorkspaceError, match=r"left out by the exclude list \(scripts\)"):
        check_entry_script(ws, ["scripts/"], "scripts/run.sh")
    with pytest.raises(WorkspaceError, match=f"'train.py' is not in the workspace .*{ws}"):
        check_entry_script(ws, [], "train.py")
    (ws / "outside").symlink_to(tmp_path)
    with pytest.raises(WorkspaceError, match="points outside the workspace"):
        check_entry_script(ws, [], "outside/ws/scripts/run.sh")


def test_launch_refuses_a_missing_entry_before_starting_a_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No server configured: ``launch`` would start the embedded cluster; a spec whose entry
    script is missing is refused first, and nothing is started."""
    home = tmp_path / "home"
    monkeypatch.setenv("DLAPP_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-client-config"))
    monkeypatch.delenv("DLAPP_SERVER", raising=False)
    monkeypatch.delenv("DLAPP_TOKEN", raising=False)
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "train.py").write_text("print('hi')\n")
    spec = tmp_path / "app.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"name": "typo", "workspace": {"path": "ws"}, "entry": {"script": "tran.py"}}
        )
    )
    assert cli.main(["launch", str(spec)]) == 1
    captured = capsys.readouterr()
    assert "entry script 'tran.py' is not in the workspace" in captured.err
    assert "starting the embedded local cluster" not in captured.err
    assert not home.exists()


def test_the_api_refuses_a_workspace_without_its_entry_script(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "run.sh").write_text("echo hi\n")
    tarball = pack_workspace(ws, tmp_path / "w.tar.gz").path
    settings = ServerSettings(home=tmp_path / "home", schedule_interval_s=0.05)
    spec = AppSpec.from_dict({"name": "t", "entry": {"script": "train.sh"}})
    with serve(settings) as api:
        resp = api.post(
            "/api/v1/apps",
            headers=bearer(admin_token(settings.home)),
            data={"spec": json.dumps(spec.to_dict())},
            files={"workspace": ("w.tar.gz", tarball.read_bytes(), "application/gzip")},
        )
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["code"] == "bad_workspace"
        assert "entry script 'train.sh' is not in the workspace" in error["message"]
        assert (
            api.get("/api/v1/apps", headers=bearer(admin_token(settings.home))).json()["apps"] == []
        )
