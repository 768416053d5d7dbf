"""Floods: one user's requests cannot starve another user or the health check (issue 14).

A real server (uvicorn on a loopback port, over the in-process executor) and a hostile user A:
a thousand concurrent requests of each expensive route, sent again as soon as each is answered,
with 64 log follows held open. While that flood is in flight, user B's ``GET /api/v1/me``,
``/healthz`` and submissions must answer; no request may get a 500; every accepted app must
be kept; afterwards the server serves A again by itself. Nothing is timed: timeouts here are
hang guards only.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from dlapp.config import ServerSettings
from dlapp.scheduler import Resources
from dlapp.spec import AppSpec
from dlapp.workspace import pack_workspace

from conftest import wait_for
from inprocess import admin_token, bearer, live

FLOOD = 1000  # concurrent requests of each route
FOLLOWS = 64
ROUTES = ("/api/v1/cluster", "/api/v1/apps", "/api/v1/queues")
PROBES = 5  # B's requests of each kind while a flood is in flight
HANG_GUARD_S = 120.0
ANSWERED = {200, 429, 503}  # what a flooded route may answer: served, or refused cleanly


@dataclass
class Users:
    url: str
    a: dict[str, str]
    b: dict[str, str]
    tarball: bytes  # echo ok
    sleeper: bytes  # echo ok, then sleep
    accepted: list[tuple[dict[str, str], str]] = field(default_factory=list)  # (who, app id)


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
            tokens["alice"],
            tokens["bob"],
            workspace(tmp_path, "quick", "echo ok\n"),
            workspace(tmp_path, "sleeper", "echo ok\nsleep 600\n"),
        )


async def submit(c: httpx.AsyncClient, u: Users, who: dict[str, str], spec: str) -> int:
    resp = await c.post(
        "/api/v1/apps",
        headers=who,
        data={"spec": spec},
        files={"workspace": ("workspace.tar.gz", u.tarball, "application/gzip")},
    )
    if resp.status_code == 201:
        u.accepted.append((who, resp.json()["id"]))
    return resp.status_code


async def hammer(c: httpx.AsyncClient, path: str, stop: anyio.Event, seen: Counter[Any]) -> None:
    """One hostile client: the same request again as soon as it is answered, until ``stop``."""
    while not stop.is_set():
        try:
            seen[(await c.get(path)).status_code] += 1
        except httpx.HTTPError as exc:  # no answer at all: counted, and asserted against
            seen[type(exc).__name__] += 1


async def follow(
    c: httpx.AsyncClient,
    path: str,
    held: anyio.Event,
    opened: Counter[Any],
    done: Callable[[], None],
) -> None:
    """One log follow, held open (after its first bytes) until ``held`` is set."""
    try:
        async with c.stream("GET", path, params={"follow": "true"}) as resp:
            opened[resp.status_code] += 1
            if resp.status_code == 200:
                async for _ in resp.aiter_raw():
                    break  # the log's first bytes came: the follow is streaming
            done()
            await held.wait()
    except httpx.HTTPError as exc:
        opened[type(exc).__name__] += 1
        done()


async def probe(c: httpx.AsyncClient, u: Users, checks: Counter[Any]) -> None:
    """User B, while A floods: who am I, the health check, and a submission."""
    for _ in range(PROBES):
        me = await c.get("/api/v1/me", headers=u.b)
        checks[("me", me.status_code, me.json().get("name"))] += 1
        health = await c.get("/healthz")
        checks[("healthz", health.status_code)] += 1
    checks[("submit", await submit(c, u, u.b, spec_json("b")))] += 1


def limits(n: int) -> httpx.Limits:
    return httpx.Limits(max_connections=n, max_keepalive_connections=n)


async def flood_all_routes(u: Users, a_app: str) -> tuple[Counter[Any], Counter[Any], Counter[Any]]:
    seen: Counter[Any] = Counter()  # A's answers, by status code
    opened: Counter[Any] = Counter()  # A's follows, by status code
    checks: Counter[Any] = Counter()  # B's answers
    timeout = httpx.Timeout(HANG_GUARD_S)
    async with (
        httpx.AsyncClient(base_url=u.url, headers=u.a, timeout=timeout, limits=limits(FLOOD)) as a,
        httpx.AsyncClient(
            base_url=u.url, headers=u.a, timeout=timeout, limits=limits(FOLLOWS)
        ) as af,
        httpx.AsyncClient(base_url=u.url, timeout=timeout) as b,
        anyio.create_task_group() as follows,
    ):
        held = anyio.Event()
        started = 0

        def one_started() -> None:
            nonlocal started
            started += 1

        for _ in range(FOLLOWS):  # 1. A holds its follows open for the whole flood
            path = f"/api/v1/apps/{a_app}/logs"
            follows.start_soon(follow, af, path, held, opened, one_started)
        with anyio.fail_after(HANG_GUARD_S):
            while started < FOLLOWS:
                await anyio.sleep(0.05)
        for route in ROUTES:  # 2. each expensive route in turn, a thousand at once
            stop = anyio.Event()
            before = sum(seen.values())
            async with anyio.create_task_group() as flood:
                for _ in range(FLOOD):
                    flood.start_soon(hammer, a, route, stop, seen)
                with anyio.fail_after(HANG_GUARD_S):  # 3. until the flood is answered...
                    while sum(seen.values()) - before < FLOOD:
                        await anyio.sleep(0.05)
                await probe(b, u, checks)  # 4. ...B is served while it goes on
                checks[("a submits", await submit(b, u, u.a, spec_json("a")))] += 1
                stop.set()
        held.set()
    return seen, opened, checks


def app_state(c: httpx.Client, who: dict[str, str], app_id: str) -> dict[str, Any]:
    resp = c.get(f"/api/v1/apps/{app_id}", headers=who)
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def test_one_users_flood_starves_neither_another_user_nor_the_health_check(users: Users) -> None:
    u = users
    with httpx.Client(base_url=u.url, timeout=HANG_GUARD_S) as c:
        a_app = c.post(  # A's app logs, then waits: its followers stay open
            "/api/v1/apps",
            headers=u.a,
            data={"spec": spec_json("a-follow")},
            files={"workspace": ("w.tar.gz", u.sleeper, "application/gzip")},
        )
        assert a_app.status_code == 201, a_app.text
        a_id = a_app.json()["id"]
        wait_for(lambda: app_state(c, u.a, a_id)["state"] == "RUNNING", HANG_GUARD_S, "a-follow")

    seen, opened, checks = anyio.run(flood_all_routes, u, a_id)

    # B was served throughout, and so was the health check
    assert checks[("me", 200, "bob")] == PROBES * len(ROUTES), checks
    assert checks[("healthz", 200)] == PROBES * len(ROUTES), checks
    assert checks[("submit", 201)] == len(ROUTES), checks
    # every one of A's requests was answered: served or refused, never a 500 or silence
    assert set(seen) <= ANSWERED, seen
    assert seen[200] > 0 and seen[429] > 0, seen  # A is slowed down, not shut out
    assert set(opened) <= {200, 429} and opened[200] > 0 and opened[429] > 0, opened
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
        path, follow = f"/api/v1/apps/{a_id}/logs", {"follow": "true"}
        with c.stream("GET", path, headers=u.a, params=follow) as r:
            assert r.status_code == 200 and next(r.iter_raw()) == b"ok\n"
        assert c.post(f"/api/v1/apps/{a_id}/kill", headers=u.a).status_code == 200
        wait_for(lambda: app_state(c, u.a, a_id)["final_status"] == "KILLED", HANG_GUARD_S, "kill")
        assert c.get("/healthz").status_code == 200
