"""Two servers share one store and one Ray cluster; exactly one schedules at a time.

A leader stalled with SIGSTOP is replaced once its lease runs out; when it wakes, its writes
are fenced off (rolled back). Then the new leader is killed with SIGKILL and the first takes
over again. No app is admitted twice, and every acknowledged app completes. Once with a shared
SQLite file, once with a real PostgreSQL server (test_store_lease.py races the lease itself)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from databases import DATABASES, fresh_database
from dlapp.client import DlappClient

from clusters import submit_spec
from conftest import AppFactory, start_server, stop_server, wait_for, wait_running
from invariants import assert_running_matches

pytestmark = pytest.mark.cluster
LEASE_S = 3.0


def _home(root: Path, name: str, shared: Path, db_url: str) -> Path:
    home = root / name
    home.mkdir()
    config = {
        "db_url": db_url,
        "artifact_dir": str(shared / "artifacts"),
        "lease_ttl_s": LEASE_S,
        "schedule_interval_s": 0.3,
    }
    (home / "server.yaml").write_text(yaml.safe_dump(config))
    return home


@pytest.mark.parametrize("ray_cluster", [2], indirect=True)
@pytest.mark.parametrize("database", DATABASES)
def test_one_scheduler_at_a_time_with_fencing_and_takeover(
    ray_cluster: str,
    database: str,
    tmp_path: Path,
    make_app: AppFactory,
    request: pytest.FixtureRequest,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    if database == "postgresql":  # a real cluster's store: the lease is a row both servers lock
        db_url = fresh_database(request.getfixturevalue("postgres"))
    else:  # the servers share one SQLite file
        db_url = f"sqlite:///{shared / 'store.db'}"
    a_home, b_home = _home(tmp_path, "a", shared, db_url), _home(tmp_path, "b", shared, db_url)
    a, a_url = start_server(a_home, ray_cluster)  # first: it leads, and makes the first admin
    b, b_url = start_server(b_home, ray_cluster)
    try:
        with DlappClient(a_url, (a_home / "admin.token").read_text().strip()) as admin:
            token = admin.admin_add_user("quinn")["token"]
        gpu = {"cpus": 1, "memory": "128M", "gpus": 1}
        work = 'for i in $(seq 1 24); do echo "tick $i"; sleep 0.25; done\n'
        with DlappClient(a_url, token) as via_a:
            first = [
                submit_spec(via_a, make_app(work, name=f"first{i}", resources=gpu), tmp_path)
                for i in range(2)
            ]
            for app_id in first:
                wait_running(via_a, app_id)
        # the leader stalls; the standby takes over once the lease has run out
        os.kill(a.pid, signal.SIGSTOP)
        with DlappClient(b_url, token) as via_b:
            later = [
                submit_spec(
                    via_b, make_app("echo later\n", name=f"later{i}", resources=gpu), tmp_path
                )
                for i in range(2)
            ]
            wait_for(
                lambda: all(via_b.get(x)["state"] == "FINISHED" for x in first + later),
                120,
                "the standby to finish every app",
            )
            # the stalled leader wakes up: whatever it writes now is fenced off
            os.kill(a.pid, signal.SIGCONT)
            wait_for(
                lambda: "lost the scheduler lease" in (a_home / "server.log").read_text(),
                30,
                "the old leader to find itself fenced",
            )
            last = submit_spec(via_b, make_app(work, name="last", resources=gpu), tmp_path)
            wait_running(via_b, last)
        # the new leader dies hard; the first server leads again and finishes the last app
        os.kill(b.pid, signal.SIGKILL)
        b.wait()
        with DlappClient(a_url, (a_home / "admin.token").read_text().strip()) as admin:
            assert_running_matches(admin.list_apps)
        with DlappClient(a_url, token) as via_a:
            done = via_a.wait(last, timeout_s=120)
            assert done["final_status"] == "SUCCEEDED", done
            for app_id in first + later + [last]:
                app = via_a.get(app_id)
                assert app["final_status"] == "SUCCEEDED", app
                starts = [e for e in via_a.events(app_id) if e["to_state"] == "RUNNING"]
                assert len(starts) == 1 and app["attempt"] == 1, (app_id, starts)  # never twice
            assert "tick 24" in via_a.logs(last)
            reasons = [e["reason"] for e in via_a.events(last)]
            assert "taken over by a restarted server" in reasons
        with DlappClient(a_url, (a_home / "admin.token").read_text().strip()) as admin:
            assert assert_running_matches(admin.list_apps) == 0
    finally:
        stop_server(a)
        stop_server(b)
        time.sleep(0.1)
