"""Admission of API requests: no user's flood can starve another user or the health check.

Every request but ``/healthz`` takes two slots before anything else runs, the token check
included: one of its user's (``max_requests_per_user``) and one of the server's
(``max_requests``). A request whose user holds all theirs waits for one, in order, up to
``request_wait_s``, then gets 429; one that finds every server slot taken waits as long, then
gets 503; both with ``Retry-After``. Waiting costs no thread and no store connection, and it
paces a flood: a client that sends again the moment it is refused is refused at most once per
``request_wait_s`` per connection, so the event loop keeps time for everyone else.

Both slots are given back when the answer starts, so a log follow, which answers at once and
then streams, holds neither: it holds one of the user's follow slots instead
(``max_follows_per_user``, taken by the route). The user is known by their token (a user has
one live token), hashed, before it is checked, so that refusing a flood costs no worker thread
and no database connection. Requests without a token share one set of slots; the dashboard's
static files take only a server slot.

Blocking work (the store, the executor) runs on ``api_threads`` worker threads, and the
store's connection pool is sized from them (``store.db.pool_for_threads``), so a thread never
waits long for a connection; if one ever does, the answer is 503, never a 500.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dlapp.config import ServerSettings
from dlapp.errors import DlappError, ServerUnavailable, TooManyRequests
from dlapp.server.auth import is_open

logger = logging.getLogger(__name__)
HEALTH_PATH = "/healthz"  # never waits for anything: not even a slot
ANONYMOUS = "anonymous"  # the key of requests without a token
RETRY_AFTER_S = 1.0


@dataclass
class Held:
    """Slots a request holds, given back once, whichever comes first: its answer starting, or
    its end."""

    give_back: Callable[[], None]
    done: bool = False

    def release(self) -> None:
        if not self.done:
            self.done = True
            self.give_back()


def requester(scope: Scope) -> str:
    """Who sent this request, as far as can be known before the token is checked: a hash of
    its ``Authorization`` header (a user has one live token), or ``ANONYMOUS``."""
    header = Headers(scope=scope).get("authorization")
    if not header:
        return ANONYMOUS
    return hashlib.blake2b(header.encode("utf-8", "replace"), digest_size=16).hexdigest()


def too_many_requests(settings: ServerSettings) -> TooManyRequests:
    return TooManyRequests(
        f"this user has had {settings.max_requests_per_user} requests in flight, the most "
        f"allowed (max_requests_per_user), for {settings.request_wait_s:g}s; wait for their "
        "answers",
        retry_after_s=RETRY_AFTER_S,
    )


def unavailable(why: str) -> DlappError:
    return ServerUnavailable(f"the server is busy ({why}); try again in a moment")


class Gates:
    """A semaphore of ``limit`` slots per key, on one event loop (not thread-safe): made when
    a key first comes, dropped when nothing holds or waits on it, so that keys that come once
    (a flood of made-up tokens) leave nothing behind."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._gates: dict[str, tuple[anyio.Semaphore, list[int]]] = {}  # key -> (gate, users)

    async def enter(self, key: str, wait_s: float) -> bool:
        """A slot for ``key``, waited for in order up to ``wait_s``: False if none came."""
        gate, users = self._gates.setdefault(key, (anyio.Semaphore(self.limit), [0]))
        users[0] += 1
        if await take(gate, wait_s):
            return True
        self._drop(key, users)
        return False

    def leave(self, key: str) -> None:
        gate, users = self._gates[key]
        gate.release()
        self._drop(key, users)

    def waiting_or_held(self, key: str) -> int:
        entry = self._gates.get(key)
        return entry[1][0] if entry else 0

    def _drop(self, key: str, users: list[int]) -> None:
        users[0] -= 1
        if users[0] == 0:
            del self._gates[key]


async def take(gate: anyio.Semaphore, wait_s: float) -> bool:
    """One of ``gate``'s slots: at once when one is free (no trip round the event loop, which a
    flood keeps busy), else waited for up to ``wait_s``."""
    try:
        gate.acquire_nowait()
        return True
    except anyio.WouldBlock:
        pass
    with anyio.move_on_after(wait_s):
        await gate.acquire()
        return True
    return False


class AdmissionMiddleware:
    """Admit each request against its user's slots and the server's (module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.users: Gates | None = None  # made on the first request, from the settings
        self.server: anyio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = getattr(scope["app"].state, "ctx", None) if scope["type"] == "http" else None
        if ctx is None or scope["path"] == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        settings: ServerSettings = ctx.settings
        if self.users is None or self.server is None:
            self.users = Gates(settings.max_requests_per_user)
            self.server = anyio.Semaphore(settings.max_requests)
        users, server = self.users, self.server
        wait_s = settings.request_wait_s
        # 1. one of the user's slots, waited for briefly, else 429
        key = None if is_open(scope["path"]) else requester(scope)
        if key is not None and not await users.enter(key, wait_s):
            await _answer(scope, receive, send, too_many_requests(settings))
            return
        # 2. one of the server's, likewise, else 503
        if not await take(server, wait_s):
            if key is not None:
                users.leave(key)
            await _answer(scope, receive, send, unavailable("every request slot is taken"))
            return

        def give_back() -> None:
            server.release()
            if key is not None:
                users.leave(key)

        held = Held(give_back)
        started = False

        async def send_and_release(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                held.release()  # 3. the answer has started: its slots serve someone else
            await send(message)

        try:
            await self.app(scope, receive, send_and_release)
        except PoolTimeout:  # no store connection came in time: busy, not broken
            if started:
                raise
            logger.warning("%s %s: no store connection in time", scope["method"], scope["path"])
            await _answer(scope, receive, send, unavailable("no store connection was free"))
        finally:
            held.release()


async def _answer(scope: Scope, receive: Receive, send: Send, error: DlappError) -> None:
    headers = error.headers() or {"Retry-After": str(int(RETRY_AFTER_S))}
    response = JSONResponse(
        {"error": error.to_dict()}, status_code=error.http_status, headers=headers
    )
    await response(scope, receive, send)
