"""``/metrics``: parses with the Prometheus client's parser and agrees with the API."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from dlapp.config import ServerSettings
from dlapp.server.metrics import histogram_buckets

from inprocess import add_user, admin_token, bearer, serve, submit


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    settings = ServerSettings(home=tmp_path / "home", schedule_interval_s=0.05)
    with serve(settings) as tc:
        yield tc


def scrape(api: TestClient, token: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Samples by name, then by their sorted labels."""
    resp = api.get("/metrics", headers=bearer(token))
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def _until(api: TestClient, token: str, app_id: str, check: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app = api.get(f"/api/v1/apps/{app_id}", headers=bearer(token)).json()
        if check(app):
            return app
        time.sleep(0.05)
    raise AssertionError(f"{app_id}: condition not met; last {app}")


def _running_with_gpus(app: dict[str, Any]) -> bool:
    return app["state"] == "RUNNING" and all(c["gpu_ids"] for c in app["containers"])


def test_metrics_need_a_token_and_any_user_may_read_them(api: TestClient, tmp_path: Path) -> None:
    assert api.get("/metrics").status_code == 401
    assert api.get("/metrics", headers=bearer("nope")).status_code == 401
    token = add_user(api, tmp_path / "home", "prometheus")
    assert "dlapp_node_up" in scrape(api, token)


def test_metrics_match_the_cluster_and_queue_views(api: TestClient, tmp_path: Path) -> None:
    home = tmp_path / "home"
    alice = add_user(api, home, "alice")
    running = submit(api, tmp_path, alice, resources={"gpus": 1, "memory": "128M"}).json()
    both = {"gpus": 2, "memory": "128M"}
    waiting = submit(api, tmp_path, alice, resources=both).json()
    _until(api, alice, running["id"], _running_with_gpus)
    _until(api, alice, waiting["id"], lambda a: "position" in a["pending_reason"])

    m = scrape(api, alice)
    cluster = api.get("/api/v1/cluster", headers=bearer(alice)).json()
    for node in cluster["nodes"]:
        name = node["name"]
        for r in ("gpus", "cpus", "memory_mb"):
            key = (("node", name), ("resource", r))
            assert m["dlapp_node_resource_allocated"][key] == node["used"][r]
            assert m["dlapp_node_resource_total"][key] == node["total"][r]
        assert m["dlapp_node_up"][(("node", name),)] == 1.0
    allocated = sum(
        v for k, v in m["dlapp_node_resource_allocated"].items() if ("resource", "gpus") in k
    )
    held = [g for n in cluster["nodes"] for g in n["gpus"] if g["app_id"]]
    assert allocated == len(held) == 1

    queues = api.get("/api/v1/queues", headers=bearer(alice)).json()["queues"]
    for q in queues:
        for kind in ("guaranteed", "maximum", "used", "pending"):
            got = m[f"dlapp_queue_resource_{kind}"][(("queue", q["path"]), ("resource", "gpus"))]
            assert got == q[kind]["gpus"], (kind, q["path"])
        assert m["dlapp_queue_apps_running"][(("queue", q["path"]),)] == q["running_apps"]
        assert m["dlapp_queue_apps_pending"][(("queue", q["path"]),)] == q["pending_apps"]

    apps = m["dlapp_apps"]
    assert (
        apps[(("queue", "root.default"), ("state", "RUNNING"))] == cluster["apps"]["RUNNING"] == 1
    )
    assert apps[(("queue", "root.default"), ("state", "ACCEPTED"))] == cluster["apps"]["ACCEPTED"]
    assert m["dlapp_app_wait_seconds_count"][(("queue", "root.default"),)] == 1
    assert m["dlapp_scheduler_cycle_seconds_count"][()] > 0

    kill = api.post(f"/api/v1/apps/{running['id']}/kill", headers=bearer(alice))
    assert kill.status_code == 200
    _until(api, alice, running["id"], lambda a: a["state"] == "FINISHED")
    _until(api, alice, waiting["id"], _running_with_gpus)
    after = scrape(api, admin_token(home))
    assert (
        after["dlapp_apps_finished"][(("final_status", "KILLED"), ("queue", "root.default"))] == 1
    )
    assert after["dlapp_app_wait_seconds_count"][(("queue", "root.default"),)] == 2
    gpus = after["dlapp_queue_resource_used"][(("queue", "root.default"), ("resource", "gpus"))]
    assert gpus == 2


def test_histogram_buckets_are_cumulative() -> None:
    buckets, total = histogram_buckets([0.5, 2.0, 7.0], (1.0, 5.0))
    assert buckets == [("1.0", 1.0), ("5.0", 2.0), ("+Inf", 3.0)]
    assert total == 9.5
