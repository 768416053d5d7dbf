"""The server's routes, services and scheduling cycle in-process, over the LocalExecutor.

No Ray here: the executor layer is swapped for the in-process one (real supervisor, real
process runtime), so these run in seconds. The Ray path is covered by the cluster tests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dlapp.config import ServerSettings
from dlapp.data.workspace import pack_workspace
from dlapp.executor import LocalExecutor
from dlapp.scheduler import Resources
from dlapp.server.app import create_app
from dlapp.spec import AppSpec

from conftest import wait_for
from inprocess import add_user, bearer, wait_finished

HEADERS: dict[str, str] = {}  # the api fixture authenticates every request as bob


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[TestClient]:
    """The API on each store: SQLite and PostgreSQL."""
    settings = ServerSettings(
        home=tmp_path / "home",
        db_url=database_url,
        schedule_interval_s=0.05,
        softkill_grace_s=2,
    )
    app = create_app(settings, lambda s: LocalExecutor(Resources(4, 8192, 2)))
    with TestClient(app) as tc:
        tc.headers.update(bearer(add_user(tc, settings.home, "bob")))
        yield tc


def _submit(api: TestClient, tmp: Path, script: str, **spec: Any) -> dict[str, Any]:
    ws = tmp / f"ws{time.monotonic_ns()}"
    ws.mkdir()
    (ws / "run.sh").write_text(script)
    data = {"name": "t", "entry": {"script": "run.sh"}, "resources": {"memory": "128M"}, **spec}
    tarball = pack_workspace(ws, tmp / f"{ws.name}.tar.gz").path
    resp = api.post(
        "/api/v1/apps",
        headers=HEADERS,
        data={"spec": json.dumps(AppSpec.from_dict(data).to_dict())},
        files={"workspace": ("w.tar.gz", tarball.read_bytes(), "application/gzip")},
    )
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_healthz_and_openapi(api: TestClient) -> None:
    assert api.get("/healthz").json()["status"] == "ok"
    paths = api.get("/openapi.json").json()["paths"]
    for p in ("/api/v1/apps", "/api/v1/apps/{app_id}/logs", "/api/v1/cluster"):
        assert p in paths


def test_app_succeeds_and_its_logs_stay(api: TestClient, tmp_path: Path) -> None:
    app = _submit(api, tmp_path, "echo hello $CONTAINER_INDEX/$NUM_CONTAINERS\n", num_containers=2)
    done = wait_finished(api, app["id"], timeout=20)
    assert done["final_status"] == "SUCCEEDED" and done["user"] == "bob"
    for i in (0, 1):
        log = api.get(f"/api/v1/apps/{app['id']}/logs", params={"container": i})
        assert log.text == f"hello {i}/2\n"
        assert log.headers["X-Dlapp-Complete"] == "true"


def test_waiting_app_says_why_and_where(api: TestClient, tmp_path: Path) -> None:
    first = _submit(api, tmp_path, "sleep 30\n", resources={"gpus": 2, "memory": "128M"})
    second = _submit(api, tmp_path, "true\n", resources={"gpus": 1, "memory": "128M"})
    # the first is admitted (its account made, under the multi-user rules) before a cycle
    # gives the second its reason
    waiting = wait_for(
        lambda: (
            "GPU" in (a := api.get(f"/api/v1/apps/{second['id']}").json())["pending_reason"] and a
        ),
        10,
        "the second app's reason",
    )
    assert waiting["state"] == "ACCEPTED"
    assert (
        "GPU" in waiting["pending_reason"]
        and "position 1 in queue root.default" in waiting["pending_reason"]
    )
    assert api.post(f"/api/v1/apps/{first['id']}/kill", headers=HEADERS).status_code == 200
    assert wait_finished(api, first["id"], timeout=20)["final_status"] == "KILLED"
    assert wait_finished(api, second["id"], timeout=20)["final_status"] == "SUCCEEDED"


def test_errors_have_a_code_and_a_message(api: TestClient) -> None:
    resp = api.get("/api/v1/apps/application_0_0001")
    assert resp.status_code == 404
    assert resp.json()["error"] == {"code": "not_found", "message": "no app application_0_0001"}
    bad = api.post(
        "/api/v1/apps",
        headers=HEADERS,
        data={"spec": json.dumps({"name": "x", "entry": {"script": "r.sh"}, "gpus": 1})},
        files={"workspace": ("w.tar.gz", b"", "application/gzip")},
    )
    assert bad.status_code == 400 and "unknown key 'gpus'" in bad.json()["error"]["message"]
    anonymous = api.post("/api/v1/apps/application_0_0001/kill", headers={"Authorization": ""})
    assert anonymous.status_code == 401 and "no token" in anonymous.json()["error"]["message"]


def test_state_filter_and_events(api: TestClient, tmp_path: Path) -> None:
    app = _submit(api, tmp_path, "exit 2\n")
    done = wait_finished(api, app["id"], timeout=20)
    assert done["final_status"] == "FAILED" and "exited with code 2" in done["diagnostics"]
    finished = api.get("/api/v1/apps", params={"state": "FINISHED"}).json()["apps"]
    assert app["id"] in [a["id"] for a in finished]
    assert api.get("/api/v1/apps", params={"state": "RUNNING"}).json()["apps"] == []
    events = api.get(f"/api/v1/apps/{app['id']}/events").json()["events"]
    reasons = " | ".join(e["reason"] for e in events)
    assert "submitted by bob" in reasons and "FAILED" in reasons


def test_a_runtime_the_cluster_lacks_is_refused_at_submit(
    api: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dlapp.runtime import docker

    monkeypatch.setattr(docker, "engine_problem", lambda engine, command: f"no {command!r}")
    spec = {"name": "d", "runtime": "podman", "image": "x", "entry": {"script": "run.sh"}}
    resp = api.post(
        "/api/v1/apps",
        headers=HEADERS,
        data={"spec": json.dumps(spec)},
        files={"workspace": ("w.tar.gz", b"", "application/gzip")},
    )
    assert resp.status_code == 400
    assert "runtime 'podman' is not available" in resp.json()["error"]["message"]
    assert api.get("/api/v1/apps").json()["apps"] == []
