"""Per-user, per-queue and per-request limits: request body size, submission rate, apps waiting.

The body limit is checked before the body is read (``Content-Length``) and again while it
streams in, so an oversized upload never reaches the disk beyond the limit. The submission rate
is taken before the body is read too: every submission counts, an invalid one as well, and a
throttled sender's upload is not read at all."""

from __future__ import annotations

import math

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dlapp.config import ServerSettings
from dlapp.errors import PayloadTooLarge, TooManyRequests
from dlapp.scheduler import QueueTree
from dlapp.server.auth import CALLER_KEY, Caller
from dlapp.server.context import Context
from dlapp.status import AppState
from dlapp.store.models import App

MB = 1024 * 1024
FORM_SLACK = MB  # the spec field and multipart framing around the workspace tarball
OTHER_BODY_LIMIT = MB  # every other route takes at most a small JSON body
UPLOAD_ROUTES = {("POST", "/api/v1/apps"), ("POST", "/api/v1/arrays")}


def body_limit(method: str, path: str, settings: ServerSettings) -> tuple[int, str]:
    """The most bytes a request body may have here, and how to say so."""
    if (method, path.rstrip("/")) in UPLOAD_ROUTES:
        return (
            settings.max_upload_mb * MB + FORM_SLACK,
            f"the upload is over the limit of {settings.max_upload_mb} MiB (max_upload_mb)",
        )
    return OTHER_BODY_LIMIT, "the request body is over 1 MiB"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once a streamed body passes its limit (the app maps it to 413)."""

    def __init__(self, message: str) -> None:
        super().__init__(status_code=413, detail=message)
        self.error = PayloadTooLarge(message + "; nothing was kept")


class BodyLimitMiddleware:
    """413 before reading a body whose ``Content-Length`` is over the limit; stop reading one
    that streams past it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx: Context | None = getattr(scope["app"].state, "ctx", None)
        if ctx is None:  # not started: the AuthMiddleware has already answered
            await self.app(scope, receive, send)
            return
        limit, message = body_limit(scope["method"], scope["path"], ctx.settings)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            error = PayloadTooLarge(message + "; nothing was read")
            response = JSONResponse({"error": error.to_dict()}, status_code=error.http_status)
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(message)
            return msg

        await self.app(scope, limited, send)


class SubmitRateMiddleware:
    """429 for a submission over the caller's rate (``submit_rate_per_min``), before its body
    is read or its spec looked at: every submission takes a token, refused or not."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ctx: Context | None = (
            getattr(scope["app"].state, "ctx", None) if scope["type"] == "http" else None
        )
        caller = scope.get(CALLER_KEY)
        if ctx is None or not isinstance(caller, Caller) or not is_upload(scope):
            await self.app(scope, receive, send)
            return
        wait = ctx.submit_limiter.take(caller.name)
        if wait > 0:
            error = TooManyRequests(
                f"{caller.name} is over {ctx.settings.submit_rate_per_min:g} submissions a minute "
                f"(submit_rate_per_min); try again in {math.ceil(wait)}s",
                retry_after_s=wait,
            )
            response = JSONResponse(
                {"error": error.to_dict()}, status_code=error.http_status, headers=error.headers()
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def is_upload(scope: Scope) -> bool:
    return (scope["method"], scope["path"].rstrip("/")) in UPLOAD_ROUTES


def check_submit(ctx: Context, session: Session, user: str, adding: int = 1) -> None:
    """Refuse a submission of ``adding`` apps (an array's members: its size) when the caller
    would have more than their most apps waiting (the rate was taken before the upload was
    read: ``SubmitRateMiddleware``)."""
    s = ctx.settings
    if s.max_pending_per_user:
        q = select(func.count()).where(App.user == user, App.state == AppState.ACCEPTED.value)
        pending = int(session.scalar(q) or 0)
        if pending + adding > s.max_pending_per_user:
            raise TooManyRequests(
                f"{user} already has {pending} apps waiting, the most allowed "
                "(max_pending_per_user); kill some or wait until they start"
                if adding == 1
                else f"{user} has {pending} apps waiting: {adding} more (an array's members) "
                f"would be over the most allowed, {s.max_pending_per_user} "
                "(max_pending_per_user); submit a smaller array, or wait until some start"
            )


def pending_limit(
    queues: QueueTree, path: str, leaf: str, settings: ServerSettings
) -> tuple[int, str]:
    """The most apps queue ``path`` may hold waiting (when submitting to ``leaf``, one of its
    leaves), and where that limit is set: the queue's own ``max_pending``, else, for the leaf
    itself, ``max_pending_per_queue``. 0: no limit."""
    q = queues.by_path.get(path)
    if q is not None and q.max_pending is not None:
        return q.max_pending, f"max_pending of {path} in queues.yaml"
    if path == leaf:
        return settings.max_pending_per_queue, "max_pending_per_queue"
    return 0, ""


def check_queue_pending(
    ctx: Context, session: Session, queues: QueueTree, leaf: str, adding: int = 1
) -> None:
    """Refuse a submission of ``adding`` apps to ``leaf`` when it, or a queue above it, would
    hold more than its most apps waiting (a parent's ``max_pending`` counts the apps of all its
    leaves together)."""
    for path in queues.ancestors(leaf):
        limit, source = pending_limit(queues, path, leaf, ctx.settings)
        if not limit:
            continue
        below = func.substr(App.queue, 1, len(path) + 1) == f"{path}."
        q = select(func.count()).where(
            or_(App.queue == path, below), App.state == AppState.ACCEPTED.value
        )
        pending = int(session.scalar(q) or 0)
        if pending + adding > limit:
            raise TooManyRequests(
                f"queue {path} already has {pending} apps waiting"
                + (f" ({adding} more asked for)" if adding > 1 else "")
                + f", its limit of {limit} "
                f"({source}); wait until some start, or use another queue"
            )
