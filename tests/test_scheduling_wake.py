"""A container's start and end wake the scheduler: an app is RUNNING, then FINISHED, as soon as
its supervisor says so, not at the next periodic cycle. Each server here cycles every
``PERIOD_S``: an app that ends well within one period was seen through the executor's wake.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dlapp.config import ServerSettings
from dlapp.server.app import create_app
from dlapp.server.scheduling import loop
from dlapp.server.scheduling.loop import WAKE_SPACING, spacing

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


def test_spacing_waits_as_long_as_the_last_cycle_took() -> None:
    assert spacing(0.2, 0.0) == pytest.approx(0.2 * WAKE_SPACING)
    assert spacing(0.2, 0.05) == pytest.approx(0.2 * WAKE_SPACING - 0.05)
    assert spacing(0.2, 5.0) == 0.0  # the cycle ended long ago: at once
    assert spacing(0.0, 0.0) == 0.0  # an idle scheduler's cycle: at once


def test_a_stream_of_wakes_gets_spaced_cycles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Woken without pause (hundreds of submissions a second), a scheduler whose cycle takes
    CYCLE_S runs about one cycle per 2 x CYCLE_S, not back to back: the API keeps its share.
    The period is 60 s, so every cycle here is a wake's."""
    cycle_s = 0.2
    monkeypatch.setattr(loop, "WAKE_SPACING", 1.0)
    with serve(settings(tmp_path)) as api:
        scheduler = api.app.state.scheduler
        times: list[float] = []

        def slow_step() -> None:
            times.append(time.monotonic())
            time.sleep(cycle_s)

        scheduler.step = slow_step
        scheduler.wake()
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            scheduler.wake()
            time.sleep(0.005)
        ran = list(times)
    gaps = [b - a for a, b in itertools.pairwise(ran)]
    assert len(gaps) >= 4, times  # woken, it cycles: 3 s of wakes is several cycles
    # back to back would be one cycle per CYCLE_S (15 in 3 s); spaced, one per 2 x CYCLE_S
    assert min(gaps) >= 2 * cycle_s * 0.9, gaps
    assert len(ran) <= 3.0 / (2 * cycle_s) + 2, gaps
