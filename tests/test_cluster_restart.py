"""The server is killed with SIGKILL and restarted: running apps keep running and are taken
over (by their supervisors' names and the store), and every acknowledged app completes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from dlapp.client import DlappClient

from clusters import submit_spec
from conftest import AppFactory, start_server, stop_server, wait_running
from invariants import assert_running_matches

pytestmark = pytest.mark.cluster


def test_sigkilled_server_takes_its_apps_back_after_a_restart(
    ray_cluster: str, tmp_path: Path, make_app: AppFactory
) -> None:
    home = tmp_path / "home"
    proc, url = start_server(home, ray_cluster)
    admin_token = (home / "admin.token").read_text().strip()
    try:
        with DlappClient(url, admin_token) as admin:
            token = admin.admin_add_user("olga")["token"]
        gpu = {"cpus": 1, "memory": "128M", "gpus": 1}
        with DlappClient(url, token) as client:
            running = submit_spec(
                client,
                make_app(
                    'for i in $(seq 1 40); do echo "tick $i"; sleep 0.25; done\n',
                    name="survivor",
                    resources=gpu,
                ),
                tmp_path,
            )
            wait_running(client, running)
            queued = submit_spec(
                client, make_app("echo queued-ran\n", name="queued", resources=gpu), tmp_path
            )
            before = client.get(running)
        # the server dies hard; its Ray cluster and the app's supervisor do not
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc, url = start_server(home, ray_cluster)
        with DlappClient(url, admin_token) as admin:
            assert_running_matches(admin.list_apps)  # nothing leaked, nothing lost
        with DlappClient(url, token) as client:
            done = client.wait(running, timeout_s=120)
            assert done["final_status"] == "SUCCEEDED", done
            assert done["attempt"] == before["attempt"] == 1  # the same run, not a rerun
            assert done["containers"][0]["gpu_ids"] == before["containers"][0]["gpu_ids"]
            assert "tick 40" in client.logs(running)
            reasons = [e["reason"] for e in client.events(running)]
            assert "taken over by a restarted server" in reasons
            after = client.wait(queued, timeout_s=120)
            assert after["final_status"] == "SUCCEEDED", (after, client.events(queued))
            assert client.logs(queued) == "queued-ran\n"
        with DlappClient(url, admin_token) as admin:
            assert assert_running_matches(admin.list_apps) == 0
    finally:
        stop_server(proc)
