"""Two Ray nodes: gangs spread over nodes, and a node that dies (its raylet SIGKILLed).

The dlapp server runs in this test process (routes, scheduler, Ray executor) against a Ray
cluster of two nodes started with ``ray.cluster_utils.Cluster``. When a node dies, its
containers are marked lost within a bounded time, the app's other containers are ended, the
app goes back to its queue without using up its attempts, no GPU stays held, and once a node
comes back the app runs to the end.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dlapp.config import ServerSettings
from dlapp.contract import log_dir
from dlapp.server.app import create_app

from clusters import FAST_HEALTH_CHECKS
from conftest import processes_with_env, wait_for
from inprocess import add_user, admin_token, bearer, submit
from invariants import assert_running_matches

pytestmark = pytest.mark.cluster


@pytest.fixture
def two_nodes(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Any, TestClient, str]]:
    """Two Ray nodes, a server on them, and a user besides the admin: the multi-user rules
    apply (``tenancy`` is the indirect parameter, ``auto`` by default)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "num_gpus": 1,
            "include_dashboard": False,
            "_system_config": FAST_HEALTH_CHECKS,
        },
    )
    cluster.add_node(num_cpus=2, num_gpus=1)
    cluster.wait_for_nodes()
    home = tmp_path / "home"
    settings = ServerSettings(
        home=home,
        ray_address=cluster.address,
        schedule_interval_s=0.2,
        log_ship_interval_s=0.5,
        file_roots=(tmp_path,),  # a cluster of its own: local data only under allowed roots
        tenancy=getattr(request, "param", "auto"),
    )
    try:
        with TestClient(create_app(settings)) as api:
            yield cluster, api, add_user(api, home, "nora")
    finally:
        cluster.shutdown()


def _app(api: TestClient, token: str, app_id: str) -> dict[str, Any]:
    result: dict[str, Any] = api.get(f"/api/v1/apps/{app_id}", headers=bearer(token)).json()
    return result


def _all_apps(api: TestClient) -> list[dict[str, Any]]:
    """Every user's apps, as the admin sees them."""
    home = home_of(api)
    apps: list[dict[str, Any]] = api.get("/api/v1/apps", headers=bearer(admin_token(home))).json()[
        "apps"
    ]
    return apps


def test_a_dead_node_requeues_its_apps_and_they_complete_on_a_new_node(
    two_nodes: tuple[Any, TestClient, str], tmp_path: Path
) -> None:
    cluster, api, token = two_nodes
    nodes = api.get("/api/v1/cluster", headers=bearer(token)).json()["nodes"]
    assert len(nodes) == 2 and all(n["total"]["gpus"] == 1 for n in nodes)
    script = (
        'echo "rank $RANK of $WORLD_SIZE on $MASTER_ADDR"; '
        'if [ -f "$DLAPP_CHECKPOINT_DIR/../second" ]; then exit 0; fi; sleep 600\n'
    )
    app_id = submit(
        api,
        tmp_path,
        token,
        script=script,
        num_containers=2,
        resources={"cpus": 1, "memory": "128M", "gpus": 1},
    ).json()["id"]
    running = wait_for(
        lambda: (
            (a := _app(api, token, app_id))["containers"]
            and all(c["state"] == "RUNNING" for c in a["containers"])
            and a
        ),
        60,
        "both containers to run",
    )
    assert len({c["node_id"] for c in running["containers"]}) == 2  # one per node
    worker = next(n for n in cluster.worker_nodes)
    lost = next(c for c in running["containers"] if c["node_id"] == worker.node_id)
    # its log so far reaches the artifact store while it runs (shipped through Ray)
    kept = log_dir(str(home_of(api) / "artifacts"), app_id, 1, lost["index"]) / "stdout"
    wait_for(
        lambda: kept.exists() and f"rank {lost['index']} of 2" in kept.read_text(),
        30,
        "the log so far to be kept",
    )
    # kill the worker node's raylet, as a machine failure would
    os.kill(worker.all_processes["raylet"][0].process.pid, signal.SIGKILL)
    t0 = time.monotonic()
    requeued = wait_for(
        lambda: (a := _app(api, token, app_id))["state"] == "ACCEPTED" and a,
        90,
        "the app to go back to its queue",
    )
    detected_in = time.monotonic() - t0
    assert detected_in < 60
    events = api.get(f"/api/v1/apps/{app_id}/events", headers=bearer(token)).json()["events"]
    assert any("lost with its node" in e["reason"] for e in events)
    # the lost container's log outlives its node: attempt 1's, as it was written
    lost_log = api.get(
        f"/api/v1/apps/{app_id}/logs",
        params={"container": lost["index"], "attempt": 1},
        headers=bearer(token),
    )
    assert lost_log.status_code == 200, lost_log.text
    assert lost_log.text.startswith(f"rank {lost['index']} of 2 on ")
    # the survivor was ended and no GPU stays held; the app waits for 2 GPUs on 2 nodes
    wait_for(lambda: processes_with_env("DLAPP_APP_ID", app_id) == [], 30, "no process of the app")
    assert_running_matches(lambda: _all_apps(api))
    gpus = [
        g
        for n in api.get("/api/v1/cluster", headers=bearer(token)).json()["nodes"]
        if n["alive"]
        for g in n["gpus"]
    ]
    assert all(g["app_id"] is None for g in gpus)
    assert "GPU" in wait_for(
        lambda: "position" in (r := _app(api, token, app_id)["pending_reason"]) and r,
        10,
        "the scheduler's reason",
    )
    # a new node joins: the app runs again (attempt 2) and completes
    ckpt = api.app.state.ctx.settings.checkpoints / app_id  # type: ignore[attr-defined]
    (ckpt / "second").write_text("x")
    cluster.add_node(num_cpus=2, num_gpus=1)
    done = wait_for(
        lambda: (a := _app(api, token, app_id))["state"] == "FINISHED" and a,
        120,
        "the app to finish",
    )
    assert done["final_status"] == "SUCCEEDED", done
    assert done["attempt"] == 2 and requeued["attempt"] == 1
    assert assert_running_matches(lambda: _all_apps(api)) == 0


