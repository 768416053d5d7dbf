"""Hostile launch requests: what reaches an argv. An entry script named like an option, an image
that is a flag, a spec's env values on the engine's command line (where ``ps`` shows them to
every local account), and a root user from a spec stored before it was read as numbers.

Requests are built directly, as a supervisor would from a spec that predates today's checks.
"""

from __future__ import annotations

import os
import stat
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from dlapp.config import ContainerPolicy
from dlapp.errors import Forbidden
from dlapp.runtime.base import LaunchRequest
from dlapp.runtime.docker import (
    DockerRuntime,
    RunOptions,
    docker_run_args,
    entry_command,
    env_file_text,
    resolve_user,
    run_env,
    write_env_file,
)
from dlapp.runtime.podman import PodmanRuntime
from dlapp.runtime.process import ProcessRuntime, app_command
from dlapp.spec import ContainerOptions
from docker_support import eventually, launch_request, require_docker, require_podman

POLICY = ContainerPolicy(gpus="none", cluster_id="test-hostile-launch")


def request(tmp_path: Path, script: str, text: str, **env: str) -> LaunchRequest:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    (ws / script).write_text(text)
    return LaunchRequest(
        app_id=f"application_test_{uuid.uuid4().hex[:12]}",
        index=0,
        workdir=ws,
        script=script,
        args=("one",),
        env=env,
        stdout=tmp_path / "logs" / "stdout",
        stderr=tmp_path / "logs" / "stderr",
        image="dlapp/minimal:latest",
    )


# -- an entry script named like an option ----------------------------------------------------------


@pytest.mark.parametrize(
    "script,text",
    [
        ("-c.sh", 'echo "ran $1"\n'),
        ("+O.sh", 'echo "ran $1"\n'),
        ("--version.sh", 'echo "ran $1"\n'),
        ("-c.py", "import sys\nprint('ran', sys.argv[1])\n"),
        ("-m.py", "import sys\nprint('ran', sys.argv[1])\n"),
    ],
)
def test_an_entry_script_named_like_an_option_runs_as_the_script(
    tmp_path: Path, script: str, text: str
) -> None:
    req = request(tmp_path, script, text)
    assert ProcessRuntime().launch(req).wait(30) == 0, req.stderr.read_text()
    assert req.stdout.read_text() == "ran one\n"


@pytest.mark.parametrize("script", ["-c.sh", "+O.sh", "-c.py", "-x"])
def test_no_argv_reads_the_script_name_as_an_option(tmp_path: Path, script: str) -> None:
    req = request(tmp_path, script, "")
    os.chmod(req.workdir / script, 0o755)
    process = app_command(req)
    container = entry_command(script, ("one",))
    for argv in (process, container):
        assert f"./{script}" in argv and script not in argv


# -- an image that is a flag -----------------------------------------------------------------------


@pytest.mark.parametrize("image", ["--privileged", "-v/:/host", "x --privileged", ""])
def test_an_image_that_is_a_flag_never_reaches_the_engine_argv(tmp_path: Path, image: str) -> None:
    req = replace(request(tmp_path, "run.sh", ""), image=image)
    with pytest.raises(ValueError, match=r"not a valid image reference|needs an image"):
        docker_run_args(req, ContainerPolicy(images=()), RunOptions("1000:1000"))


# -- a root user from a spec stored before it was read as numbers ---------------------------------


@pytest.mark.parametrize("user", ["00", "00:0", "1000:0", "0", "root", "1000:root"])
def test_a_stored_root_or_named_user_is_fenced_at_launch(tmp_path: Path, user: str) -> None:
    options = ContainerOptions.model_construct(user=user)  # as read back, never re-validated
    req = replace(request(tmp_path, "run.sh", ""), container=options)
    with pytest.raises(Forbidden, match=r"container policy: .*(root|UID)"):
        resolve_user(req, ContainerPolicy())
    if user in ("00", "00:0", "1000:0"):
        assert resolve_user(req, ContainerPolicy(allow_root=True)) in ("0", "0:0", "1000:0")


def test_a_bad_user_never_reaches_the_engine_argv(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="UID"):
        docker_run_args(request(tmp_path, "run.sh", ""), POLICY, RunOptions("root"))


# -- env values out of argv ------------------------------------------------------------------------


def test_env_values_go_to_a_file_never_to_the_engine_argv(tmp_path: Path) -> None:
    req = request(tmp_path, "run.sh", "", API_KEY="s3cret-value", EMPTY="")
    env_file = tmp_path / "logs" / "c.env"
    argv = docker_run_args(req, POLICY, RunOptions("1000:1000", env_file=env_file))
    assert not any("s3cret-value" in a for a in argv)
    assert "--env" not in argv
    assert argv[argv.index("--env-file") + 1] == str(env_file)
    env = run_env(req, POLICY, RunOptions("1000:1000", env_file=env_file))
    text = env_file_text(env)
    assert "API_KEY=s3cret-value\n" in text and "EMPTY=\n" in text
    assert text.count("\n") == len(env)


@pytest.mark.parametrize("value", ["a\nB=b", "a\rb", "a\x00"])
def test_an_env_value_that_would_add_a_line_to_the_env_file_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="line break or NUL"):
        env_file_text({"A": value})


def test_the_env_file_is_private_and_never_written_through_a_link(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("kept\n")
    path = tmp_path / "c.env"
    path.symlink_to(target)  # left by someone who could write the log directory
    write_env_file(path, {"A": "1"})
    assert not path.is_symlink() and path.read_text() == "A=1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert target.read_text() == "kept\n"


# -- with a real engine ---------------------------------------------------------------------------

ODD_VALUES = {
    "QUOTED": "'single' \"double\"",
    "SPACES": "  two  spaces  ",
    "HASH": "#not a comment",
    "EQUALS": "a=b=c",
    "DOLLAR": "$HOME ${HOME} $(id)",
    "EMPTY": "",
}


def _cmdlines() -> list[bytes]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                found.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                continue
    return found


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_a_spec_env_value_is_on_no_command_line_while_its_container_runs(
    tmp_path: Path, engine: str
) -> None:
    if engine == "podman":
        require_podman()
    else:
        require_docker()
    secret = f"s3cret-{uuid.uuid4().hex}"
    names = " ".join(f"{k}=[${{{k}}}]" for k in ODD_VALUES)
    req = launch_request(
        tmp_path, f'echo "up SECRET=$SECRET {names}"; sleep 3\n', SECRET=secret, **ODD_VALUES
    )
    runtime = PodmanRuntime(POLICY) if engine == "podman" else DockerRuntime(POLICY)
    running = runtime.launch(req)
    try:
        assert eventually(lambda: "up" in req.stdout.read_text(), 60), req.stderr.read_text()
        assert not any(secret.encode() in c for c in _cmdlines())
        assert eventually(lambda: list(req.stdout.parent.glob("*.env")) == [], 10)  # started
    finally:
        code = running.wait(60)
    assert code == 0, req.stderr.read_text()
    out = req.stdout.read_text()
    assert f"SECRET={secret}" in out
    for key, value in ODD_VALUES.items():
        assert f"{key}=[{value}]" in out  # the engine reads the file verbatim
