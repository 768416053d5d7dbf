"""Submissions at once: every one is accepted with an id of its own.

Ids are one past the largest sequence number taken. Found by ``bench/throughput.py``'s callers
at once: two submissions in flight read the same largest number, and the second commit failed
with ``UNIQUE constraint failed: apps.seq``, a 500 to its client. A server now takes ids one
submission at a time, and one that another server sharing the store took first is taken again.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from dlapp.client import DlappClient
from dlapp.config import ServerSettings
from dlapp.data.workspace import pack_workspace
from dlapp.scheduler import Resources
from dlapp.server import services
from dlapp.spec import AppSpec
from dlapp.store import repo

from inprocess import admin_token, bearer, live, serve, submit

CALLERS = 8
EACH = 6


def _settings(tmp: Path) -> ServerSettings:
    return ServerSettings(
        home=tmp / "home",
        submit_rate_per_min=0,
        max_pending_per_user=0,
        max_pending_per_queue=0,
    )


def _spec(ws: Path, **extra: Any) -> AppSpec:
    return AppSpec.from_dict(
        {
            "name": "at-once",
            "workspace": {"path": str(ws)},
            "entry": {"script": "run.sh"},
            "resources": {"cpus": 1, "memory": "64M", "gpus": 1},  # one GPU: the rest wait
            **extra,
        }
    )


def test_submissions_at_once_each_get_an_id_of_their_own(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "run.sh").write_text("sleep 3600\n")
    tarball = pack_workspace(ws, tmp_path / "ws.tar.gz").path
    settings = _settings(tmp_path)
    with live(settings, Resources(2, 4096, 1)) as url:
        token = admin_token(settings.home)

        def caller(i: int) -> list[str]:
            with DlappClient(url, token) as c:
                ids = [c.submit(_spec(ws), tarball)["id"] for _ in range(EACH)]
                ids.append(c.submit(_spec(ws, array="0-2"), tarball)["id"])  # and an array
                return ids

        with ThreadPoolExecutor(CALLERS) as pool:
            made = [i for ids in pool.map(caller, range(CALLERS)) for i in ids]
        assert len(made) == len(set(made)) == CALLERS * (EACH + 1)
        with DlappClient(url, token) as c:
            stored = list(c.iter_apps())
        # every single app and every member of every array, each once
        assert len(stored) == len({a["id"] for a in stored}) == CALLERS * (EACH + 3)
        kept = sorted(p.name for p in (settings.artifacts / "workspaces").iterdir())
        assert len(kept) == CALLERS * (EACH + 1) and not [k for k in kept if k.startswith(".")]


def test_an_id_another_server_took_first_is_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another server sharing the store took the id this one read (its app is in the store,
    its tarball kept): the commit fails, nothing of it is kept, and the next id is taken."""
    settings = _settings(tmp_path)
    with serve(settings) as api:
        token = admin_token(settings.home)
        first = submit(api, tmp_path, token).json()["id"]
        taken = iter([True])
        real = repo.next_app_id

        def stale(session: Any, now: float) -> tuple[str, int]:
            app_id, seq = real(session, now)
            if next(taken, False):  # as if read before the other server's commit
                return first, seq - 1
            return app_id, seq

        monkeypatch.setattr(repo, "next_app_id", stale)
        resp = submit(api, tmp_path, token)
        assert resp.status_code == 201, resp.text
        second = resp.json()["id"]
        assert second != first
        apps = api.get("/api/v1/apps", headers=bearer(token)).json()["apps"]
        assert sorted(a["id"] for a in apps) == sorted([first, second])
        kept = sorted(p.name for p in (settings.artifacts / "workspaces").iterdir())
        assert kept == sorted([f"{first}.tar.gz", f"{second}.tar.gz"])


def test_ids_taken_by_others_every_time_is_a_conflict_not_a_500(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    with serve(settings) as api:
        token = admin_token(settings.home)
        first = submit(api, tmp_path, token).json()["id"]
        monkeypatch.setattr(repo, "next_app_id", lambda session, now: (first, 1))
        resp = submit(api, tmp_path, token)
        assert resp.status_code == 409, resp.text
        assert f"in {services.ID_TRIES} tries" in resp.text
        kept = sorted(p.name for p in (settings.artifacts / "workspaces").iterdir())
        assert kept == [f"{first}.tar.gz"]  # the first app's tarball untouched


def test_a_kept_workspace_is_on_disk_before_the_app_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acknowledged means durable: the tarball's bytes and its name in the workspaces folder
    are synced before the commit that makes the app (a power loss after the answer never
    leaves an app whose workspace is not there)."""
    synced: list[tuple[int, bool, int]] = []  # (inode, is a directory, apps committed then)
    real = services.sync

    def watch(path: Path) -> None:
        with ctx.sessions() as session:
            stored = len(repo.list_apps(session, limit=100))
        synced.append((path.stat().st_ino, path.is_dir(), stored))
        real(path)

    monkeypatch.setattr(services, "sync", watch)
    s = _settings(tmp_path)
    with serve(s, Resources(4, 8192, 1)) as api:
        ctx = api.app.state.ctx
        resp = submit(api, tmp_path, admin_token(s.home))
        assert resp.status_code == 201, resp.text
        kept = Path(ctx.settings.artifacts) / "workspaces" / f"{resp.json()['id']}.tar.gz"
        assert synced == [
            (kept.stat().st_ino, False, 0),  # the tarball, while no app was committed
            (kept.parent.stat().st_ino, True, 0),  # then the folder with its new name
        ]
