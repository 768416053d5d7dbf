"""Authentication and authorisation on the in-process server: deny by default.

Every route (enumerated from the app, so new routes are covered by themselves) and every method
answers 401 without a live token of an enabled user; only /healthz is open. A user sees and
controls only their own apps; someone else's is not found. Admins see everything.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from dlapp.config import ServerSettings
from dlapp.credentials import ADMIN_TOKEN_FILE

from inprocess import add_user, admin_token, bearer, serve, submit

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
OPEN = {"/healthz", "/dashboard"}  # the dashboard's static files: test_dashboard.py
PARAMS = {"app_id": "application_1700000000000_0001", "name": "alice", "path": "x"}


def settings(tmp: Path, **kw: Any) -> ServerSettings:
    return ServerSettings(home=tmp / "home", schedule_interval_s=0.05, softkill_grace_s=1, **kw)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    with serve(settings(tmp_path)) as tc:
        yield tc


def routes(api: TestClient) -> list[str]:
    """Every path the app serves (API routes, the docs, openapi.json), parameters filled in."""
    paths = {r.path for r in iter_route_contexts(api.app.routes) if r.path}  # type: ignore[attr-defined]
    return sorted({re.sub(r"{(\w+)(:\w+)?}", lambda m: PARAMS.get(m[1], "x"), p) for p in paths})


# -- every route x every method ---------------------------------------------------------------


def test_the_route_list_is_complete(api: TestClient) -> None:
    found = routes(api)
    for p in ("/api/v1/apps", "/api/v1/admin/users", "/api/v1/admin/audit", "/openapi.json"):
        assert p in found
    assert "/docs" in found and "/healthz" in found


@pytest.mark.parametrize("kind", ["none", "not-bearer", "empty", "wrong", "revoked", "disabled"])
def test_every_route_and_method_needs_a_live_token(api: TestClient, home: Path, kind: str) -> None:
    admin = bearer(admin_token(home))
    carol = add_user(api, home, "carol")
    if kind == "revoked":
        assert api.post("/api/v1/admin/users/carol/token/revoke", headers=admin).status_code == 200
    if kind == "disabled":
        assert api.post("/api/v1/admin/users/carol/disable", headers=admin).status_code == 200
    headers = {
        "none": {},
        "not-bearer": {"Authorization": f"Basic {carol}"},
        "empty": {"Authorization": "Bearer "},
        "wrong": bearer("dlapp_" + "A" * 43),
        "revoked": bearer(carol),
        "disabled": bearer(carol),
    }[kind]
    checked = 0
    for path in [*routes(api), "/no/such/route", "/api/v1/apps/x/../../admin/users"]:
        if path in OPEN:
            continue
        for method in METHODS:
            resp = api.request(method, path, headers=headers)
            assert resp.status_code == 401, (method, path, resp.status_code, resp.text)
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            if method != "HEAD":
                assert resp.json()["error"]["code"] == "unauthorized"
                assert carol not in resp.text
            checked += 1
    assert checked >= 14 * len(METHODS)


def test_healthz_is_open(api: TestClient) -> None:
    assert api.get("/healthz").json()["status"] == "ok"


def test_a_live_token_opens_the_docs(api: TestClient, home: Path) -> None:
    alice = bearer(add_user(api, home, "alice"))
    assert "/api/v1/apps" in api.get("/openapi.json", headers=alice).json()["paths"]
    assert api.get("/docs", headers=alice).status_code == 200
    assert api.get("/api/v1/me", headers=alice).json() == {
        "name": "alice",
        "is_admin": False,
        "groups": [],
    }


# -- whose apps -------------------------------------------------------------------------------


def test_bob_cannot_see_or_touch_alices_app(api: TestClient, home: Path, tmp_path: Path) -> None:
    alice = bearer(add_user(api, home, "alice"))
    bob_token = add_user(api, home, "bob")
    bob = bearer(bob_token)
    resp = submit(api, tmp_path, alice["Authorization"].split()[1])
    assert resp.status_code == 201, resp.text
    app_id = resp.json()["id"]
    missing = "application_1700000000000_9999"
    for method, suffix in [
        ("GET", ""),
        ("GET", "/events"),
        ("GET", "/logs"),
        ("GET", "/logs?follow=true"),
        ("GET", "/logs?stream=stderr&container=0"),
        ("POST", "/kill"),
        ("POST", "/softkill"),
    ]:
        theirs = api.request(method, f"/api/v1/apps/{app_id}{suffix}", headers=bob)
        assert theirs.status_code == 404, (suffix, theirs.text)
        assert theirs.json()["error"]["message"] == f"no app {app_id}"
        nothing = api.request(method, f"/api/v1/apps/{missing}{suffix}", headers=bob)
        assert nothing.status_code == 404  # the same answer as for an app that does not exist
    assert api.get("/api/v1/apps", headers=bob).json()["apps"] == []
    assert api.get("/api/v1/apps", headers=bob, params={"user": "alice"}).json()["apps"] == []
    mine = api.get("/api/v1/apps", headers=alice).json()["apps"]
    assert [a["id"] for a in mine] == [app_id]
    assert api.get(f"/api/v1/apps/{app_id}", headers=alice).json()["state"] in (
        "ACCEPTED",
        "RUNNING",
    )
    # the admin sees and controls everything
    admin = bearer(admin_token(home))
    assert [a["id"] for a in api.get("/api/v1/apps", headers=admin).json()["apps"]] == [app_id]
    everyone = api.get("/api/v1/apps", headers=admin, params={"user": "alice"}).json()["apps"]
    assert [a["user"] for a in everyone] == ["alice"]
    assert api.post(f"/api/v1/apps/{app_id}/kill", headers=admin).status_code == 200
    kills = api.get("/api/v1/admin/audit", headers=admin, params={"action": "kill"}).json()
    (entry,) = kills["entries"]
    assert entry["target"] == app_id and entry["user"] != "alice"
    assert "app of alice" in entry["detail"]
    assert bob_token not in json.dumps(kills)


def test_admin_routes_are_for_admins_only(api: TestClient, home: Path) -> None:
    alice = bearer(add_user(api, home, "alice"))
    for method, path in [
        ("GET", "/api/v1/admin/users"),
        ("POST", "/api/v1/admin/users"),
        ("POST", "/api/v1/admin/users/alice/token"),
        ("POST", "/api/v1/admin/users/alice/token/revoke"),
        ("POST", "/api/v1/admin/users/alice/disable"),
        ("GET", "/api/v1/admin/audit"),
    ]:
        resp = api.request(method, path, headers=alice, json={"name": "mallory", "admin": True})
        assert resp.status_code == 403, (path, resp.text)
        assert resp.json()["error"] == {
            "code": "forbidden",
            "message": "alice is not a cluster admin",
        }
    users = api.get("/api/v1/admin/users", headers=bearer(admin_token(home))).json()["users"]
    assert "mallory" not in [u["name"] for u in users]


# -- users and tokens -------------------------------------------------------------------------


def test_a_fresh_store_has_exactly_one_admin_whose_token_only_the_owner_reads(
    tmp_path: Path, home: Path
) -> None:
    with serve(settings(tmp_path)) as api:
        path = home / ADMIN_TOKEN_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        token = path.read_text().strip()
        (only,) = api.get("/api/v1/admin/users", headers=bearer(token)).json()["users"]
        assert only["is_admin"] and not only["disabled"]
    with serve(settings(tmp_path)) as api:  # a restart makes no second admin, keeps the token
        assert path.read_text().strip() == token
        assert len(api.get("/api/v1/admin/users", headers=bearer(token)).json()["users"]) == 1


def test_the_first_admin_may_be_named(tmp_path: Path, home: Path) -> None:
    with serve(settings(tmp_path, admin_user="ops")) as api:
        me = api.get("/api/v1/me", headers=bearer(admin_token(home))).json()
        assert me == {"name": "ops", "is_admin": True, "groups": []}


def test_a_token_is_shown_once_and_stored_hashed(api: TestClient, home: Path) -> None:
    admin = bearer(admin_token(home))
    made = api.post(
        "/api/v1/admin/users", headers=admin, json={"name": "dana", "groups": ["ml", "vision"]}
    )
    assert made.status_code == 201
    token = made.json()["token"]
    assert made.json()["user"]["groups"] == ["ml", "vision"]
    rotated = api.post("/api/v1/admin/users/dana/token", headers=admin).json()["token"]
    assert rotated != token
    listing = api.get("/api/v1/admin/users", headers=admin).text
    audit = api.get("/api/v1/admin/audit", headers=admin).text
    for secret in (token, rotated):
        assert secret not in listing and secret not in audit
    stored = b"".join(p.read_bytes() for p in home.glob("dlapp.db*"))
    assert token.encode() not in stored and rotated.encode() not in stored
    assert hashlib.sha256(rotated.encode()).hexdigest().encode() in stored
    # the old token stopped working, the new one works
    assert api.get("/api/v1/me", headers=bearer(token)).status_code == 401
    assert api.get("/api/v1/me", headers=bearer(rotated)).json()["groups"] == ["ml", "vision"]


def test_disable_enable_revoke_and_rotate(api: TestClient, home: Path) -> None:
    admin = bearer(admin_token(home))
    bob = bearer(add_user(api, home, "bob"))
    assert api.get("/api/v1/me", headers=bob).status_code == 200
    api.post("/api/v1/admin/users/bob/disable", headers=admin)
    refused = api.get("/api/v1/me", headers=bob)
    assert refused.status_code == 401 and "bob is disabled" in refused.text
    api.post("/api/v1/admin/users/bob/enable", headers=admin)
    assert api.get("/api/v1/me", headers=bob).status_code == 200
    assert api.post("/api/v1/admin/users/bob/token/revoke", headers=admin).json()["revoked"] == 1
    gone = api.get("/api/v1/me", headers=bob)
    assert gone.status_code == 401 and "invalid or revoked token" in gone.text
    new = api.post("/api/v1/admin/users/bob/token", headers=admin).json()["token"]
    assert api.get("/api/v1/me", headers=bearer(new)).json()["name"] == "bob"


def test_bad_user_requests_are_clear(api: TestClient, home: Path) -> None:
    admin = bearer(admin_token(home))
    add_user(api, home, "erin")
    again = api.post("/api/v1/admin/users", headers=admin, json={"name": "erin"})
    assert again.status_code == 409 and "already exists" in again.text
    bad = api.post("/api/v1/admin/users", headers=admin, json={"name": "../x"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"
    assert api.post("/api/v1/admin/users/ghost/token", headers=admin).status_code == 404
    (me,) = [
        u for u in api.get("/api/v1/admin/users", headers=admin).json()["users"] if u["is_admin"]
    ]
    last = api.post(f"/api/v1/admin/users/{me['name']}/disable", headers=admin)
    assert last.status_code == 409 and "last enabled admin" in last.text


# -- audit ------------------------------------------------------------------------------------


def test_audit_records_who_did_what(api: TestClient, home: Path, tmp_path: Path) -> None:
    admin = bearer(admin_token(home))
    alice_token = add_user(api, home, "alice", groups=["ml"])
    app_id = submit(api, tmp_path, alice_token).json()["id"]
    api.post(f"/api/v1/apps/{app_id}/softkill", headers=bearer(alice_token))
    api.post("/api/v1/admin/users/alice/token", headers=admin)
    api.post("/api/v1/admin/users/alice/token/revoke", headers=admin)
    api.post("/api/v1/admin/users/alice/disable", headers=admin)
    entries = api.get("/api/v1/admin/audit", headers=admin).json()["entries"]
    actions = [(e["user"], e["action"], e["target"]) for e in reversed(entries)]
    me = actions[0][0]
    assert actions == [
        (me, "user.add", me),
        (me, "user.add", "alice"),
        ("alice", "submit", app_id),
        ("alice", "softkill", app_id),
        (me, "token.rotate", "alice"),
        (me, "token.revoke", "alice"),
        (me, "user.disable", "alice"),
    ]
    assert all(e["time"] for e in entries)
    assert "groups ml" in entries[-2]["detail"]
    only = api.get("/api/v1/admin/audit", headers=admin, params={"user": "alice"}).json()
    assert [e["action"] for e in only["entries"]] == ["softkill", "submit"]
