"""``dlapp shell`` (the argv, and a real shell on a pseudo terminal), ``dlapp run`` and
``dlapp images`` through ``main(argv)``."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dlapp.cli import main as cli
from dlapp.cli.devshell import hold_gpus
from dlapp.errors import InfeasibleError
from docker_support import MINIMAL, require_docker


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    (home / "server.yaml").write_text(yaml.safe_dump({"container": {"gpus": "none"}}))
    monkeypatch.setenv("DLAPP_HOME", str(home))
    return home


def _spec(tmp_path: Path, **extra: object) -> Path:
    ws = tmp_path / "project"
    ws.mkdir(exist_ok=True)
    (ws / "run.sh").write_text("echo hi\n")
    (ws / "notes.txt").write_text("workspace file\n")
    spec = {
        "name": "dev",
        "runtime": "docker",
        "image": MINIMAL,
        "workspace": {"path": "project"},
        "entry": {"script": "run.sh"},
        "resources": {"cpus": 1, "memory": "256M", "gpus": 0},
        "env": {"MY_SETTING": "on"},
        **extra,
    }
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_shell_print_command(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["shell", str(_spec(tmp_path)), "--print-command"]) == 0
    argv = capsys.readouterr().out.splitlines()
    assert argv[:5] == ["docker", "run", "--rm", "--interactive", "--tty"]
    assert f"type=bind,source={tmp_path / 'project'},target=/workspace" in argv
    assert "MY_SETTING=on" in argv and "DLAPP_SPEC=/dlapp/spec.yaml" in argv
    assert argv[argv.index("--memory") + 1] == "256m" and argv[-2:] == [MINIMAL, "bash"]
    assert not any("DLAPP_TOKEN" in a for a in argv)


def test_shell_refuses_what_the_cluster_would(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec(tmp_path, container={"privileged": True})
    assert cli.main(["shell", str(spec), "--print-command"]) == 1
    assert "privileged containers are never allowed" in capsys.readouterr().err


def test_run_outside_a_shell_asks_for_a_spec(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DLAPP_SPEC", raising=False)
    assert cli.main(["run"]) == 1
    assert "not in a dlapp shell" in capsys.readouterr().err


def test_two_shells_never_share_a_gpu(tmp_path: Path) -> None:
    with hold_gpus(1, 2, tmp_path) as first, hold_gpus(1, 2, tmp_path) as second:
        assert {first, second} == {("0",), ("1",)}
        with (
            pytest.raises(InfeasibleError, match="0 of this machine's 2 are free"),
            hold_gpus(1, 2, tmp_path),
        ):
            pass
    with hold_gpus(2, 2, tmp_path) as both:
        assert both == ("0", "1")


def test_images_list_and_a_cached_build(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_docker()
    assert cli.main(["images", "build", "minimal"]) == 0
    assert "exists (cached)" in capsys.readouterr().out
    assert cli.main(["images", "list"]) == 0
    listing = capsys.readouterr().out
    assert "minimal" in listing and "pytorch" in listing and "tensorflow" in listing


def test_the_shell_on_a_pseudo_terminal_runs_a_command_in_the_workspace(
    home: Path, tmp_path: Path
) -> None:
    require_docker()
    spec = _spec(tmp_path)
    command = (
        "cat notes.txt; echo user=$(id -u) spec=$(grep -c /workspace $DLAPP_SPEC); "
        "touch /workspace/made && echo writable; exit 7"
    )
    main, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from dlapp.cli.main import main; sys.exit(main())",
         "shell", str(spec), "--", "sh", "-c", command],
        stdin=secondary, stdout=secondary, stderr=secondary, env={**os.environ},
    )  # fmt: skip
    os.close(secondary)
    output = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(main, 4096)
                except OSError:  # the terminal closed: the shell ended
                    break
                if not chunk:
                    break
                output += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(30) == 7, output
    finally:
        proc.kill()
        os.close(main)
    text = output.decode(errors="replace")
    # the shell runs as its user (here, the test's), whose workspace it can write
    assert "workspace file" in text and f"user={os.getuid()} spec=1" in text, text
    assert "writable" in text and (tmp_path / "project" / "made").stat().st_uid == os.getuid()
