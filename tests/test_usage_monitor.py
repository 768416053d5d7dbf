"""GPU utilisation wired end to end on a live server: supervisors sample their GPUs (the
``test-file:`` sampler stands in for NVML on this machine without GPUs), the server stores it
per container, shows it per app, flags idle GPUs, accounts GPU-hours used, records the queues
over time, and counts staging in ``/metrics``. Plus the store's migrations stay one line."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from dlapp.config import ServerSettings
from dlapp.store.db import MIGRATIONS
from dlapp.store.models import QueueSample

from inprocess import add_user, admin_token, bearer, serve, submit


@dataclass
class Server:
    api: TestClient
    home: Path
    gpus: Path  # the utilisation file the supervisors' sampler reads
    alice: str
    admin: str

    def set_utilisation(self, **percent: float) -> None:
        tmp = self.gpus.with_suffix(".tmp")
        tmp.write_text(json.dumps({k.removeprefix("gpu"): v for k, v in percent.items()}))
        tmp.replace(self.gpus)

    def app(self, app_id: str, token: str | None = None) -> dict[str, Any]:
        resp = self.api.get(f"/api/v1/apps/{app_id}", headers=bearer(token or self.alice))
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    def until(self, what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = check()
            if got:
                return got
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    home = tmp_path / "home"
    gpus = tmp_path / "gpu-utilisation.json"
    settings = ServerSettings(
        home=home,
        schedule_interval_s=0.05,
        gpu_sampler=f"test-file:{gpus}",
        gpu_sample_interval_s=0.1,
        gpu_idle_after_s=0.6,
        timeseries_interval_s=0.2,
        tenancy="single",  # usage and staging figures; the multi-user rules: test_tenancy.py
    )
    with serve(settings) as api:  # LocalExecutor: 2 declared GPUs, ids 0 and 1
        yield Server(api, home, gpus, add_user(api, home, "alice"), admin_token(home))


def scrape(server: Server) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    resp = server.api.get("/metrics", headers=bearer(server.alice))
    assert resp.status_code == 200
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_utilisation_is_sampled_stored_shown_and_accounted(server: Server, tmp_path: Path) -> None:
    server.set_utilisation(gpu0=80, gpu1=30)
    app_id = submit(
        server.api, tmp_path, server.alice, "sleep 60\n", resources={"gpus": 1, "memory": "128M"}
    ).json()["id"]
    app = server.until(
        "samples of the app's GPU",
        lambda: (a := server.app(app_id))["gpu_usage"] and a["gpu_usage"]["samples"] >= 3 and a,
    )
    held = app["containers"][0]["gpu_ids"]
    assert held == ["0"]  # the first free GPU: only its reading (80%) is this app's
    usage = app["gpu_usage"]
    assert usage["containers"][0]["gpus"] == {"0": {"utilisation": 80.0, "memory_used_mb": 0}}
    assert usage["containers"][0]["utilisation"] == 80.0
    assert usage["utilisation_mean"] == pytest.approx(80.0, abs=0.5)
    assert usage["idle"] is False and usage["idle_since"] is None

    metrics = scrape(server)
    node = app["containers"][0]["node"]
    assert metrics["dlapp_gpu_utilisation_percent"] == {(("gpu", "0"), ("node", node)): 80.0}
    assert metrics["dlapp_apps_gpu_idle"] == {(("queue", "root.default"),): 0.0}

    kill = server.api.post(f"/api/v1/apps/{app_id}/kill", headers=bearer(server.alice))
    assert kill.status_code == 200
    finished = server.until(
        "the kill", lambda: (a := server.app(app_id))["state"] == "FINISHED" and a
    )
    done = finished["gpu_usage"]  # the last report came with the exit, in the same commit
    assert done["samples"] >= usage["samples"]
    time.sleep(5 * 0.1)  # five sample intervals: nothing changes an ended app's figures
    assert server.app(app_id)["gpu_usage"] == done
    report = server.api.get(
        "/api/v1/usage", headers=bearer(server.alice), params={"by": "queue"}
    ).json()
    [row] = report["rows"]
    assert row["key"] == "root.default"
    # hours are rounded to 4 places: compare within that
    assert row["gpu_hours_used"] == pytest.approx(done["gpu_hours_used"], abs=1e-4)
    assert row["utilisation"] == pytest.approx(80.0, abs=8)  # 80% busy while sampled
    assert report["total_gpu_hours_used"] == row["gpu_hours_used"]
    used_s = scrape(server)["dlapp_gpu_used_seconds_total"][(("queue", "root.default"),)]
    assert used_s == pytest.approx(done["gpu_hours_used"] * 3600, rel=0.01)


def test_an_app_leaving_its_gpus_idle_is_flagged_and_unflagged(
    server: Server, tmp_path: Path
) -> None:
    server.set_utilisation(gpu0=90, gpu1=90)
    app_id = submit(
        server.api,
        tmp_path,
        server.alice,
        "sleep 60\n",
        resources={"gpus": 1, "memory": "128M"},
        num_containers=2,
    ).json()["id"]
    server.until("samples", lambda: (u := server.app(app_id)["gpu_usage"]) and u["samples"] >= 4)
    assert server.app(app_id)["gpu_usage"]["idle"] is False

    server.set_utilisation(gpu0=0, gpu1=2)  # both containers' GPUs under 5%
    flagged = server.until(
        "the idle flag", lambda: (a := server.app(app_id))["gpu_usage"]["idle"] and a
    )
    assert flagged["gpu_usage"]["idle_since"] is not None
    events = server.api.get(f"/api/v1/apps/{app_id}/events", headers=bearer(server.alice)).json()
    idle_events = [e["reason"] for e in events["events"] if e["kind"] == "gpu-idle"]
    assert (
        len(idle_events) == 1 and "2 GPU(s) have been idle (under 5% utilisation)" in idle_events[0]
    )
    listed = server.api.get("/api/v1/apps", headers=bearer(server.alice)).json()["apps"]
    assert [a["gpu_usage"]["idle"] for a in listed if a["id"] == app_id] == [True]
    assert scrape(server)["dlapp_apps_gpu_idle"] == {(("queue", "root.default"),): 1.0}

    server.set_utilisation(gpu0=0, gpu1=60)  # one container works again: not idle
    server.until("the flag cleared", lambda: not server.app(app_id)["gpu_usage"]["idle"])
    events = server.api.get(f"/api/v1/apps/{app_id}/events", headers=bearer(server.alice)).json()
    reasons = [e["reason"] for e in events["events"] if e["kind"] == "gpu-idle"]
    assert reasons[1:] == ["its GPUs are busy again"]
    server.api.post(f"/api/v1/apps/{app_id}/kill", headers=bearer(server.alice))


def test_queues_are_sampled_over_time(server: Server, tmp_path: Path) -> None:
    server.set_utilisation(gpu0=50, gpu1=50)
    gpus = {"gpus": 2, "memory": "128M"}
    first = submit(server.api, tmp_path, server.alice, "sleep 60\n", resources=gpus).json()["id"]
    second = submit(server.api, tmp_path, server.alice, "sleep 60\n", resources=gpus).json()["id"]

    def sampled() -> dict[str, Any] | None:
        got = server.api.get("/api/v1/timeseries", headers=bearer(server.alice)).json()
        root = got["queues"].get("root")
        if root and any(u == 1.0 for u in root["gpus_used"] if u is not None):
            return got
        return None

    got = server.until("a sample with both GPUs half used", sampled)
    assert got["interval_s"] == 0.2
    root, leaf = got["queues"]["root"], got["queues"]["root.default"]
    i = max(k for k, u in enumerate(root["gpus_used"]) if u == 1.0)
    assert root["gpus_capacity"][i] == 2 and root["gpus_allocated"][i] == 2
    assert root["apps_running"][i] == 1 and root["apps_pending"][i] == 1
    assert root["wait_s"][i] > 0  # the second app waits for the first's GPUs
    assert leaf["gpus_allocated"][i] == 2
    assert root["time"] == sorted(root["time"])
    later = server.api.get(
        "/api/v1/timeseries", headers=bearer(server.alice), params={"since": "2999-01-01"}
    )
    assert later.status_code == 400
    for app_id in (first, second):
        server.api.post(f"/api/v1/apps/{app_id}/kill", headers=bearer(server.alice))


def test_the_plot_ends_with_what_the_cluster_view_says_now(tmp_path: Path) -> None:
    """Samples are an hour apart here: the plot's last point is still now, so the dashboard's
    chart never says 0 GPUs allocated beside a summary that says 2 of 2."""
    home = tmp_path / "home"
    settings = ServerSettings(home=home, schedule_interval_s=0.05, timeseries_interval_s=3600)
    with serve(settings) as api:
        alice = bearer(add_user(api, home, "alice"))

        def stored() -> int:
            with api.app.state.ctx.sessions() as session:
                return int(session.scalar(select(func.count()).select_from(QueueSample)) or 0)

        # the monitor's first sample, taken at start (on a loaded machine, after a while)
        deadline = time.monotonic() + 30
        while not stored():
            assert time.monotonic() < deadline, "the monitor stored no sample"
            time.sleep(0.05)
        app_id = submit(
            api,
            tmp_path,
            alice["Authorization"].removeprefix("Bearer "),
            "sleep 60\n",
            resources={"gpus": 2, "memory": "128M"},
        ).json()["id"]

        def allocated() -> float | None:
            nodes = api.get("/api/v1/cluster", headers=alice).json()["nodes"]
            used = sum(n["used"]["gpus"] for n in nodes)
            return used or None

        deadline = time.monotonic() + 30
        while not allocated():
            assert time.monotonic() < deadline, "the app never got its GPUs"
            time.sleep(0.05)
        got = api.get("/api/v1/timeseries", headers=alice).json()["queues"]
        root = got["root"]
        assert len(root["time"]) == 2  # the one stored sample (at start), and now
        assert root["gpus_allocated"][-1] == allocated() == 2
        assert got["root.default"]["gpus_allocated"][-1] == 2
        assert root["apps_running"][-1] == 1
        assert root["time"][-1] > root["time"][0]
        api.post(f"/api/v1/apps/{app_id}/kill", headers=alice)


def test_staging_bytes_reach_the_metrics(server: Server, tmp_path: Path) -> None:
    data = tmp_path / "in.bin"
    data.write_bytes(b"x" * 300_000)
    app_id = submit(
        server.api,
        tmp_path,
        server.alice,
        "cp data/in.bin out.bin\n",
        inputs=[{"url": str(data), "path": "data"}],  # lands as data/in.bin
        outputs=[{"url": str(tmp_path / "out.bin"), "path": "out.bin"}],
    ).json()["id"]
    server.until("the app", lambda: server.app(app_id)["state"] == "FINISHED")
    assert server.app(app_id)["final_status"] == "SUCCEEDED"

    def counted() -> dict[str, Any] | None:
        m = scrape(server)
        staged = m.get("dlapp_staging_bytes_total", {})
        return m if staged.get((("direction", "out"),)) else None

    m = server.until("staging in the metrics", counted)
    assert m["dlapp_staging_bytes_total"] == {
        (("direction", "in"),): 300_000.0,
        (("direction", "out"),): 300_000.0,
    }
    assert m["dlapp_staging_seconds_total"][(("direction", "in"),)] > 0
    assert m["dlapp_staging_throughput_bytes_per_second"][(("direction", "in"),)] > 0


def test_the_migrations_form_one_line() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    heads = ScriptDirectory.from_config(cfg).get_heads()
    assert len(heads) == 1, f"several migration heads {heads}: chain the newest after the other"


def test_a_bad_sampler_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gpu_sampler"):
        ServerSettings(home=tmp_path, gpu_sampler="cuda")
