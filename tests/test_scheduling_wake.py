"""A container's start and end wake the scheduler: an app is RUNNING, then FINISHED, as soon as
its supervisor says so, not at the next periodic cycle. Each server here cycles every
``PERIOD_S``: an app that ends well within one period was seen through the executor's wake.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dlapp.config import ServerSettings
from dlapp.server.app import create_app

from clusters import ray_head
from inprocess import add_user, bearer, serve, submit, wait_finished

PERIOD_S = 60.0
WITHIN_S = 25.0  # well inside one period: only a wake can get there


def settings(tmp: Path, **kw: object) -> ServerSettings:
    return ServerSettings(
        home=tmp / "home",
        schedule_interval_s=PERIOD_S,
        lease_ttl_s=PERIOD_S * 3,  # the leader keeps its lease between cycles
        **kw,  # type: ignore[arg-type]
    )


def _runs_and_ends_between_cycles(api: TestClient, tmp: Path, token: str) -> None:
    # submitting wakes the scheduler (it admits and starts the app); nothing else would
    # before PERIOD_S but the executor's reports of the start and the end
    resp = submit(api, tmp, token, "echo hello\n", resources={"cpus": 1, "memory": "64M"})
    assert resp.status_code == 201, resp.text
    app_id = resp.json()["id"]
    done = wait_finished(api, app_id, token, timeout=WITHIN_S)
    assert done["final_status"] == "SUCCEEDED", done
    events = api.get(f"/api/v1/apps/{app_id}/events", headers=bearer(token)).json()["events"]
    states = [e["to_state"] for e in events if e["kind"] == "state"]
    assert states == ["ACCEPTED", "RUNNING", "FINISHED"]


def test_the_local_executor_wakes_the_scheduler(tmp_path: Path) -> None:
    with serve(settings(tmp_path)) as api:
        token = add_user(api, api.app.state.ctx.settings.home, "sam")
        _runs_and_ends_between_cycles(api, tmp_path, token)


@pytest.mark.cluster
def test_the_ray_executor_wakes_the_scheduler(tmp_path: Path) -> None:
    with ray_head(gpus=0, cpus=2) as cluster:
        s = settings(tmp_path, ray_address=cluster.address, file_roots=(tmp_path,))
        with TestClient(create_app(s)) as api:
            _runs_and_ends_between_cycles(api, tmp_path, add_user(api, s.home, "sam"))
