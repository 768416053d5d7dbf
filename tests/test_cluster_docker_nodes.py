"""``runtime: docker`` on two Ray nodes (``ray.cluster_utils.Cluster``; both share this
machine's dockerd): each node sweeps only its own orphans, and a gang split over the nodes
reaches rank 0's published rendezvous port at MASTER_ADDR:MASTER_PORT on the bridge network.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from fastapi.testclient import TestClient

from dlapp.cli import images
from dlapp.config import ContainerPolicy, ServerSettings
from dlapp.executor import sweep
from dlapp.server.app import create_app
from docker_support import HANDSHAKE, MINIMAL, PYTHON, containers, require_docker

from inprocess import add_user, bearer, submit

pytestmark = pytest.mark.cluster


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[TestClient, str, list[str]]]:
    """A server on a two-node Ray cluster; (API, a user's token, the two node ids)."""
    require_docker()
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    home = tmp_path / "home"
    settings = ServerSettings(
        home=home,
        ray_address=cluster.address,
        schedule_interval_s=0.2,
        file_roots=(tmp_path,),
        container=ContainerPolicy(gpus="none"),
    )
    try:
        with TestClient(create_app(settings)) as api:
            node_ids = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
            assert len(node_ids) == 2
            yield api, add_user(api, home, "nora"), node_ids
    finally:
        cluster.shutdown()


def _create(policy: ContainerPolicy, app_id: str, node_id: str) -> str:
    name = f"dlapp-sweep-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "create", "--name", name, "--label", f"dlapp.app={app_id}",
         "--label", "dlapp.index=0", "--label", f"dlapp.cluster={policy.cluster_id}",
         "--label", f"dlapp.node={node_id}", MINIMAL, "sleep", "300"],
        check=True, capture_output=True,
    )  # fmt: skip
    return name


def test_each_node_sweeps_its_own_orphans(
    two_nodes: tuple[TestClient, str, list[str]],
) -> None:
    api, _, (node_a, node_b) = two_nodes
    policy = ContainerPolicy(cluster_id=f"sweep-{uuid.uuid4().hex[:8]}")
    made = {
        "orphan-a": _create(policy, "application_1_0001", node_a),
        "orphan-b": _create(policy, "application_1_0002", node_b),
        "running-b": _create(policy, "application_1_0003", node_b),
        "supervised-a": _create(policy, "application_1_0004", node_a),
        "gone-node": _create(policy, "application_1_0005", "a-node-not-in-this-cluster"),
    }

    @ray.remote(num_cpus=0)
    class Holder:  # stands for the live supervisor of an app admitted after the listing
        def ready(self) -> bool:
            return True

    holder = Holder.options(  # type: ignore[attr-defined]
        name="dlapp:application_1_0004:0", namespace="dlapp", lifetime="detached"
    ).remote()
    try:
        ray.get(holder.ready.remote(), timeout=60)
        refs = sweep.sweep_every_node(policy, {"application_1_0003"}, "dlapp")
        removed = dict(ray.get(refs, timeout=120))
        assert removed == {node_a: [made["orphan-a"]], node_b: [made["orphan-b"]]}
        left = set(containers(f"dlapp.cluster={policy.cluster_id}"))
        assert left == {made["running-b"], made["supervised-a"], made["gone-node"]}
        # the server's periodic sweep goes through the same tasks (and logs what they removed)
        ray.kill(holder)
        executor = api.app.state.ctx.executor  # type: ignore[attr-defined]
        executor.remove_orphans(policy, {"application_1_0003"})
        deadline = time.monotonic() + 60
        while made["supervised-a"] in containers(f"dlapp.cluster={policy.cluster_id}"):
            assert time.monotonic() < deadline, "the server's sweep did not remove it"
            time.sleep(0.2)
    finally:
        ray.kill(holder)
        subprocess.run(["docker", "rm", "-f", *made.values()], capture_output=True, check=False)


def _app(api: TestClient, token: str, app_id: str) -> dict[str, Any]:
    result: dict[str, Any] = api.get(f"/api/v1/apps/{app_id}", headers=bearer(token)).json()
    return result


def _log(api: TestClient, token: str, app_id: str, index: int) -> str:
    resp = api.get(
        f"/api/v1/apps/{app_id}/logs", headers=bearer(token), params={"container": index}
    )
    return resp.text


def test_a_gang_over_two_nodes_reaches_rank_0_on_the_bridge(
    two_nodes: tuple[TestClient, str, list[str]], tmp_path: Path
) -> None:
    images.build("python")
    api, token, _ = two_nodes
    resp = submit(
        api,
        tmp_path,
        token,
        script=f"cat > handshake.py <<'EOF'\n{HANDSHAKE}EOF\nexec python3 handshake.py\n",
        runtime="docker",
        image=PYTHON,
        num_containers=2,
        nodes={"strategy": "spread"},
        resources={"cpus": 1, "memory": "256M"},
    )
    assert resp.status_code in (200, 201), resp.text
    app_id = resp.json()["id"]
    deadline = time.monotonic() + 180
    while (app := _app(api, token, app_id))["state"] != "FINISHED":
        assert time.monotonic() < deadline, app
        time.sleep(0.5)
    assert app["final_status"] == "SUCCEEDED", app
    assert len({c["node_id"] for c in app["containers"]}) == 2  # one rank on each node
    logs = [_log(api, token, app_id, i) for i in (0, 1)]
    assert "rank 0 got: hello from rank 1" in logs[0], logs
    assert "rank 1 got: hello from rank 0" in logs[1], logs
    assert "master 127." not in logs[1]  # the node's address, which a container can reach
