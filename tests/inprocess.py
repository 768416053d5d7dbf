"""Helpers for the in-process server (``create_app`` over the LocalExecutor, a TestClient).

The server makes its first admin on start and writes the token to ``<home>/admin.token``; these
helpers read it and make users through the admin API, as an operator would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from dlapp.config import ServerSettings
from dlapp.credentials import ADMIN_TOKEN_FILE
from dlapp.data.workspace import pack_workspace
from dlapp.executor import LocalExecutor
from dlapp.scheduler import Resources
from dlapp.server.app import create_app
from dlapp.spec import AppSpec


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_finished(
    api: TestClient, app_id: str, token: str | None = None, timeout: float = 30
) -> dict[str, Any]:
    """The app once it is FINISHED (as ``token``'s user, or the client's own headers); an
    AssertionError with its last state when it is not within ``timeout`` seconds."""
    headers = bearer(token) if token is not None else None
    deadline = time.monotonic() + timeout
    while True:
        app: dict[str, Any] = api.get(f"/api/v1/apps/{app_id}", headers=headers).json()
        if app["state"] == "FINISHED":
            return app
        assert time.monotonic() < deadline, f"{app_id} did not finish: {app}"
        time.sleep(0.05)


def admin_token(home: Path) -> str:
    return (home / ADMIN_TOKEN_FILE).read_text().strip()


def add_user(
    api: TestClient, home: Path, name: str, admin: bool = False, groups: Sequence[str] = ()
) -> str:
    """Make ``name`` through the admin API; returns their token."""
    resp = api.post(
        "/api/v1/admin/users",
        headers=bearer(admin_token(home)),
        json={"name": name, "admin": admin, "groups": list(groups)},
    )
    assert resp.status_code == 201, resp.text
    token: str = resp.json()["token"]
    return token


def submit(api: TestClient, tmp: Path, token: str, script: str = "sleep 30\n", **spec: Any) -> Any:
    ws = tmp / f"ws{time.monotonic_ns()}"
    ws.mkdir()
    (ws / "run.sh").write_text(script)
    data = {"name": "t", "entry": {"script": "run.sh"}, "resources": {"memory": "128M"}, **spec}
    tarball = pack_workspace(ws, tmp / f"{ws.name}.tar.gz").path
    return api.post(
        "/api/v1/apps",
        headers=bearer(token),
        data={"spec": json.dumps(AppSpec.from_dict(data).to_dict())},
        files={"workspace": ("w.tar.gz", tarball.read_bytes(), "application/gzip")},
    )


@contextmanager
def serve(settings: ServerSettings, resources: Resources | None = None) -> Iterator[TestClient]:
    """The app in-process, started (lifespan run), with no credentials by default."""
    res = resources or Resources(4, 8192, 2)
    app = create_app(settings, lambda s: LocalExecutor(res))
    with TestClient(app) as tc:
        yield tc


@contextmanager
def live(settings: ServerSettings, resources: Resources | None = None) -> Iterator[str]:
    """The app behind a real uvicorn on a free loopback port, in a thread; yields its URL."""
    with live_app(settings, resources) as (url, _app):
        yield url


@contextmanager
def live_app(
    settings: ServerSettings, resources: Resources | None = None
) -> Iterator[tuple[str, FastAPI]]:
    """``settings`` served by uvicorn on a free loopback port, in a thread, with the options
    ``dlapp server`` gives it (TLS, proxy headers); yields its URL and the app."""
    import threading
    import time

    import uvicorn

    from dlapp.server.run import listen_socket, uvicorn_options

    res = resources or Resources(4, 8192, 2)
    sock = listen_socket("127.0.0.1", 0)  # TCP_NODELAY, as ``dlapp server`` serves
    port = sock.getsockname()[1]
    settings = settings.model_copy(update={"port": port})
    app = create_app(settings, lambda s: LocalExecutor(res))
    config = uvicorn.Config(app, log_level="warning", lifespan="on", **uvicorn_options(settings))
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    scheme = "https" if settings.tls_cert else "http"
    try:
        yield f"{scheme}://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
