"""``runtime: docker`` on the real server and Ray: the app runs in the minimal image with its
GPU IDs as a non-root user; kill and a dead supervisor leave no container; refusals make none."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from dlapp.cli import images
from dlapp.cli import main as cli
from dlapp.client import DlappClient
from dlapp.errors import Forbidden
from dlapp.spec import AppSpec
from docker_support import HANDSHAKE, MINIMAL, PYTHON, containers, require_docker

from conftest import AppFactory, pack, wait_for, wait_running

pytestmark = pytest.mark.cluster

DOCKER = {"runtime": "docker", "image": MINIMAL}


@pytest.fixture(autouse=True)
def _docker() -> None:
    require_docker()


def _start(client: DlappClient, make_app: AppFactory, tmp: Path, name: str) -> str:
    spec = AppSpec.from_file(make_app("echo up\nsleep 300\n", name=name, **DOCKER))
    app_id: str = client.submit(spec, pack(Path(spec.workspace.path), tmp))["id"]
    wait_running(client, app_id)
    wait_for(lambda: "up" in client.logs(app_id), 60, "the app to print 'up'")
    assert containers(f"dlapp.app={app_id}") != []
    return app_id


def test_a_docker_app_runs_with_its_gpus_as_non_root(
    use_server: str, client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    script = 'echo "user=$(id -u) gpus=$CUDA_VISIBLE_DEVICES"; test -e /work && echo host; exit 0\n'
    spec = make_app(
        script, name="dock", resources={"cpus": 1, "memory": "128M", "gpus": 2}, **DOCKER
    )
    assert cli.main(["launch", str(spec), "--wait"]) == 0
    app = client.list_apps()[0]
    ids = app["containers"][0]["gpu_ids"]
    assert sorted(ids) == ["0", "1"]
    assert f"user=1000 gpus={','.join(ids)}" in client.logs(app["id"])
    assert "host" not in client.logs(app["id"])
    assert containers(f"dlapp.app={app['id']}") == []


def test_a_gang_on_the_loopback_cluster_meets_on_the_bridge(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    # the embedded cluster's Ray is on 127.0.0.1, which inside a container is the container:
    # rank 0 publishes its port on the bridge's gateway and both ranks are told to meet there
    images.build("python")
    script = f"cat > handshake.py <<'EOF'\n{HANDSHAKE}EOF\nexec python3 handshake.py\n"
    spec = AppSpec.from_file(
        make_app(
            script,
            name="dgang",
            runtime="docker",
            image=PYTHON,
            num_containers=2,
            resources={"cpus": 1, "memory": "256M"},
        )
    )
    app_id = client.submit(spec, pack(Path(spec.workspace.path), tmp_path))["id"]
    done = client.wait(app_id, timeout_s=180)
    logs = [client.logs(app_id, container=i) for i in (0, 1)]
    assert done["final_status"] == "SUCCEEDED", (done, logs)
    assert "rank 0 got: hello from rank 1" in logs[0], logs
    assert "rank 1 got: hello from rank 0" in logs[1], logs
    assert "master 127." not in logs[1]
    assert containers(f"dlapp.app={app_id}") == []


def test_kill_leaves_no_container(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    app_id = _start(client, make_app, tmp_path, "dkill")
    client.kill(app_id)
    assert client.wait(app_id, timeout_s=60)["final_status"] == "KILLED"
    wait_for(lambda: containers(f"dlapp.app={app_id}") == [], 30, "no container")


def test_a_dead_agent_leaves_no_container(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    """The node's agent (the container's supervisor) dies with SIGKILL: its container goes
    with it, and the app, lost with its agent, runs again in a new container; killed, it
    leaves none."""
    app_id = _start(client, make_app, tmp_path, "dorphan")
    first = containers(f"dlapp.app={app_id}")
    guard_pid = client.get(app_id)["containers"][0]["pid"]
    agent_pid = int(Path(f"/proc/{guard_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(agent_pid, signal.SIGKILL)
    wait_for(
        lambda: not set(first) & set(containers(f"dlapp.app={app_id}")),
        60,
        f"the first attempt's container {first} removed",
    )

    def again() -> dict[str, Any] | None:
        app = client.get(app_id)
        return app if app["attempt"] >= 2 and app["state"] == "RUNNING" else None

    try:
        wait_for(again, 90, "the app running again")
    except AssertionError as exc:
        raise AssertionError(client.events(app_id)) from exc
    requeued = [e["reason"] for e in client.events(app_id) if e["to_state"] == "ACCEPTED"]
    assert any("lost with its node's agent" in r for r in requeued), requeued
    client.kill(app_id)
    done = client.wait(app_id, timeout_s=60)
    assert done["final_status"] == "KILLED", client.events(app_id)
    wait_for(lambda: containers(f"dlapp.app={app_id}") == [], 30, "no container")


def test_a_privileged_request_is_refused_and_makes_no_container(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    spec = AppSpec.from_file(
        make_app("exit 0\n", name="priv", container={"privileged": True}, **DOCKER)
    )
    before = {a["id"] for a in client.list_apps()}
    with pytest.raises(Forbidden, match="privileged containers are never allowed"):
        client.submit(spec, pack(Path(spec.workspace.path), tmp_path))
    assert {a["id"] for a in client.list_apps()} == before
