"""Floods: one user's requests cannot starve another user or the health check (issue 14).

A real server (uvicorn on a loopback port, over the in-process executor) and a hostile user A.
For each expensive route in turn, a second process (``bench/flood.py --hostile``, raw asyncio
HTTP/1.1, so that the flood does not share this process's interpreter lock with the server)
keeps a thousand of A's requests in flight, each sent again the moment it is answered, and
holds 64 follows of A's log open. While that flood is in flight, user B's ``GET /api/v1/me``,
``/healthz`` and a submission must answer; none of A's requests may get a 500 or go
unanswered; every accepted app must be kept; afterwards the server serves A again by itself.
Nothing is timed: the timeouts here are hang guards only.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from dlapp.config import ServerSettings
from dlapp.data.workspace import pack_workspace
from dlapp.scheduler import Resources
from dlapp.spec import AppSpec

from conftest import ROOT, wait_for
from inprocess import admin_token, bearer, live

FLOOD = 1000  # A's requests in flight, on one route at a time
FOLLOWS = 64  # A's log follows, held open during each flood
ROUTES = ("/api/v1/cluster", "/api/v1/apps", "/api/v1/queues")
PROBES = 5  # B's requests of each kind while a flood is in flight
HANG_GUARD_S = 120.0
ANSWERED = {"200", "429", "503", "follow 200", "follow 429"}  # served, or refused cleanly


@dataclass
class Users:
    url: str
    settings: ServerSettings
    a: dict[str, str]
    b: dict[str, str]
    quick: bytes  # a workspace whose app echoes and ends
    sleeper: bytes  # one whose app echoes, then sleeps
    accepted: list[tuple[dict[str, str], str]] = field(default_factory=list)  # (who, app id)

    def token(self, who: dict[str, str]) -> str:
        return who["Authorization"].removeprefix("Bearer ")


def workspace(tmp: Path, name: str, script: str) -> bytes:
    ws = tmp / name
    ws.mkdir()
    (ws / "run.sh").write_text(script)
    return pack_workspace(ws, tmp / f"{name}.tar.gz").path.read_bytes()


def spec_json(name: str) -> str:
    data = {"name": name, "entry": {"script": "run.sh"}, "resources": {"memory": "64M"}}
    return json.dumps(AppSpec.from_dict(data).to_dict())


@pytest.fixture
def users(tmp_path: Path) -> Iterator[Users]:
    settings = ServerSettings(home=tmp_path / "home", schedule_interval_s=0.1)
    with live(settings, Resources(8, 16384, 2)) as url:
        admin = bearer(admin_token(settings.home))
        tokens = {}
        with httpx.Client(base_url=url, timeout=HANG_GUARD_S) as c:
            for name in ("alice", "bob"):
                resp = c.post("/api/v1/admin/users", headers=admin, json={"name": name})
                assert resp.status_code == 201, resp.text
                tokens[name] = bearer(resp.json()["token"])
        yield Users(
            url,
            settings,
            tokens["alice"],
            tokens["bob"],
            workspace(tmp_path, "quick", "echo ok\n"),
            workspace(tmp_path, "sleeper", "echo ok\nsleep 600\n"),
        )


def submit(c: httpx.Client, u: Users, who: dict[str, str], name: str, ws: bytes) -> int:
    resp = c.post(
        "/api/v1/apps",
        headers=who,
        data={"spec": spec_json(name)},
        files={"workspace": ("workspace.tar.gz", ws, "application/gzip")},
    )
    if resp.status_code == 201:
        u.accepted.append((who, resp.json()["id"]))
    return resp.status_code


def app_state(c: httpx.Client, who: dict[str, str], app_id: str) -> dict[str, Any]:
    resp = c.get(f"/api/v1/apps/{app_id}", headers=who)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


@contextmanager
def flood(u: Users, route: str, followed: str) -> Iterator[Counter[str]]:
    """A's flood of ``route`` and follows of ``followed``'s log, in flight (every connection
    answered once) for the body of the ``with``; yields A's answers by status, filled in when
    the flood has stopped."""
    tally: Counter[str] = Counter()
    command = [sys.executable, str(ROOT / "bench" / "flood.py"), "--hostile", u.url, followed]
    command += ["--routes", route, "--concurrency", str(FLOOD), "--follows", str(FOLLOWS)]
    env = {**os.environ, "DLAPP_TOKEN": u.token(u.a)}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) as proc:
        assert proc.stdout is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], HANG_GUARD_S)
            assert ready and proc.stdout.readline().strip() == "ready", "the flood did not start"
            yield tally
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=HANG_GUARD_S)
        tally.update(json.loads(out.strip().splitlines()[-1])["tally"])


def test_one_users_flood_starves_neither_another_user_nor_the_health_check(users: Users) -> None:
    u = users
    with httpx.Client(base_url=u.url, timeout=HANG_GUARD_S) as c:
        assert submit(c, u, u.a, "followed", u.sleeper) == 201  # A's app: its log is followed
        followed = u.accepted.pop()[1]
        wait_for(lambda: app_state(c, u.a, followed)["state"] == "RUNNING", HANG_GUARD_S, "it")
    b_answers: Counter[Any] = Counter()
    a_answers: Counter[str] = Counter()
    for route in ROUTES:
        with (
            flood(u, route, followed) as tally,
            httpx.Client(base_url=u.url, timeout=HANG_GUARD_S) as c,
        ):
            for _ in range(PROBES):  # B, while A's flood is in flight
                me = c.get("/api/v1/me", headers=u.b)
                b_answers[("me", me.status_code, me.json().get("name"))] += 1
                b_answers[("healthz", c.get("/healthz").status_code)] += 1
            b_answers[("submit", submit(c, u, u.b, "b", u.quick))] += 1
            submit(c, u, u.a, "a", u.quick)  # A too: accepted or refused, never lost
        a_answers.update(tally)

    # B was served throughout, and so was the health check
    assert b_answers[("me", 200, "bob")] == PROBES * len(ROUTES), b_answers
    assert b_answers[("healthz", 200)] == PROBES * len(ROUTES), b_answers
    assert b_answers[("submit", 201)] == len(ROUTES), b_answers
    # every one of A's requests was answered, served or refused: never a 500, never silence
    assert set(a_answers) <= ANSWERED, a_answers
    assert a_answers["200"] > 0 and a_answers["429"] > 0, a_answers  # slowed down, not shut out
    assert 0 < a_answers["follow 200"] <= len(ROUTES) * u.settings.max_follows_per_user
    assert a_answers["follow 429"] > 0, a_answers
    # no accepted app is lost, and the server serves A again by itself
    with httpx.Client(base_url=u.url, timeout=HANG_GUARD_S) as c:
        for who, app_id in u.accepted:
            wait_for(
                lambda: app_state(c, who, app_id)["final_status"] == "SUCCEEDED",  # noqa: B023
                HANG_GUARD_S,
                f"{app_id} to succeed",
            )
        for route in ROUTES:
            assert c.get(route, headers=u.a).status_code == 200
        path, follow = f"/api/v1/apps/{followed}/logs", {"follow": "true"}
        with c.stream("GET", path, headers=u.a, params=follow) as r:  # the follows' slots
            assert r.status_code == 200 and next(r.iter_raw()) == b"ok\n"  # came back
        assert c.post(f"/api/v1/apps/{followed}/kill", headers=u.a).status_code == 200
        assert c.get("/healthz").status_code == 200
