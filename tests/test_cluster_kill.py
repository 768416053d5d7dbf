"""kill, softkill and a dying supervisor leave no process behind (checked in the process table)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from dlapp.client import DlappClient
from dlapp.errors import ConflictError
from dlapp.spec import AppSpec

from conftest import AppFactory, pack, processes_with_env, wait_for, wait_running

pytestmark = pytest.mark.cluster

TREE = "sleep 300 &\nsleep 300 &\n(sleep 300; echo never) &\necho up\nwait\n"


def _start(client: DlappClient, make_app: AppFactory, tmp: Path, script: str, name: str) -> str:
    spec = AppSpec.from_file(make_app(script, name=name))
    app_id: str = client.submit(spec, pack(Path(spec.workspace.path), tmp))["id"]
    wait_running(client, app_id)
    wait_for(lambda: "up" in client.logs(app_id), 20, "the app to print 'up'")
    assert processes_with_env("DLAPP_APP_ID", app_id), "the app's processes should exist"
    return app_id


def test_kill_ends_the_whole_process_tree(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    app_id = _start(client, make_app, tmp_path, TREE, "killme")
    client.kill(app_id)
    done = client.wait(app_id, timeout_s=30)
    assert done["final_status"] == "KILLED"
    assert done["containers"][0]["exit_code"] == 128 + signal.SIGKILL
    assert processes_with_env("DLAPP_APP_ID", app_id) == []
    with pytest.raises(ConflictError, match="already finished"):
        client.kill(app_id)


def test_softkill_sends_sigterm_before_sigkill(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    script = "trap 'echo got-TERM; kill $(jobs -p); echo checkpointed; exit 0' TERM\n" + TREE
    app_id = _start(client, make_app, tmp_path, script, "soft")
    client.softkill(app_id)
    done = client.wait(app_id, timeout_s=30)
    assert done["final_status"] == "KILLED"
    out = client.logs(app_id)
    assert "got-TERM" in out and "checkpointed" in out
    assert done["containers"][0]["exit_code"] == 0  # it exited by itself within the grace
    assert processes_with_env("DLAPP_APP_ID", app_id) == []


def test_softkill_kills_an_app_that_ignores_sigterm_after_the_grace(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    script = (
        "trap 'echo ignoring-TERM' TERM\nsleep 300 &\necho up\nwhile true; do sleep 0.2; done\n"
    )
    app_id = _start(client, make_app, tmp_path, script, "stubborn")
    client.softkill(app_id)
    done = client.wait(app_id, timeout_s=40)
    assert done["final_status"] == "KILLED"
    assert "ignoring-TERM" in client.logs(app_id)
    assert done["containers"][0]["exit_code"] == 128 + signal.SIGKILL
    assert processes_with_env("DLAPP_APP_ID", app_id) == []


def test_kill_of_a_queued_app_finishes_it_at_once(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    spec = AppSpec.from_file(
        make_app("sleep 1\n", name="queued", resources={"cpus": 1, "memory": "256M", "gpus": 2})
    )
    blocker = client.submit(spec, pack(Path(spec.workspace.path), tmp_path))
    queued = client.submit(spec, pack(Path(spec.workspace.path), tmp_path))
    try:
        assert client.kill(queued["id"])["final_status"] == "KILLED"
        assert client.get(queued["id"])["containers"] == []
    finally:
        client.kill(blocker["id"])


def test_dead_supervisor_takes_its_processes_down_and_the_app_runs_again(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    """The container's supervisor is its node's agent: killed, it takes the container's whole
    process tree with it; the app goes back to its queue (not its failure) and runs again."""
    app_id = _start(client, make_app, tmp_path, TREE, "orphan")
    first = client.get(app_id)["containers"][0]
    guard_pid = first["pid"]
    supervisor_pid = int(Path(f"/proc/{guard_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    first_tree = processes_with_env("DLAPP_APP_ID", app_id)
    os.kill(supervisor_pid, signal.SIGKILL)
    wait_for(
        lambda: not set(first_tree) & set(processes_with_env("DLAPP_APP_ID", app_id)),
        20,
        "the first attempt's processes to end",
    )
    wait_for(
        lambda: (a := client.get(app_id))["attempt"] == 2 and a["state"] == "RUNNING",
        60,
        "the app to run again",
    )
    requeued = [e["reason"] for e in client.events(app_id) if e["to_state"] == "ACCEPTED"]
    assert any("lost with its node's agent" in r for r in requeued), requeued
    client.kill(app_id)
    done = client.wait(app_id, timeout_s=60)
    assert done["final_status"] == "KILLED"
    wait_for(lambda: processes_with_env("DLAPP_APP_ID", app_id) == [], 10, "no processes")
