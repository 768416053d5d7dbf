"""The dashboard's files are served without a token; no data ever is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.routing import Mount

from dlapp.config import ServerSettings
from dlapp.server.auth import is_open

from inprocess import add_user, bearer, live, serve, submit


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    with serve(ServerSettings(home=tmp_path / "home", schedule_interval_s=0.05)) as tc:
        yield tc


def test_the_page_and_its_assets_need_no_token(api: TestClient) -> None:
    root = api.get("/dashboard", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/dashboard/"
    page = api.get("/dashboard/")
    assert page.status_code == 200 and '<script src="app.js">' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        resp = api.get(f"/dashboard/{asset}")
        assert resp.status_code == 200 and kind in resp.headers["content-type"]
    assert api.get("/dashboard/nothing-here").status_code == 404


def test_only_static_files_live_under_the_open_prefix(api: TestClient) -> None:
    under = [r for r in api.app.routes if getattr(r, "path", "").startswith("/dashboard")]  # type: ignore[attr-defined]
    assert {type(r).__name__ for r in under} == {"APIRoute", "Mount"}
    mounts = [r for r in under if isinstance(r, Mount)]
    assert len(mounts) == 1 and mounts[0].path == "/dashboard"
    assert [r.path for r in under if not isinstance(r, Mount)] == ["/dashboard"]  # the redirect


def test_paths_that_climb_out_of_the_dashboard_are_not_open() -> None:
    assert is_open("/dashboard/app.js") and is_open("/dashboard/") and is_open("/healthz")
    assert not is_open("/dashboard/../api/v1/apps")
    assert not is_open("/dashboardx")
    assert not is_open("/api/v1/apps")
    assert not is_open("/metrics")


def test_a_raw_dot_dot_path_gets_no_data(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with live(ServerSettings(home=home, schedule_interval_s=0.05)) as url:
        # httpx would normalise the path: send the bytes as they are
        import socket

        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as s:
            s.sendall(
                b"GET /dashboard/../api/v1/apps HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        assert httpx.get(f"{url}/api/v1/apps").status_code == 401


def test_an_app_spec_is_shown_to_its_owner_only(api: TestClient, tmp_path: Path) -> None:
    home = tmp_path / "home"
    alice = add_user(api, home, "alice")
    bob = add_user(api, home, "bob")
    app = submit(api, tmp_path, alice, "true\n", env={"SEED": "7"}).json()
    mine = api.get(f"/api/v1/apps/{app['id']}/spec", headers=bearer(alice))
    assert mine.status_code == 200 and mine.json()["spec"]["env"] == {"SEED": "7"}
    theirs = api.get(f"/api/v1/apps/{app['id']}/spec", headers=bearer(bob))
    assert theirs.status_code == 404
