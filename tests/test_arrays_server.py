"""Arrays and sweeps through the real server in-process (LocalExecutor): one request makes every
member, sharing one kept workspace; members run as apps with their own env; the running limit
(``%N``) holds; an array is seen, listed and killed whole or one member at a time, by its owner
(or an admin) only; a refused or failed request keeps nothing."""

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
from inprocess import add_user, admin_token, bearer, wait_finished

ENV_SCRIPT = 'echo "id=$DLAPP_ARRAY_ID index=$DLAPP_ARRAY_INDEX size=$DLAPP_ARRAY_SIZE"\n'


def _settings(home: Path, database_url: str, **extra: Any) -> ServerSettings:
    return ServerSettings(
        home=home, db_url=database_url, schedule_interval_s=0.05, softkill_grace_s=1, **extra
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def api(home: Path, database_url: str) -> Iterator[TestClient]:
    """The API (4 CPUs: four 1-CPU members fit at once), every request as bob."""
    app = create_app(_settings(home, database_url), lambda s: LocalExecutor(Resources(4, 8192, 0)))
    with TestClient(app) as tc:
        tc.headers.update(bearer(add_user(tc, home, "bob")))
        yield tc


def post_array(
    api: TestClient, tmp: Path, script: str, headers: dict[str, str] | None = None, **spec: Any
) -> Any:
    ws = tmp / f"ws{time.monotonic_ns()}"
    ws.mkdir()
    (ws / "run.sh").write_text(script)
    data = {"name": "arr", "entry": {"script": "run.sh"}, "resources": {"memory": "64M"}, **spec}
    tarball = pack_workspace(ws, tmp / f"{ws.name}.tar.gz").path
    return api.post(
        "/api/v1/arrays",
        headers=headers,
        data={"spec": json.dumps(AppSpec.from_dict(data).to_dict())},
        files={"workspace": ("w.tar.gz", tarball.read_bytes(), "application/gzip")},
    )


def members(api: TestClient, array_id: str, headers: dict[str, str] | None = None) -> list[Any]:
    resp = api.get("/api/v1/apps", params={"array": array_id}, headers=headers)
    assert resp.status_code == 200, resp.text
    apps: list[Any] = resp.json()["apps"]
    return sorted(apps, key=lambda a: a["array"]["index"])


def stdout(api: TestClient, app_id: str) -> str:
    text: str = api.get(f"/api/v1/apps/{app_id}/logs").text
    return text


def all_killed(
    api: TestClient, array_id: str, size: int, headers: dict[str, str] | None = None
) -> None:
    """Until every member of the array has finished KILLED (and so no supervisor is still
    starting when the test ends)."""

    def killed() -> bool:
        view = api.get(f"/api/v1/arrays/{array_id}", headers=headers).json()
        return bool(view["counts"]["KILLED"] == size)

    wait_for(killed, 20, f"every member of {array_id} killed")


def kept_workspaces(home: Path) -> list[str]:
    where = home / "artifacts" / "workspaces"
    return sorted(p.name for p in where.iterdir()) if where.exists() else []


def test_an_array_is_one_request_sharing_one_workspace_each_member_told_its_index(
    api: TestClient, tmp_path: Path, home: Path
) -> None:
    resp = post_array(api, tmp_path, ENV_SCRIPT, array="0-2,7")
    assert resp.status_code == 201, resp.text
    array = resp.json()
    array_id = array["id"]
    assert array_id.startswith("array_") and array["size"] == 4
    assert array["indices"] == "0-2,7" and array["max_running"] is None
    assert sum(array["counts"].values()) == 4
    # the workspace was uploaded once and kept once, under the array's id
    assert kept_workspaces(home) == [f"{array_id}.tar.gz"]
    found = members(api, array_id)
    assert [m["array"]["index"] for m in found] == [0, 1, 2, 7]
    assert len({m["id"] for m in found}) == 4
    for m in found:
        done = wait_finished(api, m["id"])
        assert done["final_status"] == "SUCCEEDED", (done["diagnostics"], done["containers"])
        index = m["array"]["index"]
        assert stdout(api, m["id"]) == f"id={array_id} index={index} size=4\n", done
        assert m["array"]["member"] == f"{array_id}_{index}"
    finished = api.get(f"/api/v1/arrays/{array_id}").json()
    assert finished["counts"]["SUCCEEDED"] == 4 and finished["finished"] is True
    assert kept_workspaces(home) == [f"{array_id}.tar.gz"]


def test_a_sweep_member_gets_its_values_as_env_and_in_its_status(
    api: TestClient, tmp_path: Path
) -> None:
    script = 'echo "$DLAPP_SWEEP_LR $DLAPP_SWEEP_BATCH $DLAPP_SWEEP $DLAPP_ARRAY_INDEX"\n'
    resp = post_array(api, tmp_path, script, sweep={"lr": [1e-3, "1e-4"], "batch": [32, 64]})
    assert resp.status_code == 201, resp.text
    array = resp.json()
    assert array["size"] == 4 and array["sweep"] == {"lr": [0.001, 0.0001], "batch": [32, 64]}
    expected = [
        (0.001, 32, "0.001 32"),
        (0.001, 64, "0.001 64"),
        (0.0001, 32, "0.0001 32"),
        (0.0001, 64, "0.0001 64"),
    ]
    for i, (m, (lr, batch, env)) in enumerate(
        zip(members(api, array["id"]), expected, strict=True)
    ):
        assert m["array"]["values"] == {"lr": lr, "batch": batch}
        done = wait_finished(api, m["id"])
        assert done["final_status"] == "SUCCEEDED", (done["diagnostics"], done["containers"])
        raw = json.dumps({"lr": lr, "batch": batch}, separators=(",", ":"))
        assert stdout(api, m["id"]) == f"{env} {raw} {i}\n", done


def test_the_running_limit_holds_and_the_others_say_why(api: TestClient, tmp_path: Path) -> None:
    resp = post_array(api, tmp_path, "sleep 30\n", array="0-5%2")
    array_id = resp.json()["id"]
    assert resp.json()["max_running"] == 2

    def states() -> list[str]:
        return [m["state"] for m in members(api, array_id)]

    wait_for(lambda: states().count("RUNNING") == 2, 20, "two members running")
    for _ in range(10):  # room for four: the limit, not the cluster, holds the others back
        assert states().count("RUNNING") == 2
        time.sleep(0.1)
    waiting = [m for m in members(api, array_id) if m["state"] == "ACCEPTED"]
    assert len(waiting) == 4
    assert all(m["pending_reason"].startswith("array limit 2 running") for m in waiting)
    # a member killed makes room for the next in line
    first = next(m for m in members(api, array_id) if m["state"] == "RUNNING")
    assert api.post(f"/api/v1/apps/{first['array']['member']}/kill").status_code == 200
    wait_finished(api, first["id"])
    wait_for(lambda: states().count("RUNNING") == 2, 20, "the next member running")
    assert states().count("FINISHED") == 1
    # the whole array killed: every unfinished member, the queued at once
    killed = api.post(f"/api/v1/arrays/{array_id}/kill")
    assert killed.status_code == 200, killed.text
    for m in members(api, array_id):
        assert wait_finished(api, m["id"])["final_status"] == "KILLED"
    assert api.get(f"/api/v1/arrays/{array_id}").json()["counts"]["KILLED"] == 6
    again = api.post(f"/api/v1/arrays/{array_id}/kill")
    assert again.status_code == 409 and "every member has finished" in again.text


def test_a_member_is_found_by_its_array_name_and_the_others_untouched(
    api: TestClient, tmp_path: Path
) -> None:
    array_id = post_array(api, tmp_path, "sleep 30\n", array="3-5").json()["id"]
    member = api.get(f"/api/v1/apps/{array_id}_4")
    assert member.status_code == 200
    assert member.json()["array"] == {
        "id": array_id,
        "index": 4,
        "member": f"{array_id}_4",
        "values": {},
    }
    assert api.get(f"/api/v1/apps/{array_id}_9").status_code == 404
    assert api.post(f"/api/v1/apps/{array_id}_4/kill").status_code == 200
    wait_finished(api, member.json()["id"])
    counts = api.get(f"/api/v1/arrays/{array_id}").json()["counts"]
    assert counts["KILLED"] == 1 and counts["ACCEPTED"] + counts["RUNNING"] == 2
    assert api.post(f"/api/v1/arrays/{array_id}/kill").status_code == 200
    all_killed(api, array_id, 3)


def test_another_user_neither_sees_nor_kills_an_array_and_an_admin_does(
    api: TestClient, tmp_path: Path, home: Path
) -> None:
    array_id = post_array(api, tmp_path, "sleep 30\n", array="0-1").json()["id"]
    alice = bearer(add_user(api, home, "alice"))
    assert api.get(f"/api/v1/arrays/{array_id}", headers=alice).status_code == 404
    assert api.post(f"/api/v1/arrays/{array_id}/kill", headers=alice).status_code == 404
    assert api.get(f"/api/v1/apps/{array_id}_0", headers=alice).status_code == 404
    assert api.get("/api/v1/arrays", headers=alice).json()["arrays"] == []
    assert members(api, array_id, headers=alice) == []
    assert [a["id"] for a in api.get("/api/v1/arrays").json()["arrays"]] == [array_id]
    admin = bearer(admin_token(home))
    assert [a["id"] for a in api.get("/api/v1/arrays", headers=admin).json()["arrays"]] == [
        array_id
    ]
    assert api.post(f"/api/v1/arrays/{array_id}/kill", headers=admin).status_code == 200
    all_killed(api, array_id, 2)


def test_bad_array_syntax_is_refused_naming_the_problem(api: TestClient, tmp_path: Path) -> None:
    spec = {"name": "x", "entry": {"script": "run.sh"}, "array": "5-1"}
    resp = api.post(
        "/api/v1/arrays",
        data={"spec": json.dumps(spec)},
        files={"workspace": ("w.tar.gz", b"", "application/gzip")},
    )
    assert resp.status_code == 400
    assert "the range '5-1' ends before it starts" in resp.json()["error"]["message"]


def test_an_array_spec_is_refused_as_a_single_app(api: TestClient, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "run.sh").write_text("true\n")
    tarball = pack_workspace(ws, tmp_path / "w.tar.gz").path
    spec = {"name": "x", "entry": {"script": "run.sh"}, "array": "0-3"}
    resp = api.post(
        "/api/v1/apps",
        data={"spec": json.dumps(spec)},
        files={"workspace": ("w.tar.gz", tarball.read_bytes(), "application/gzip")},
    )
    assert resp.status_code == 400 and "/api/v1/arrays" in resp.text
    assert api.get("/api/v1/apps").json()["apps"] == []


def nothing_kept(api: TestClient, home: Path) -> None:
    admin = bearer(admin_token(home))
    assert api.get("/api/v1/apps", headers=admin).json()["apps"] == []
    assert api.get("/api/v1/arrays", headers=admin).json()["arrays"] == []
    assert kept_workspaces(home) == []


def test_an_array_over_max_array_size_is_refused_and_nothing_kept(
    tmp_path: Path, home: Path, database_url: str
) -> None:
    settings = _settings(home, database_url, max_array_size=3)
    with TestClient(create_app(settings, lambda s: LocalExecutor(Resources(4, 8192, 0)))) as api:
        api.headers.update(bearer(add_user(api, home, "bob")))
        resp = post_array(api, tmp_path, "true\n", array="0-3")
        assert resp.status_code == 413
        message = resp.json()["error"]["message"]
        assert "4 members" in message and "max_array_size" in message and "3" in message
        nothing_kept(api, home)
        assert post_array(api, tmp_path, "true\n", array="0-2").status_code == 201


def test_an_array_past_the_users_waiting_limit_is_refused(
    tmp_path: Path, home: Path, database_url: str
) -> None:
    settings = _settings(home, database_url, max_pending_per_user=3)
    with TestClient(create_app(settings, lambda s: LocalExecutor(Resources(4, 8192, 0)))) as api:
        api.headers.update(bearer(add_user(api, home, "bob")))
        resp = post_array(api, tmp_path, "true\n", array="0-3")
        assert resp.status_code == 429
        assert "4 more (an array's members)" in resp.json()["error"]["message"]
        nothing_kept(api, home)


def test_a_request_that_fails_while_storing_leaves_nothing_half_made(
    api: TestClient, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dlapp.server import arrays

    def broken(*args: Any) -> None:
        raise OSError("the disk went away")

    monkeypatch.setattr(arrays.audit, "record", broken)  # after the members were inserted
    with pytest.raises(OSError, match="the disk went away"):
        post_array(api, tmp_path, "true\n", array="0-9")
    monkeypatch.undo()
    nothing_kept(api, home)


def test_a_queue_admin_sees_and_kills_the_arrays_in_their_queue_only(
    tmp_path: Path, home: Path, database_url: str
) -> None:
    import yaml

    home.mkdir()
    queues = {
        "queues": {
            "default": {"guaranteed": "50%"},
            "team": {"guaranteed": "50%", "admin_acl": {"users": ["carol"]}},
        }
    }
    (home / "queues.yaml").write_text(yaml.safe_dump(queues))
    app = create_app(_settings(home, database_url), lambda s: LocalExecutor(Resources(4, 8192, 0)))
    with TestClient(app) as api:
        alice = bearer(add_user(api, home, "alice"))
        carol = bearer(add_user(api, home, "carol"))
        in_team = post_array(api, tmp_path, "sleep 30\n", alice, array="0-1", queue="team")
        elsewhere = post_array(api, tmp_path, "sleep 30\n", alice, array="0-1")
        team_id, other_id = in_team.json()["id"], elsewhere.json()["id"]
        listed = api.get("/api/v1/arrays", headers=carol).json()["arrays"]
        assert [a["id"] for a in listed] == [team_id]
        assert api.get(f"/api/v1/arrays/{other_id}", headers=carol).status_code == 404
        assert api.post(f"/api/v1/arrays/{other_id}/kill", headers=carol).status_code == 404
        assert api.post(f"/api/v1/arrays/{team_id}/kill", headers=carol).status_code == 200
        all_killed(api, team_id, 2, alice)
        other = api.get(f"/api/v1/arrays/{other_id}", headers=alice).json()["counts"]
        assert other["KILLED"] == 0
        assert api.post(f"/api/v1/arrays/{other_id}/kill", headers=alice).status_code == 200
        all_killed(api, other_id, 2, alice)