def home_of(api: TestClient) -> Path:
    home: Path = api.app.state.ctx.settings.home  # type: ignore[attr-defined]
    return home


# a Python app: an app's own account could not run this machine's interpreter (under /root),
# so its apps run as the server's user here
@pytest.mark.parametrize("two_nodes", ["single"], indirect=True)
def test_ddp_across_two_nodes_and_the_exclude_list(
    two_nodes: tuple[Any, TestClient, str], tmp_path: Path
) -> None:
    import json
    import shutil

    from dlapp.data.workspace import pack_workspace
    from dlapp.spec import AppSpec

    from conftest import ROOT

    _, api, token = two_nodes
    nodes = api.get("/api/v1/cluster", headers=bearer(token)).json()["nodes"]
    # the exclude list: an app kept off one node runs on the other
    banned = nodes[1]["node_id"]
    kept_off = submit(
        api,
        tmp_path,
        token,
        script="echo ok\n",
        nodes={"exclude": [banned]},
        resources={"cpus": 1, "memory": "128M", "gpus": 1},
    ).json()["id"]
    done = wait_for(
        lambda: (a := _app(api, token, kept_off))["state"] == "FINISHED" and a,
        60,
        "the excluded app",
    )
    assert done["final_status"] == "SUCCEEDED"
    assert done["containers"][0]["node_id"] == nodes[0]["node_id"]
    # DDP with one container on each node: both ranks end with the same weights and loss
    example = tmp_path / "ddp"
    shutil.copytree(ROOT / "examples" / "ddp", example, ignore=shutil.ignore_patterns("out"))
    spec = AppSpec.from_file(example / "app.yaml")
    spec = spec.model_copy(update={"nodes": spec.nodes.model_copy(update={"strategy": "spread"})})
    tarball = pack_workspace(Path(spec.workspace.path), tmp_path / "ddp.tar.gz").path
    resp = api.post(
        "/api/v1/apps",
        headers=bearer(token),
        data={"spec": json.dumps(spec.to_dict())},
        files={"workspace": ("w.tar.gz", tarball.read_bytes(), "application/gzip")},
    )
    app_id = resp.json()["id"]
    done = wait_for(
        lambda: (a := _app(api, token, app_id))["state"] == "FINISHED" and a, 240, "the DDP app"
    )
    assert done["final_status"] == "SUCCEEDED", done
    assert len({c["node_id"] for c in done["containers"]}) == 2  # one rank per node
    results = [
        json.loads((example / "out" / "ddp-digits" / f"container-{i}" / "metrics.json").read_text())
        for i in (0, 1)
    ]
    assert all(r["weights_in_sync"] and r["world_size"] == 2 for r in results)
    assert results[0]["accuracy"] == results[1]["accuracy"]
