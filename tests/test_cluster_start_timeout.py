"""Containers stuck STARTING: a placement group that Ray never places (``start_path: actor``,
where each app has one; through the nodes' agents, ``test_cluster_agent.py`` checks an agent that
never answers).

Something outside dlapp holds the node's only GPU in Ray (a placement group of its own), so
dlapp, which sees the GPU free, admits an app whose placement group then stays pending. After
``start_timeout_s`` the app goes back to its queue (not counted against max_attempts), its
placement group is removed; the second time it ends FAILED with the reason. Once the GPU is
really free, an app runs on it: nothing was leaked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dlapp.config import ServerSettings
from dlapp.server.app import create_app

from clusters import ray_head
from conftest import wait_for
from inprocess import add_user, admin_token, bearer, submit
from invariants import assert_running_matches

pytestmark = pytest.mark.cluster
START_TIMEOUT_S = 8.0  # long enough for a worker process to start on a loaded machine
GPU = {"cpus": 1, "memory": "128M", "gpus": 1}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[TestClient, str, Path]]:
    with ray_head(gpus=1, cpus=2) as cluster:
        home = tmp_path / "home"
        settings = ServerSettings(
            home=home,
            ray_address=cluster.address,
            schedule_interval_s=0.2,
            start_timeout_s=START_TIMEOUT_S,
            start_path="actor",
            file_roots=(tmp_path,),
        )
        with TestClient(create_app(settings)) as api:
            yield api, add_user(api, home, "sam"), home


def _app(api: TestClient, token: str, app_id: str) -> dict[str, Any]:
    result: dict[str, Any] = api.get(f"/api/v1/apps/{app_id}", headers=bearer(token)).json()
    return result


def _dlapp_groups(app_id: str) -> list[str]:
    import ray

    table = ray.util.placement_group_table()
    return [g["state"] for g in table.values() if g["name"] == f"dlapp:{app_id}"]


def test_an_app_whose_placement_group_never_places_is_requeued_then_fails(
    server: tuple[TestClient, str, Path], tmp_path: Path
) -> None:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    api, token, home = server
    # the server's executor connected this process to Ray: hold the GPU behind dlapp's back
    blocker = placement_group([{"CPU": 0.1, "GPU": 1}])
    ray.get(blocker.ready(), timeout=60)
    app_id = submit(api, tmp_path, token, script="echo ran\n", resources=GPU).json()["id"]
    requeued = wait_for(
        lambda: any(
            e["to_state"] == "ACCEPTED" and e["reason"].startswith("requeued")
            for e in api.get(f"/api/v1/apps/{app_id}/events", headers=bearer(token)).json()[
                "events"
            ]
        ),
        60,
        "the app to go back to its queue",
    )
    assert requeued
    done = wait_for(
        lambda: (a := _app(api, token, app_id))["state"] == "FINISHED" and a,
        60,
        "the second timeout to end it",
    )
    assert done["final_status"] == "FAILED", done
    assert done["attempt"] == 2
    assert f"did not start within {START_TIMEOUT_S:g}s" in done["diagnostics"], done
    assert "placement group was never placed" in done["diagnostics"], done
    events = api.get(f"/api/v1/apps/{app_id}/events", headers=bearer(token)).json()["events"]
    first = next(e for e in events if e["reason"].startswith("requeued"))
    assert "not counted against max_attempts" in first["reason"]
    # its placement groups are gone, and the GPU is free again in dlapp's books
    wait_for(lambda: set(_dlapp_groups(app_id)) == {"REMOVED"}, 30, "its placement groups removed")
    nodes = api.get("/api/v1/cluster", headers=bearer(token)).json()["nodes"]
    assert all(g["app_id"] is None for n in nodes for g in n["gpus"])
    # with the GPU really free, an app runs on it
    remove_placement_group(blocker)
    later = submit(api, tmp_path, token, script="echo ran\n", resources=GPU).json()["id"]
    finished = wait_for(
        lambda: (a := _app(api, token, later))["state"] == "FINISHED" and a, 60, "the later app"
    )
    assert finished["final_status"] == "SUCCEEDED", finished
    assert finished["attempt"] == 1

    def all_apps() -> list[dict[str, Any]]:
        apps: list[dict[str, Any]] = api.get(
            "/api/v1/apps", headers=bearer(admin_token(home))
        ).json()["apps"]
        return apps

    assert assert_running_matches(all_apps) == 0
