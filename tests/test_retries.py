"""max_attempts: an app that fails by itself runs again while it has attempts left; a kill is
not retried. (Lost nodes and preemptions never count: see the cluster tests.)"""

from __future__ import annotations

import time
from pathlib import Path

from dlapp.config import ServerSettings

from inprocess import add_user, bearer, serve, submit, wait_finished

# fails on its first attempt, succeeds once the checkpoint dir holds its marker
FLAKY = (
    'if [ -f "$DLAPP_CHECKPOINT_DIR/tried" ]; then echo ok; exit 0; fi\n'
    'touch "$DLAPP_CHECKPOINT_DIR/tried"; echo failing; exit 3\n'
)


def test_a_failed_attempt_is_retried_while_attempts_are_left(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with serve(ServerSettings(home=home, schedule_interval_s=0.05)) as api:
        token = add_user(api, home, "gina")
        app_id = submit(api, tmp_path, token, script=FLAKY, max_attempts=2).json()["id"]
        done = wait_finished(api, app_id, token)
        events = api.get(f"/api/v1/apps/{app_id}/events", headers=bearer(token)).json()["events"]
    assert done["final_status"] == "SUCCEEDED" and done["attempt"] == 2
    assert any("retrying: attempt 1 of 2 failed" in e["reason"] for e in events)


def test_without_attempts_left_the_failure_is_final(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with serve(ServerSettings(home=home, schedule_interval_s=0.05)) as api:
        token = add_user(api, home, "hal")
        app_id = submit(api, tmp_path, token, script=FLAKY).json()["id"]  # max_attempts 1
        done = wait_finished(api, app_id, token)
    assert done["final_status"] == "FAILED" and done["attempt"] == 1
    assert "exited with code 3" in done["diagnostics"]


def test_a_killed_app_is_not_retried(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with serve(ServerSettings(home=home, schedule_interval_s=0.05)) as api:
        token = add_user(api, home, "ivy")
        app_id = submit(api, tmp_path, token, script="sleep 30\n", max_attempts=3).json()["id"]
        deadline = time.monotonic() + 20
        url = f"/api/v1/apps/{app_id}"
        while api.get(url, headers=bearer(token)).json()["containers"] == [] or any(
            c["state"] != "RUNNING"
            for c in api.get(url, headers=bearer(token)).json()["containers"]
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        api.post(f"{url}/kill", headers=bearer(token))
        done = wait_finished(api, app_id, token)
    assert done["final_status"] == "KILLED" and done["attempt"] == 1
