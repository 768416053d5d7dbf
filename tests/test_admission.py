"""Admission of API requests (``server.admission``): per-user and server slots, what is refused
and how, the health check never held, the pool sized for the threads; and the follow cap.

The middleware is driven directly, over an app that holds each request until told to answer,
so that "in flight" is exact; nothing is timed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from sqlalchemy.exc import TimeoutError as PoolTimeout

from dlapp.config import ServerSettings
from dlapp.server.admission import AdmissionMiddleware, Gates, requester
from dlapp.server.ratelimit import Slots
from dlapp.store.db import BACKGROUND_CONNECTIONS, make_engine, pool_for_threads

from inprocess import add_user, bearer, serve, submit

SETTINGS = ServerSettings(
    home=Path("/nonexistent"),
    api_threads=4,
    max_requests=3,
    max_requests_per_user=2,
    request_wait_s=0,  # refused at once: no waiting in these tests
)


class Held:
    """An ASGI app that answers each request only once ``release`` is set."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.entered = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.entered += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def scope(path: str = "/api/v1/cluster", token: str | None = "alice") -> dict[str, Any]:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    state = SimpleNamespace(ctx=SimpleNamespace(settings=SETTINGS))
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "headers": headers,
        "app": SimpleNamespace(state=state),
    }


Call = Callable[[dict[str, Any]], Awaitable[tuple[int, dict[bytes, bytes]]]]


