"""Accounting: GPU-hours per user or queue (pure), ``/api/v1/usage`` and ``dlapp usage``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from dlapp.cli.main import main
from dlapp.config import ServerSettings
from dlapp.server.accounting import Allocation, held_seconds, usage

from inprocess import add_user, admin_token, bearer, live, serve, submit, wait_finished

H = 3600.0


def alloc(
    app: str,
    user: str = "alice",
    queue: str = "root.a",
    gpus: int = 1,
    start: float = 0.0,
    end: float | None = H,
) -> Allocation:
    return Allocation(app, user, queue, gpus, start, end)


def test_only_the_part_inside_the_period_counts() -> None:
    a = alloc("x", start=0, end=10 * H)
    assert held_seconds(a, 2 * H, 5 * H) == 3 * H
    assert held_seconds(a, 20 * H, 30 * H) == 0
    assert held_seconds(alloc("y", start=H, end=None), 0, 4 * H) == 3 * H  # still running


def test_gpu_hours_group_by_user_and_by_queue() -> None:
    allocations = [
        alloc("a1", gpus=2, start=0, end=H),  # alice: 2 GPU-hours
        alloc("a1", gpus=2, start=0, end=H),  # its second container: 2 more
        alloc("b1", user="bob", queue="root.b", gpus=1, start=0, end=3 * H),  # bob: 3
        alloc("c1", user="carol", gpus=0, start=0, end=H),  # no GPU: left out
    ]
    by_user = usage(allocations, 0, 10 * H, "user")
    assert [(r.key, r.gpu_hours, len(r.apps), r.containers) for r in by_user] == [
        ("alice", 4.0, 1, 2),
        ("bob", 3.0, 1, 1),
    ]
    by_queue = {r.key: r.gpu_hours for r in usage(allocations, 0, 10 * H, "queue")}
    assert by_queue == {"root.a": 4.0, "root.b": 3.0}


def test_used_gpu_hours_come_from_the_samples_where_there_are_some() -> None:
    sampled = Allocation("a1", "alice", "root.a", 1, 0, H, used_gpu_seconds=1800)
    rows = usage([sampled, alloc("b1", user="bob")], 0, H)
    got = {r.key: (r.to_dict()["gpu_hours_used"], r.to_dict()["utilisation"]) for r in rows}
    assert got == {"alice": (0.5, 50.0), "bob": (None, None)}


def test_utilisation_is_over_the_time_measured_not_the_unsampled_start() -> None:
    """CI's loaded machine took long to start a container sampled at 80%: counted as idle, the
    unsampled start made its queue's utilisation 59%."""
    slow_start = Allocation(
        "a1", "alice", "root.a", 2, 0, H, used_gpu_seconds=0.8 * H, sampled_seconds=0.5 * H
    )
    [row] = usage([slow_start], 0, H)
    assert row.gpu_hours == 2.0 and row.gpu_hours_used == 0.8
    assert row.to_dict()["utilisation"] == 80.0  # 0.8 of the 2 x 0.5 GPU-hours measured
    [half] = usage([slow_start], 0, H / 2)  # cut with the period as the use is
    assert half.to_dict()["utilisation"] == 80.0 and half.gpu_hours_used == 0.4


def test_used_gpu_hours_are_cut_with_the_period() -> None:
    """A container's measured use spreads evenly over its life: half of it in half the time."""
    two_gpus = Allocation("a1", "alice", "root.a", 2, 0, 2 * H, used_gpu_seconds=2 * H)
    [row] = usage([two_gpus], H, 10 * H)
    assert row.gpu_hours == 2.0 and row.gpu_hours_used == 1.0  # 2 GPUs, 1 h of 2 h in it
    assert row.to_dict()["utilisation"] == 50.0
    running = Allocation("a2", "alice", "root.a", 1, 0, None, used_gpu_seconds=0.9 * H)
    [row] = usage([running], 0, H)  # still running at ``until``: all of it so far counts
    assert row.gpu_hours_used == 0.9


