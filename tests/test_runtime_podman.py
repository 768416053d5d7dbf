"""The ``podman`` runtime with a real rootful podman (Debian's ``podman`` and ``catatonit``)
and the minimal image copied from docker: the same fence, limits and labels as docker, out of
memory, fate-sharing with the supervisor, and the orphan sweep of one node."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from dlapp.config import ContainerPolicy
from dlapp.runtime import get_runtime
from dlapp.runtime.docker import container_name, remove_orphans
from dlapp.runtime.podman import PodmanRuntime, node_ulimits
from docker_support import (
    MINIMAL,
    check_a_killed_supervisor_leaves_no_container,
    containers,
    eventually,
    inspect,
    launch_request,
    require_podman,
)

POLICY = ContainerPolicy(gpus="none", cluster_id="test-runtime-podman")
# podman's default set, which it lists one by one for --cap-drop ALL
PODMAN_DEFAULT_CAPS = {"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_KILL", "CAP_SETUID"}


@pytest.fixture(autouse=True)
def _podman() -> None:
    require_podman()


def test_get_runtime_gives_podman_where_it_works() -> None:
    assert isinstance(get_runtime("podman", POLICY), PodmanRuntime)


def test_an_app_runs_fenced_with_its_limits_labels_and_node(tmp_path: Path) -> None:
    req = launch_request(
        tmp_path,
        """
        echo "args=$1|$2 user=$(id -u):$(id -g) cwd=$(pwd) token=${DLAPP_TOKEN:-none}"
        grep -E "^(CapEff|NoNewPrivs)" /proc/self/status
        echo result > out.txt
        echo up; sleep 60
        """,
        memory_mb=128,
        node_id="node-a",
        DLAPP_TOKEN="s3cret",
    )
    running = PodmanRuntime(POLICY).launch(req)
    name = container_name(req.app_id, 0)
    try:
        assert eventually(lambda: "up" in req.stdout.read_text(), 60), req.stderr.read_text()
        out = req.stdout.read_text()
        assert "args=one|two words user=1000:1000 cwd=/workspace token=none" in out
        assert "CapEff:\t0000000000000000" in out and "NoNewPrivs:\t1" in out
        assert (req.workdir / "out.txt").read_text() == "result\n"
        info = inspect(name, "podman")
        host, config = info["HostConfig"], info["Config"]
        assert set(host["CapDrop"]) >= PODMAN_DEFAULT_CAPS and not host["CapAdd"]
        assert host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Privileged"] is False and host["NetworkMode"] == "bridge"
        assert config["User"] == "1000:1000"
        assert (host["Memory"], host["MemorySwap"]) == (128 * 2**20, 128 * 2**20)
        assert host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == POLICY.pids_limit
        for limit, soft, hard in node_ulimits():  # the node's, not podman's own defaults
            assert {"Name": f"RLIMIT_{limit.upper()}", "Soft": soft, "Hard": hard} in host[
                "Ulimits"
            ]
        labels = config["Labels"]
        assert labels["dlapp.app"] == req.app_id and labels["dlapp.index"] == "0"
        assert labels["dlapp.cluster"] == POLICY.cluster_id and labels["dlapp.node"] == "node-a"
    finally:
        code = running.stop(grace=0)
    assert code == 137
    assert containers(f"dlapp.app={req.app_id}", "podman") == []


def test_a_memory_hog_is_killed_at_its_limit(tmp_path: Path) -> None:
    hog = 'x=$(head -c 200000000 /dev/zero | tr "\\0" x)\necho "${#x}"\n'
    running = PodmanRuntime(POLICY).launch(launch_request(tmp_path, hog, 32))
    assert running.wait(60) == 137
    # The note comes from .State.OOMKilled, which conmon sets only when it sees the cgroup's
    # OOM event: conmon 2.1.6 on this machine's cgroup v1 does not (docs/containers.md).
    note = running.exit_note()
    assert note is None or ("out of memory (OOM)" in note and "32M" in note)


def test_killing_the_supervisor_leaves_no_container(tmp_path: Path) -> None:
    check_a_killed_supervisor_leaves_no_container(
        tmp_path, POLICY, "dlapp.runtime.podman.PodmanRuntime", "podman", 60
    )


def test_a_node_sweeps_only_its_own_orphans() -> None:
    policy = POLICY.model_copy(update={"cluster_id": f"sweep-{uuid.uuid4().hex[:8]}"})
    made = {}
    for app, node in [("application_1_0001", "a"), ("application_1_0002", "b")]:
        made[app] = f"dlapp-sweep-{uuid.uuid4().hex[:8]}"
        subprocess.run(
            ["podman", "create", "--name", made[app], "--label", f"dlapp.app={app}",
             "--label", "dlapp.index=0", "--label", f"dlapp.cluster={policy.cluster_id}",
             "--label", f"dlapp.node={node}", MINIMAL, "sleep", "300"],
            check=True, capture_output=True,
        )  # fmt: skip
    try:
        assert remove_orphans(policy, set(), "podman", node_id="c") == []  # none of node c's
        kept = remove_orphans(policy, set(), "podman", "a", supervised=lambda c: c.index == 0)
        assert kept == []  # a live supervisor holds it: an app admitted since the listing
        assert remove_orphans(policy, set(), "podman", node_id="a") == [made["application_1_0001"]]
        assert containers(f"dlapp.cluster={policy.cluster_id}", "podman") == [
            made["application_1_0002"]
        ]
    finally:
        subprocess.run(["podman", "rm", "-f", *made.values()], capture_output=True, check=False)
