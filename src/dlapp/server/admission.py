"""Admission of API requests: no user's flood can starve another user or the health check.

Every request but ``/healthz`` takes two slots before anything else runs, the token check
included: one of the user's own (``max_requests_per_user``; over it, 429 at once) and one of
the server's (``max_requests``; when all are taken it waits up to ``request_wait_s``, then 503).
Both are given back when the answer starts, so a log follow, which answers at once and then
streams, holds neither: it holds one of the user's follow slots instead
(``max_follows_per_user``, taken by the route). The user is known by their token (a user has
one live token), hashed, before it is checked, so that refusing a flood costs no worker thread
and no database connection. Requests without a token share one slot set; the dashboard's
static files take only a server slot.

Blocking work (the store, the executor) runs on ``api_threads`` worker threads, and the
store's connection pool is sized from that number (``store.db.pool_for_threads``), so a thread
never waits long for a connection; if one ever does, the answer is 503, never a 500.
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
from dlapp.server.ratelimit import Slots

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
        f"this user already has {settings.max_requests_per_user} requests in flight, the most "
        "allowed (max_requests_per_user); wait for their answers",
        retry_after_s=RETRY_AFTER_S,
    )


def unavailable(why: str) -> DlappError:
    return ServerUnavailable(f"the server is busy ({why}); try again in a moment")


class AdmissionMiddleware:
    """Admit each request against its user's slots and the server's (module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.users: Slots | None = None  # made on the first request, from the settings
        self.server: anyio.Semaphore | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx = getattr(scope["app"].state, "ctx", None) if scope["type"] == "http" else None
        if ctx is None or scope["path"] == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        settings: ServerSettings = ctx.settings
        if self.users is None or self.server is None:
            self.users = Slots(settings.max_requests_per_user)
            self.server = anyio.Semaphore(settings.max_requests)
        users, server = self.users, self.server
        # 1. the user's own slot: over the limit, 429 at once
        key = None if is_open(scope["path"]) else requester(scope)
        if key is not None and not users.take(key):
            await _answer(scope, receive, send, too_many_requests(settings))
            return
        # 2. a server slot: wait briefly for one, else 503
        admitted = False
        with anyio.move_on_after(settings.request_wait_s):
            await server.acquire()
            admitted = True
        if not admitted:
            if key is not None:
                users.give_back(key)
            await _answer(scope, receive, send, unavailable("every request slot is taken"))
            return

        def give_back() -> None:
            server.release()
            if key is not None:
                users.give_back(key)

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
