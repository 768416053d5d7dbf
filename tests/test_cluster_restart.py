"""The server is killed with SIGKILL and restarted: running apps keep running and are taken
over (by their supervisors' names and the store), and every acknowledged app completes."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlapp.client import DlappClient
from dlapp.spec import AppSpec

from conftest import AppFactory, pack, start_server, stop_server, wait_running

pytestmark = pytest.mark.cluster


@pytest.fixture
def ray_cluster() -> Iterator[str]:
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 4, "num_gpus": 1, "include_dashboard": False},
    )
    try:
        yield str(cluster.address)
    finally:
        cluster.shutdown()


def _submit(client: DlappClient, spec: Path, tmp: Path) -> str:
    s = AppSpec.from_file(spec)
    app_id: str = client.submit(s, pack(Path(s.workspace.path), tmp))["id"]
    return app_id


def test_sigkilled_server_takes_its_apps_back_after_a_restart(
    ray_cluster: str, tmp_path: Path, make_app: AppFactory
) -> None:
    home = tmp_path / "home"
    proc, url = start_server(home, ray_cluster)
    try:
        with DlappClient(url, (home / "admin.token").read_text().strip()) as admin:
            token = admin.admin_add_user("olga")["token"]
        gpu = {"cpus": 1, "memory": "128M", "gpus": 1}
        with DlappClient(url, token) as client:
            running = _submit(
                client,
                make_app(
                    'for i in $(seq 1 40); do echo "tick $i"; sleep 0.25; done\n',
                    name="survivor",
                    resources=gpu,
                ),
                tmp_path,
            )
            wait_running(client, running)
            queued = _submit(
                client, make_app("echo queued-ran\n", name="queued", resources=gpu), tmp_path
            )
            before = client.get(running)
        # the server dies hard; its Ray cluster and the app's supervisor do not
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc, url = start_server(home, ray_cluster)
        with DlappClient(url, token) as client:
            done = client.wait(running, timeout_s=120)
            assert done["final_status"] == "SUCCEEDED", done
            assert done["attempt"] == before["attempt"] == 1  # the same run, not a rerun
            assert done["containers"][0]["gpu_ids"] == before["containers"][0]["gpu_ids"]
            assert "tick 40" in client.logs(running)
            reasons = [e["reason"] for e in client.events(running)]
            assert "taken over by a restarted server" in reasons
            assert client.wait(queued, timeout_s=120)["final_status"] == "SUCCEEDED"
            assert client.logs(queued) == "queued-ran\n"
    finally:
        stop_server(proc)
