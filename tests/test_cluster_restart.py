"""The server is killed with SIGKILL and restarted: running apps keep running and are taken
over (by their supervisors' names and the store), and every acknowledged app completes."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from dlapp.client import DlappClient

from clusters import submit_spec
from conftest import AppFactory, start_server, stop_server, wait_for, wait_running
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


@pytest.mark.parametrize("ray_cluster", [2], indirect=True)
@pytest.mark.parametrize("started", [True, False], ids=["started", "just-admitted"])
def test_sigkilled_while_an_array_is_half_started_every_member_runs_once(
    ray_cluster: str, tmp_path: Path, make_app: AppFactory, started: bool
) -> None:
    """An array of 6 on 2 GPUs: the server dies with two members admitted and four waiting.
    ``started``: the two run already, and the restarted server takes them over through their
    node's agent (the same run). ``just-admitted``: it dies as it admits them, before their
    starts may have reached the agent; a start that never came is given up (the app requeued,
    not counted), and one still on its way is refused by the agent. Either way every member
    ends SUCCEEDED, each ran exactly once, and nothing is left RUNNING."""
    home = tmp_path / "home"
    proc, url = start_server(home, ray_cluster)
    admin_token = (home / "admin.token").read_text().strip()
    try:
        with DlappClient(url, admin_token) as admin:
            token = admin.admin_add_user("ines")["token"]
        spec = make_app(
            'echo "member $DLAPP_ARRAY_INDEX"; sleep 12\n',  # still running at the takeover
            name="half",
            resources={"cpus": 0.5, "memory": "64M", "gpus": 1},
            array="0-5",
        )
        with DlappClient(url, token) as client:
            array_id = submit_spec(client, spec, tmp_path)

            def members() -> list[dict[str, Any]]:
                return list(client.iter_apps(array=array_id))

            def up(m: dict[str, Any]) -> bool:
                cs = m["containers"]
                return bool(cs) and all(c["state"] == "RUNNING" for c in cs)

            def two_admitted() -> list[dict[str, Any]] | None:
                found = members()
                admitted = [m for m in found if m["state"] == "RUNNING" and (up(m) or not started)]
                return found if len(admitted) == 2 else None

            half = wait_for(two_admitted, 60, "two members admitted")
            was_running = {m["id"] for m in half if m["state"] == "RUNNING" and up(m)}
            assert sum(m["state"] == "ACCEPTED" for m in half) == 4
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc, url = start_server(home, ray_cluster)
        with DlappClient(url, token) as client:

            def all_done() -> dict[str, Any] | None:
                view = client.get_array(array_id)
                return view if view["finished"] else None

            view = wait_for(all_done, 180, f"every member of {array_id} finished")
            assert view["counts"]["SUCCEEDED"] == 6, "\n".join(
                f"{m['id']}: {m['diagnostics']} "
                + "; ".join(e["reason"] for e in client.events(m["id"]))
                for m in members()
            )
            for m in client.iter_apps(array=array_id):
                index = m["array"]["index"]
                assert client.logs(m["id"]) == f"member {index}\n", m
                reasons = [e["reason"] for e in client.events(m["id"])]
                runs = [r for r in reasons if r.startswith("container 0 RUNNING")]
                assert len(runs) == 1, reasons  # its container ran once, whatever the attempt
                if m["id"] in was_running:
                    assert m["attempt"] == 1, (m, reasons)  # taken over: the same run
                    assert "taken over by a restarted server" in reasons
        with DlappClient(url, admin_token) as admin:
            assert assert_running_matches(admin.list_apps) == 0
    finally:
        stop_server(proc)
