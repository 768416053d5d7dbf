"""Queue ACLs through the API: submit ACLs by user and group, queue admins over their queues."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from dlapp.config import ServerSettings

from inprocess import add_user, bearer, serve, submit

QUEUES = {
    "queues": {
        "default": {"guaranteed": "50%"},
        "team": {
            "guaranteed": "50%",
            "submit_acl": {"users": ["alice"], "groups": ["ml"]},
            "admin_acl": {"users": ["carol"]},
        },
    }
}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "queues.yaml").write_text(yaml.safe_dump(QUEUES))
    with serve(ServerSettings(home=home, schedule_interval_s=0.05)) as tc:
        tokens = {
            "alice": add_user(tc, home, "alice"),
            "bob": add_user(tc, home, "bob"),
            "carol": add_user(tc, home, "carol"),
            "dan": add_user(tc, home, "dan", groups=["ml"]),
        }
        yield tc, tokens


def test_submit_acl_names_users_and_groups(
    api: tuple[TestClient, dict[str, str]], tmp_path: Path
) -> None:
    tc, tokens = api
    assert submit(tc, tmp_path, tokens["alice"], queue="team").status_code == 201
    assert submit(tc, tmp_path, tokens["dan"], queue="team").status_code == 201  # group ml
    refused = submit(tc, tmp_path, tokens["bob"], queue="team")
    assert refused.status_code == 403
    assert "bob may not submit to queue root.team" in refused.json()["error"]["message"]


def test_a_queue_admin_sees_and_kills_apps_in_their_queue_only(
    api: tuple[TestClient, dict[str, str]], tmp_path: Path
) -> None:
    tc, tokens = api
    in_team = submit(tc, tmp_path, tokens["alice"], queue="team").json()["id"]
    elsewhere = submit(tc, tmp_path, tokens["alice"], queue="default").json()["id"]
    carol, bob = bearer(tokens["carol"]), bearer(tokens["bob"])
    assert tc.get(f"/api/v1/apps/{in_team}", headers=carol).status_code == 200
    assert tc.get(f"/api/v1/apps/{elsewhere}", headers=carol).status_code == 404
    assert tc.get(f"/api/v1/apps/{in_team}", headers=bob).status_code == 404
    listed = [a["id"] for a in tc.get("/api/v1/apps", headers=carol).json()["apps"]]
    assert listed == [in_team]
    assert tc.post(f"/api/v1/apps/{in_team}/kill", headers=carol).status_code == 200
    assert tc.post(f"/api/v1/apps/{elsewhere}/kill", headers=carol).status_code == 404
