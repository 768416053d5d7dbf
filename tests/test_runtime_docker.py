"""The ``docker`` runtime with a real dockerd and the minimal image: isolation, limits, exit
codes, out of memory, stops, fate-sharing with the supervisor, and the orphan sweep."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from dlapp.config import ContainerPolicy
from dlapp.runtime.base import LaunchRequest
from dlapp.runtime.docker import DockerRuntime, container_name, remove_orphans
from docker_support import (
    MINIMAL,
    check_a_killed_supervisor_leaves_no_container,
    containers,
    eventually,
    inspect,
    launch_request,
    require_docker,
)

POLICY = ContainerPolicy(gpus="none", cluster_id="test-runtime-docker")


@pytest.fixture(autouse=True)
def _docker() -> None:
    require_docker()


def test_an_app_runs_isolated_as_non_root_in_its_workspace(tmp_path: Path) -> None:
    (tmp_path / "host-secret").write_text("no")
    req = launch_request(
        tmp_path,
        f"""
        echo "args=$1|$2 user=$(id -u):$(id -g) cwd=$(pwd) gpus=$CUDA_VISIBLE_DEVICES"
        echo "ws=$DLAPP_WORKSPACE ckpt=$DLAPP_CHECKPOINT_DIR token=${{DLAPP_TOKEN:-none}}"
        test -e {tmp_path}/host-secret && echo "sees host paths"
        grep -E "^(CapEff|NoNewPrivs)" /proc/self/status
        echo result > out.txt && echo saved > "$DLAPP_CHECKPOINT_DIR/ckpt"
        """,
        DLAPP_TOKEN="s3cret",
    )
    running = DockerRuntime(POLICY).launch(req)
    assert running.wait(60) == 0, req.stderr.read_text()
    out = req.stdout.read_text()
    assert "args=one|two words user=1000:1000 cwd=/workspace gpus=1" in out
    assert "ws=/workspace ckpt=/dlapp/checkpoint token=none" in out
    assert "CapEff:\t0000000000000000" in out and "NoNewPrivs:\t1" in out
    assert "sees host paths" not in out
    assert (req.workdir / "out.txt").read_text() == "result\n"
    assert (tmp_path / "checkpoint" / "ckpt").exists()
    assert containers(f"dlapp.app={req.app_id}") == []  # removed once it ended


def test_inspect_shows_the_fence_the_limits_and_the_labels(tmp_path: Path) -> None:
    req = launch_request(tmp_path, "echo up; sleep 60\n", memory_mb=128)
    running = DockerRuntime(POLICY).launch(req)
    name = container_name(req.app_id, 0)
    try:
        assert eventually(lambda: "up" in req.stdout.read_text())
        info = inspect(name)
        host, config = info["HostConfig"], info["Config"]
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Privileged"] is False and host["NetworkMode"] == "bridge"
        assert config["User"] == "1000:1000"
        assert (host["Memory"], host["MemorySwap"]) == (128 * 2**20, 128 * 2**20)
        assert host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == POLICY.pids_limit
        assert config["Labels"]["dlapp.app"] == req.app_id
        assert config["Labels"]["dlapp.index"] == "0"
        assert config["Labels"]["dlapp.cluster"] == POLICY.cluster_id
    finally:
        code = running.stop(grace=0)
    assert code == 137
    assert containers(f"dlapp.app={req.app_id}") == []


def test_a_memory_hog_is_recorded_as_out_of_memory(tmp_path: Path) -> None:
    req = launch_request(
        tmp_path, 'x=$(head -c 200000000 /dev/zero | tr "\\0" x)\necho "${#x}"\n', 32
    )
    running = DockerRuntime(POLICY).launch(req)
    assert running.wait(60) == 137
    note = running.exit_note()
    assert note is not None and "out of memory (OOM)" in note and "32M" in note


def test_softkill_reaches_the_app_and_leaves_no_container(tmp_path: Path) -> None:
    req = launch_request(
        tmp_path, "trap 'echo got TERM; exit 143' TERM\necho up\nwhile :; do sleep 1; done\n"
    )
    running = DockerRuntime(POLICY).launch(req)
    assert eventually(lambda: "up" in req.stdout.read_text())
    assert running.stop(grace=20) == 143
    assert "got TERM" in req.stdout.read_text()
    assert containers(f"dlapp.app={req.app_id}") == []


def test_a_missing_image_says_so(tmp_path: Path) -> None:
    req = launch_request(tmp_path, "exit 0\n")
    req = LaunchRequest(**{**req.__dict__, "image": "dlapp/no-such-image:latest"})
    running = DockerRuntime(POLICY).launch(req)
    assert running.wait(60) == 125
    note = running.exit_note() or ""
    assert "docker could not run the container" in note and "no-such-image" in note


def test_killing_the_supervisor_leaves_no_container(tmp_path: Path) -> None:
    check_a_killed_supervisor_leaves_no_container(
        tmp_path, POLICY, "dlapp.runtime.docker.DockerRuntime", "docker", 20
    )


def test_the_sweep_removes_containers_of_apps_that_are_not_running() -> None:
    policy = POLICY.model_copy(update={"cluster_id": f"sweep-{uuid.uuid4().hex[:8]}"})
    names = {}
    for app in ("application_1_0001", "application_1_0002"):
        names[app] = f"dlapp-sweep-{uuid.uuid4().hex[:8]}"
        subprocess.run(
            ["docker", "run", "--detach", "--name", names[app], "--label", f"dlapp.app={app}",
             "--label", f"dlapp.cluster={policy.cluster_id}", MINIMAL, "sleep", "300"],
            check=True, capture_output=True,
        )  # fmt: skip
    try:
        other = ContainerPolicy(cluster_id="another-cluster")
        assert remove_orphans(other, set()) == []  # another cluster's containers are not its own
        assert remove_orphans(policy, {"application_1_0002"}) == [names["application_1_0001"]]
        assert containers(f"dlapp.cluster={policy.cluster_id}") == [names["application_1_0002"]]
    finally:
        subprocess.run(["docker", "rm", "-f", *names.values()], capture_output=True, check=False)
