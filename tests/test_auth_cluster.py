"""Tokens and ownership on the real server (its own process, embedded Ray)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from dlapp.client import DlappClient
from dlapp.errors import NotFoundError, Unauthorized
from dlapp.spec import AppSpec

from conftest import AppFactory, pack

pytestmark = pytest.mark.cluster


def test_the_real_server_denies_by_default_and_hides_other_users_apps(
    client: DlappClient,
    server_url: str,
    server_home: Path,
    tokens: dict[str, str],
    make_app: AppFactory,
    tmp_path: Path,
) -> None:
    assert httpx.get(f"{server_url}/healthz").status_code == 200
    for path in ("/api/v1/apps", "/openapi.json", "/docs", "/api/v1/admin/users"):
        assert httpx.get(f"{server_url}{path}").status_code == 401
    with (
        DlappClient(server_url, "dlapp_not-a-real-token") as stranger,
        pytest.raises(Unauthorized, match="invalid or revoked token"),
    ):
        stranger.list_apps()
    spec = AppSpec.from_file(make_app("echo mine\n", name="private"))
    app_id = client.submit(spec, pack(Path(spec.workspace.path), tmp_path))["id"]
    assert client.wait(app_id, timeout_s=60)["final_status"] == "SUCCEEDED"
    with DlappClient(server_url, tokens["bob"]) as bob:
        for look in (bob.get, bob.events, bob.logs, bob.kill, bob.softkill):
            with pytest.raises(NotFoundError, match=f"no app {app_id}"):
                look(app_id)
        assert app_id not in [a["id"] for a in bob.list_apps(states=["FINISHED"])]
    with DlappClient(server_url, tokens["admin"]) as admin:
        assert admin.get(app_id)["user"] == "alice"
        submits = admin.admin_audit(action="submit", target=app_id)
        assert [e["user"] for e in submits] == ["alice"]
    log = (server_home / "server.log").read_text()
    assert all(token not in log for token in tokens.values())
    stored = b"".join(p.read_bytes() for p in server_home.glob("dlapp.db*"))
    assert all(token.encode() not in stored for token in tokens.values())
