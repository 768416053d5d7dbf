"""Admins drain a node (no new apps, running ones finish) or cordon it (running ones are
evicted back to their queue), and make it ready again."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dlapp.config import ServerSettings

from inprocess import add_user, admin_token, bearer, serve, submit


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, str, str]]:
    home = tmp_path / "home"
    with serve(ServerSettings(home=home, schedule_interval_s=0.05, softkill_grace_s=2)) as tc:
        yield tc, add_user(tc, home, "paul"), admin_token(home)


def _until(fn: Any, what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _app(tc: TestClient, token: str, app_id: str) -> dict[str, Any]:
    result: dict[str, Any] = tc.get(f"/api/v1/apps/{app_id}", headers=bearer(token)).json()
    return result


def _node(tc: TestClient, token: str) -> dict[str, Any]:
    (node,) = tc.get("/api/v1/cluster", headers=bearer(token)).json()["nodes"]
    result: dict[str, Any] = node
    return result


def test_drain_lets_running_apps_finish_and_starts_nothing_new(
    api: tuple[TestClient, str, str], tmp_path: Path
) -> None:
    tc, token, admin = api
    running = submit(tc, tmp_path, token, script="sleep 1; echo done\n").json()["id"]
    _until(lambda: _app(tc, token, running)["state"] == "RUNNING", "the app to run")
    resp = tc.post("/api/v1/admin/nodes/local/drain", headers=bearer(admin))
    assert resp.status_code == 200 and resp.json()["evicted"] == []
    assert tc.post("/api/v1/admin/nodes/local/drain", headers=bearer(token)).status_code == 403
    assert _node(tc, token)["state"] == "draining"
    waiting = submit(tc, tmp_path, token, script="echo later\n").json()["id"]
    assert _until(lambda: _app(tc, token, running)["final_status"] == "SUCCEEDED", "finish")
    reason = _until(
        lambda: "position" in (r := _app(tc, token, waiting)["pending_reason"]) and r,
        "the scheduler's reason",
    )
    assert "no schedulable node" in reason
    assert _node(tc, token)["state"] == "drained"
    tc.post("/api/v1/admin/nodes/local/ready", headers=bearer(admin))
    assert _until(lambda: _app(tc, token, waiting)["final_status"] == "SUCCEEDED", "the waiter")


def test_cordon_evicts_running_apps_back_to_their_queue(
    api: tuple[TestClient, str, str], tmp_path: Path
) -> None:
    tc, token, admin = api
    script = (
        'if [ -f "$DLAPP_CHECKPOINT_DIR/again" ]; then exit 0; fi\n'
        'trap \'cat "$DLAPP_NOTICE_FILE"; touch "$DLAPP_CHECKPOINT_DIR/again"; exit 143\' TERM\n'
        "echo up; sleep 30 & wait\n"
    )
    app_id = submit(tc, tmp_path, token, script=script).json()["id"]
    _until(lambda: "up" in tc.get(f"/api/v1/apps/{app_id}/logs", headers=bearer(token)).text, "up")
    resp = tc.post("/api/v1/admin/nodes/local/cordon", headers=bearer(admin))
    assert resp.json()["evicted"] == [app_id]
    _until(lambda: _app(tc, token, app_id)["state"] == "ACCEPTED", "the eviction")
    assert _node(tc, token)["state"] == "cordoned"
    events = tc.get(f"/api/v1/apps/{app_id}/events", headers=bearer(token)).json()["events"]
    assert any("evicted: node local was cordoned" in e["reason"] for e in events)
    tc.post("/api/v1/admin/nodes/local/ready", headers=bearer(admin))
    done = _until(lambda: (a := _app(tc, token, app_id))["state"] == "FINISHED" and a, "the end")
    assert done["final_status"] == "SUCCEEDED" and done["attempt"] == 2


def test_an_unknown_node_is_named_as_such(api: tuple[TestClient, str, str]) -> None:
    tc, _, admin = api
    resp = tc.post("/api/v1/admin/nodes/nope/drain", headers=bearer(admin))
    assert resp.status_code == 404 and "no node matches 'nope'" in resp.json()["error"]["message"]
    bad = tc.post("/api/v1/admin/nodes/local/explode", headers=bearer(admin))
    assert bad.status_code == 400


def test_node_join_builds_the_ray_start_command() -> None:
    from dlapp.cli.nodes_join import join_command

    cmd = join_command("10.0.0.1:6379", gpus=8, cpus=32, node_ip="10.0.0.7")
    assert cmd[0].endswith("/ray") and cmd[1] == "start"
    assert "--address=10.0.0.1:6379" in cmd and "--num-gpus=8" in cmd
    assert "--num-cpus=32" in cmd and "--node-ip-address=10.0.0.7" in cmd
