"""The Ray head is lost while an app runs: no app stays RUNNING forever.

Every process of the head node is killed (GCS, raylet: the machine is gone). The server, which
runs as its own process on that cluster, notices within ``ray_head_timeout_s`` and restarts
itself in place; it waits for a head at the same address. A new head comes up on the same
port; the server connects, finds the app's containers gone with the old cluster, requeues the
app (its attempts are not used up) and runs it to the end on the new cluster.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import yaml

from dlapp import embedded
from dlapp.client import DlappClient

from clusters import ray_head, submit_spec
from conftest import AppFactory, start_server, stop_server, wait_for, wait_running
from invariants import assert_running_matches

pytestmark = pytest.mark.cluster


def test_a_lost_ray_head_requeues_running_apps_once_a_new_head_is_up(
    tmp_path: Path, make_app: AppFactory
) -> None:
    from ray.cluster_utils import Cluster

    home = tmp_path / "home"
    home.mkdir()
    config = {"ray_head_timeout_s": 3.0, "schedule_interval_s": 0.3}
    (home / "server.yaml").write_text(yaml.safe_dump(config))
    with ray_head(gpus=1, cpus=2) as old:
        address = str(old.address)
        proc, url = start_server(home, address)
        admin = (home / "admin.token").read_text().strip()
        try:
            with DlappClient(url, admin) as client:
                # the first attempt runs until the cluster is lost; the next one finishes
                script = (
                    'if [ -f "$DLAPP_CHECKPOINT_DIR/ran" ]; then echo second; exit 0; fi\n'
                    'touch "$DLAPP_CHECKPOINT_DIR/ran"; sleep 600\n'
                )
                gpu = {"cpus": 1, "memory": "128M", "gpus": 1}
                app_id = submit_spec(client, make_app(script, name="long", resources=gpu), tmp_path)
                wait_running(client, app_id)
            old.head_node.kill_all_processes(check_alive=False, allow_graceful=False)
            log = home / "server.log"
            wait_for(lambda: "restarting the server" in log.read_text(), 60, "a restart")
            wait_for(lambda: "waiting for the Ray head" in log.read_text(), 60, "it to wait")
            assert proc.poll() is None  # the same process, started afresh
            new = Cluster(
                initialize_head=True,
                head_node_args={
                    "gcs_server_port": int(address.rpartition(":")[2]),
                    "num_cpus": 2,
                    "num_gpus": 1,
                    "include_dashboard": False,
                },
            )
            try:
                info = wait_for(lambda: embedded.running(home), 120, "the server to answer")
                with DlappClient(info.url, admin) as client:
                    done = client.wait(app_id, timeout_s=120)
                    assert done["final_status"] == "SUCCEEDED", done
                    assert done["attempt"] == 2
                    assert client.logs(app_id) == "second\n"
                    reasons = [e["reason"] for e in client.events(app_id)]
                    assert any(r.startswith("requeued: its containers were lost") for r in reasons)
                    assert assert_running_matches(client.list_apps) == 0
            finally:
                stop_server(proc)
                new.shutdown()
        finally:
            stop_server(proc)
            with contextlib.suppress(Exception):
                old.shutdown()
