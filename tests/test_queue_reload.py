"""The queue file reloaded on change: an admin edits queues.yaml under a running server, with no
reload call, and the scheduling loop takes the new tree on its next cycle (a new queue takes
submissions and runs apps); an invalid edit is refused there too, and the running tree kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from fastapi.testclient import TestClient

from dlapp.config import ServerSettings

from conftest import wait_for
from inprocess import add_user, bearer, serve, submit

ONE = {"queues": {"a": {"guaranteed": "100%"}}}
TWO = {"queues": {"a": {"guaranteed": "50%"}, "b": {"guaranteed": "50%"}}}


def _queues(api: TestClient, token: str) -> dict[str, Any]:
    resp = api.get("/api/v1/queues", headers=bearer(token))
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_an_edited_queue_file_is_used_without_a_reload_call(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    path = home / "queues.yaml"
    path.write_text(yaml.safe_dump(ONE))
    with serve(ServerSettings(home=home, schedule_interval_s=0.05)) as api:
        token = add_user(api, home, "alice")
        refused = submit(api, tmp_path, token, "true\n", queue="b")
        assert refused.status_code == 400 and "no queue 'b'" in refused.text
        path.write_text(yaml.safe_dump(TWO))  # the admin's edit; nobody calls reload
        wait_for(
            lambda: "root.b" in {q["path"] for q in _queues(api, token)["queues"]},
            30,
            "the scheduling loop to load the edited file",
        )
        resp = submit(api, tmp_path, token, "echo in b\n", queue="b")
        assert resp.status_code == 201, resp.text
        app_id = resp.json()["id"]
        app = wait_for(
            lambda: (
                (a := api.get(f"/api/v1/apps/{app_id}", headers=bearer(token)).json())["state"]
                == "FINISHED"
                and a
            ),
            30,
            "the app in the new queue to finish",
        )
        assert app["queue"] == "root.b" and app["final_status"] == "SUCCEEDED", app
        rows = {q["path"]: q for q in _queues(api, token)["queues"]}
        assert rows["root.a"]["guaranteed"]["gpus"] == rows["root.b"]["guaranteed"]["gpus"] == 1


def test_an_invalid_edit_is_refused_by_the_loop_and_the_running_tree_kept(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    path = home / "queues.yaml"
    path.write_text(yaml.safe_dump(TWO))
    with serve(ServerSettings(home=home, schedule_interval_s=0.05)) as api:
        token = add_user(api, home, "alice")
        path.write_text(
            yaml.safe_dump({"queues": {"a": {"guaranteed": "80%"}, "b": {"guaranteed": "40%"}}})
        )
        view = wait_for(
            lambda: (v := _queues(api, token))["error"] and v, 30, "the edit to be refused"
        )
        assert "add up to 120%" in view["error"]
        assert {q["path"] for q in view["queues"]} >= {"root.a", "root.b"}
        assert submit(api, tmp_path, token, "true\n", queue="b").status_code == 201
        path.write_text(yaml.safe_dump(ONE))  # a valid edit clears the error
        view = wait_for(
            lambda: (v := _queues(api, token))["error"] is None and v, 30, "the fixed file"
        )
        assert {q["path"] for q in view["queues"] if q["configured"]} == {"root", "root.a"}