def test_usage_route_shows_users_their_own_and_admins_everyone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with serve(ServerSettings(home=home, schedule_interval_s=0.05)) as api:
        alice = add_user(api, home, "alice")
        bob = add_user(api, home, "bob")
        gpus = {"gpus": 1, "memory": "128M"}
        a = submit(api, tmp_path, alice, "sleep 0.3\n", resources=gpus, num_containers=2).json()
        b = submit(api, tmp_path, bob, "sleep 0.3\n", resources=gpus).json()
        assert wait_finished(api, a["id"], alice, timeout=20)["final_status"] == "SUCCEEDED"
        assert wait_finished(api, b["id"], bob, timeout=20)["final_status"] == "SUCCEEDED"

        mine = api.get("/api/v1/usage", headers=bearer(alice)).json()
        assert mine["scope"] == "alice"
        assert [(r["key"], r["apps"], r["containers"]) for r in mine["rows"]] == [("alice", 1, 2)]
        assert 0 < mine["rows"][0]["gpu_hours"] < 0.01
        asked_for_bob = api.get("/api/v1/usage", headers=bearer(alice), params={"by": "user"})
        assert [r["key"] for r in asked_for_bob.json()["rows"]] == ["alice"]

        everyone = api.get("/api/v1/usage", headers=bearer(admin_token(home))).json()
        assert sorted(r["key"] for r in everyone["rows"]) == ["alice", "bob"]
        assert everyone["total_gpu_hours"] == pytest.approx(
            sum(r["gpu_hours"] for r in everyone["rows"]), abs=1e-3
        )
        by_queue = api.get(
            "/api/v1/usage", headers=bearer(admin_token(home)), params={"by": "queue"}
        ).json()
        assert [(r["key"], r["apps"]) for r in by_queue["rows"]] == [("root.default", 2)]

        future = api.get("/api/v1/usage", headers=bearer(alice), params={"since": "2999-01-01"})
        assert future.status_code == 400  # until (now) is before since
        bad = api.get("/api/v1/usage", headers=bearer(alice), params={"since": "yesterday"})
        assert bad.status_code == 400 and "ISO" in bad.json()["error"]["message"]
        assert api.get("/api/v1/usage", params={"by": "nobody"}).status_code == 401


def test_dlapp_usage_and_the_dashboard_urls_of_launch_and_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    gpus = tmp_path / "gpus.json"  # the GPUs' utilisation, as the supervisors' sampler reads it
    gpus.write_text(json.dumps({"0": 60, "1": 60}))
    settings = ServerSettings(
        home=home,
        schedule_interval_s=0.05,
        gpu_sampler=f"test-file:{gpus}",
        gpu_sample_interval_s=0.1,
        gpu_idle_after_s=0.5,
        tenancy="single",  # usage and staging figures; the multi-user rules: test_tenancy.py
    )
    with live(settings) as url:
        admin = admin_token(home)
        with httpx.Client(base_url=url, headers=bearer(admin)) as http:
            alice = http.post("/api/v1/admin/users", json={"name": "alice"}).json()["token"]
        monkeypatch.setenv("DLAPP_SERVER", url)
        monkeypatch.setenv("DLAPP_TOKEN", alice)
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
        spec = tmp_path / "app.yaml"
        ws = tmp_path / "ws"
        ws.mkdir()
        (ws / "run.sh").write_text("sleep 1\n")
        app_yaml = (
            "name: u\nworkspace: {path: ws}\nentry: {script: run.sh}\n"
            "resources: {gpus: 1, memory: 128M}\n"
        )
        spec.write_text(app_yaml)
        assert main(["launch", str(spec), "--wait"]) == 0
        launched = capsys.readouterr().out
        app_id = launched.split("submitted: ")[1].split()[0]
        assert f"dashboard: {url}/dashboard/#/apps/{app_id}" in launched
        assert main(["status", app_id]) == 0
        status = capsys.readouterr().out
        assert f"Dashboard      : {url}/dashboard/#/apps/{app_id}" in status
        assert "GPU use        : 60% on average" in status

        assert main(["usage", "--json", "--since", "2020-01-01"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["scope"] == "alice" and report["rows"][0]["key"] == "alice"
        assert main(["usage", "--by", "queue"]) == 0
        table = capsys.readouterr().out
        assert "root.default" in table and "total:" in table
        assert "utilisation" in table and " 60% " in table and "used (where sampled)" in table

        gpus.write_text(json.dumps({"0": 0, "1": 0}))  # an app that leaves its GPU idle
        (ws / "run.sh").write_text("sleep 60\n")
        (tmp_path / "data").mkdir()  # and this one has an input to stage
        (tmp_path / "data" / "x.bin").write_bytes(b"x" * 2048)
        spec.write_text(app_yaml + f"inputs: [{{url: 'file://{tmp_path / 'data'}', path: data}}]\n")
        assert main(["launch", str(spec)]) == 0
        idle_id = capsys.readouterr().out.split("submitted: ")[1].split()[0]
        deadline = time.monotonic() + 20
        while True:
            assert main(["list"]) == 0
            listed = capsys.readouterr().out
            if "(idle)" in listed:
                break
            assert time.monotonic() < deadline, listed
            time.sleep(0.2)
        assert main(["status", idle_id]) == 0
        status = capsys.readouterr().out
        assert "; IDLE since " in status
        assert "Staging        : container 0: staging in done: 1 files, 2.0 KiB in " in status
        assert main(["kill", idle_id]) == 0
        assert main(["usage", "--since", "not a date"]) == 1