def caller(mw: AdmissionMiddleware) -> Call:
    async def call(s: dict[str, Any]) -> tuple[int, dict[bytes, bytes]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await mw(s, receive, send)
        start = sent[0]
        return start["status"], dict(start["headers"])

    return call


def test_a_user_over_their_slots_gets_429_and_others_are_served() -> None:
    async def main() -> None:
        app = Held()
        call = caller(AdmissionMiddleware(app))
        answers: list[int] = []
        async with anyio.create_task_group() as tg:
            for _ in range(2):  # alice's two slots, held
                tg.start_soon(lambda: _status(call(scope()), answers))
            await wait_until(lambda: app.entered == 2)
            status, headers = await call(scope())  # a third: refused
            assert status == 429 and headers[b"retry-after"] == b"1"
            tg.start_soon(lambda: _status(call(scope(token="bob")), answers))  # bob: served
            await wait_until(lambda: app.entered == 3)
            app.release.set()
        assert answers == [200, 200, 200]

    anyio.run(main)


def test_a_full_server_answers_503_but_never_holds_the_health_check() -> None:
    async def main() -> None:
        app = Held()
        call = caller(AdmissionMiddleware(app))
        async with anyio.create_task_group() as tg:
            for who in ("alice", "bob", "carol"):  # every server slot
                tg.start_soon(call, scope(token=who))
            await wait_until(lambda: app.entered == 3)
            status, headers = await call(scope(token="dave"))
            assert status == 503 and headers[b"retry-after"] == b"1"
            tg.start_soon(call, scope("/healthz", token=None))  # straight through
            await wait_until(lambda: app.entered == 4)
            app.release.set()

    anyio.run(main)


def test_slots_come_back_when_the_answer_starts_so_a_stream_holds_none() -> None:
    streams = 0
    end = anyio.Event()

    async def streaming(scope: Any, receive: Any, send: Any) -> None:
        nonlocal streams
        await send({"type": "http.response.start", "status": 200, "headers": []})
        streams += 1
        await end.wait()  # streams on, after its slots came back

    async def main() -> None:
        mw = AdmissionMiddleware(streaming)
        async with anyio.create_task_group() as tg:
            for _ in range(5):  # more than alice's slots, and than the server's
                tg.start_soon(caller(mw), scope())
            await wait_until(lambda: streams == 5)
            assert mw.server is not None and mw.server.value == 3
            assert mw.users is not None and mw.users.waiting_or_held(requester(scope())) == 0
            end.set()

    anyio.run(main)


def test_a_pool_timeout_is_a_503_not_a_500() -> None:
    async def pool_ran_dry(scope: Any, receive: Any, send: Any) -> None:
        raise PoolTimeout("QueuePool limit of size 5 overflow 10 reached")

    async def main() -> None:
        mw = AdmissionMiddleware(pool_ran_dry)
        status, _ = await caller(mw)(scope())
        assert status == 503
        assert mw.server is not None and mw.server.value == 3  # and its slots came back

    anyio.run(main)


def test_gates_keep_nothing_for_keys_gone() -> None:
    async def main() -> None:
        gates = Gates(1)
        for i in range(100):  # a flood of made-up tokens
            assert await gates.enter(f"k{i}", 0)
            gates.leave(f"k{i}")
        assert gates._gates == {}
        assert await gates.enter("a", 0)
        assert not await gates.enter("a", 0)  # its one slot is held
        assert gates.waiting_or_held("a") == 1
        gates.leave("a")
        assert gates._gates == {}

    anyio.run(main)


def test_a_token_is_known_by_its_hash_only() -> None:
    s = scope(token="dlapp_secret")
    assert "secret" not in requester(s) and requester(s) == requester(scope(token="dlapp_secret"))
    assert requester(scope(token=None)) == "anonymous"


def test_slots_per_key() -> None:
    slots = Slots(2)
    assert [slots.take("a"), slots.take("a"), slots.take("a"), slots.take("b")] == [
        True,
        True,
        False,
        True,
    ]
    slots.give_back("a")
    assert slots.in_use("a") == 1 and slots.take("a")


def test_one_user_may_not_hold_every_worker() -> None:
    with pytest.raises(ValueError, match="max_requests_per_user"):
        ServerSettings(api_threads=8, max_requests_per_user=8)


def test_the_pool_has_a_connection_for_every_thread_and_request(tmp_path: Path) -> None:
    pool = pool_for_threads(32, 64)
    assert pool.kept == 32 + BACKGROUND_CONNECTIONS and pool.overflow == 64
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", pool)
    assert engine.pool.size() == pool.kept  # type: ignore[attr-defined]
    engine.dispose()
    make_engine("sqlite://", pool).dispose()  # in memory: one connection, nothing to size


# -- the follow cap, end to end ----------------------------------------------------------------


def test_follows_over_the_cap_are_refused_and_their_slots_come_back(tmp_path: Path) -> None:
    s = ServerSettings(home=tmp_path / "home", schedule_interval_s=0.05, max_follows_per_user=1)
    with serve(s) as api:
        alice = add_user(api, s.home, "alice")
        bob = add_user(api, s.home, "bob")
        app = submit(api, tmp_path, alice, "echo ok\nsleep 60\n")
        assert app.status_code == 201, app.text
        path = f"/api/v1/apps/{app.json()['id']}/logs"
        follow = {"follow": "true"}
        with api.stream("GET", path, headers=bearer(alice), params=follow) as first:
            assert first.status_code == 200
            second = api.get(path, headers=bearer(alice), params=follow)
            assert second.status_code == 429 and "max_follows_per_user" in second.text
            assert second.headers["Retry-After"] == "1"
            admin = api.get(path, headers=bearer(bob), params=follow)
            assert admin.status_code == 404  # bob may not see it at all
        with api.stream("GET", path, headers=bearer(alice), params=follow) as again:
            assert again.status_code == 200  # the first one's slot came back
        api.post(f"/api/v1/apps/{app.json()['id']}/kill", headers=bearer(alice))


async def _status(answer: Awaitable[tuple[int, dict[bytes, bytes]]], into: list[int]) -> None:
    into.append((await answer)[0])


async def wait_until(predicate: Callable[[], bool]) -> None:
    with anyio.fail_after(30):  # a hang guard
        while not predicate():
            await anyio.sleep(0.01)
