"""The Docker Engine API client of the docker runtime (``runtime/engine_api.py``): which
endpoint it talks to, its calls against a real dockerd, and the runtime's fall back to the CLI
where the socket cannot be reached."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from dlapp.config import ContainerPolicy
from dlapp.runtime import docker
from dlapp.runtime.docker import DockerRuntime, cid_file_path, container_name, env_file_path
from dlapp.runtime.engine_api import EngineAPI, engine_api, unix_socket
from docker_support import MINIMAL, containers, eventually, launch_request, require_docker

POLICY = ContainerPolicy(gpus="none", cluster_id="test-engine-api")


@pytest.mark.parametrize(
    "host,path",
    [
        ("unix:///var/run/docker.sock", "/var/run/docker.sock"),
        ("unix:///run/user/1000/docker.sock", "/run/user/1000/docker.sock"),
        ("tcp://10.0.0.1:2376", None),
        ("ssh://admin@node", None),
        ("npipe:////./pipe/docker_engine", None),
        ("unix://relative.sock", None),
        ("", None),
    ],
)
def test_only_a_local_unix_socket_is_talked_to(host: str, path: str | None) -> None:
    assert unix_socket(host) == path


def test_docker_host_decides_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert engine_api("docker") is None  # the CLI then, as before
    monkeypatch.setenv("DOCKER_HOST", "unix:///tmp/other-docker.sock")
    api = engine_api("docker")
    assert api is not None and api.path == "/tmp/other-docker.sock"


def test_a_command_that_cannot_name_its_endpoint_keeps_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    wrapper = tmp_path / "my-docker"
    wrapper.write_text("#!/bin/sh\nexit 1\n")
    wrapper.chmod(0o755)
    assert engine_api(str(wrapper)) is None
    assert engine_api(str(tmp_path / "no-such-command")) is None


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> EngineAPI:
    require_docker()
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    found = engine_api("docker")
    if found is None:
        pytest.skip("the docker CLI's endpoint is no local unix socket here")
    return found


def test_the_api_answers_as_the_cli_would(api: EngineAPI) -> None:
    assert api.ping()
    name = f"dlapp-api-{uuid.uuid4().hex[:8]}"
    assert api.inspect(name) is None and api.remove(name) is False
    api.kill(name, 15)  # quiet: no such container
    subprocess.run(
        ["docker", "create", "--name", name, "--label", "dlapp.app=api-test", MINIMAL, "true"],
        check=True,
        capture_output=True,
    )
    try:
        found = api.inspect(name)
        assert found is not None and found["Name"] == f"/{name}"
        assert found["State"]["OOMKilled"] is False
        api.kill(name, 15)  # quiet: created, not running
        assert api.remove(name) is True
        assert api.inspect(name) is None
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def test_a_container_runs_and_is_removed_through_the_api_and_its_files_go(
    tmp_path: Path, api: EngineAPI
) -> None:
    req = launch_request(tmp_path, "echo hi\n")
    req.stdout.parent.mkdir(parents=True)
    cid_file_path(req).write_text("")  # left by an earlier start: the engine refuses one
    running = DockerRuntime(POLICY).launch(req)
    assert running.wait(60) == 0, req.stderr.read_text()
    assert req.stdout.read_text() == "hi\n"
    assert containers(f"dlapp.app={req.app_id}") == []
    assert not env_file_path(req).exists() and not cid_file_path(req).exists()


def test_an_unreachable_socket_falls_back_to_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_docker()
    gone = EngineAPI(str(tmp_path / "gone.sock"))
    monkeypatch.setattr(docker, "engine_api", lambda command="docker": gone)
    req = launch_request(tmp_path, "trap 'exit 143' TERM\necho up\nwhile :; do sleep 1; done\n")
    running = DockerRuntime(POLICY).launch(req)
    try:
        assert eventually(lambda: "up" in req.stdout.read_text()), req.stderr.read_text()
        assert running.stop(grace=20) == 143  # docker kill by the CLI
        assert containers(f"dlapp.app={req.app_id}") == []  # and docker rm
    finally:
        name = container_name(req.app_id, 0)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
