"""Who is calling, and what they may touch. Deny by default.

Every request but ``GET /healthz`` and the dashboard's static files (``/dashboard/``: HTML, JS
and CSS, no data) must carry ``Authorization: Bearer <token>``: the
``AuthMiddleware`` checks it before routing, so every route and method (``/docs`` and
``/openapi.json`` included, and paths that do not exist) answers 401 without a live token of an
enabled user. The routes read the resolved ``Caller`` through ``get_caller``.

Rights: a user sees and controls their own apps; a cluster admin everything. Someone else's app
is answered as not found, so its existence does not leak.

A token that is unknown, revoked, expired (``token_lifetime_days``, or its own expiry) or of a
disabled user is a failed login: 401, and an audit entry ``login.failed`` with the client's
address and the token's fingerprint, rate-limited by ``FailedLogins``.
"""

from __future__ import annotations

import getpass
import logging
from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, Request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from dlapp.credentials import ADMIN_TOKEN_FILE, write_private
from dlapp.errors import DlappError, Forbidden, ServerUnavailable, Unauthorized
from dlapp.scheduler import QueueTree
from dlapp.server.context import Context
from dlapp.server.failed_logins import FailedLogins
from dlapp.server.views import iso
from dlapp.store import audit, users
from dlapp.store.models import App
from dlapp.store.users import Refusal, TokenCheck

logger = logging.getLogger(__name__)
OPEN_PATHS = frozenset({"/healthz", "/dashboard"})
# The dashboard's static files (HTML, JS, CSS: no data); nothing else may be served below it.
OPEN_PREFIXES = ("/dashboard/",)


def is_open(path: str) -> bool:
    """Whether ``path`` is served without a token: ``/healthz`` and the dashboard's files."""
    if path in OPEN_PATHS:
        return True
    return path.startswith(OPEN_PREFIXES) and ".." not in path.split("/")


CALLER_KEY = "dlapp.caller"  # where the middleware leaves the Caller in the ASGI scope


@dataclass(frozen=True)
class Caller:
    name: str
    is_admin: bool = False
    groups: frozenset[str] = frozenset()


def may_see(caller: Caller, app: App, queues: QueueTree | None = None) -> bool:
    """Whether ``caller`` may see and control ``app`` (view, events, logs, kill): its owner,
    an admin of its queue (``admin_acl`` of the queue or an ancestor), or a cluster admin."""
    if caller.is_admin or app.user == caller.name:
        return True
    return queues is not None and queues.administers(app.queue, caller.name, caller.groups)


@dataclass(frozen=True)
class Attempt:
    """Where a request came from, for the audit entry of a refused token."""

    address: str = "unknown"
    method: str = ""
    path: str = ""


def refusal_message(check: TokenCheck) -> str:
    """What a refused token is told: the same for unknown and revoked, so that a guess learns
    nothing; an expired token is told so, with what to do."""
    refusal = check.refusal
    if refusal is Refusal.EXPIRED:
        return (
            f"token expired at {iso(check.expires)}: ask a cluster admin for a new one "
            "(`dlapp admin token rotate <you>`), then `dlapp login <server>`"
        )
    if refusal is Refusal.DISABLED and check.user is not None:
        return f"user {check.user.name} is disabled"
    return "invalid or revoked token"


def authenticate(
    ctx: Context,
    authorization: str | None,
    attempt: Attempt | None = None,
    failed: FailedLogins | None = None,
) -> Caller:
    """The caller behind an ``Authorization`` header, or ``Unauthorized`` (never echoing it).
    A token refused is audited (``record_failed_login``) when ``failed`` is given."""
    if not authorization:
        raise Unauthorized(
            "no token: send 'Authorization: Bearer <token>' (see `dlapp login`, or DLAPP_TOKEN)"
        )
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("the Authorization header must be 'Bearer <token>'")
    with ctx.sessions() as session:
        now = ctx.clock()
        check = users.check_token(session, token, now, ctx.settings.token_lifetime_s)
        if check.refusal is not None or check.user is None:
            if failed is not None:
                record_failed_login(session, failed, check, token, attempt or Attempt(), now)
            raise Unauthorized(refusal_message(check))
        user = check.user
        caller = Caller(user.name, user.is_admin, frozenset(users.groups_of(user)))
        if session.dirty:  # last_used moved
            session.commit()
    return caller


def record_failed_login(
    session: Session,
    failed: FailedLogins,
    check: TokenCheck,
    token: str,
    attempt: Attempt,
    now: float,
) -> None:
    """Audit a refused token (``login.failed``), unless ``failed`` says to count it only."""
    tally = failed.admit(attempt.address, now)
    if tally is None:
        return
    why = (check.refusal or Refusal.UNKNOWN).value
    detail = f"{why} token {users.fingerprint(token)} on {attempt.method} {attempt.path[:200]}"
    if more := tally.describe():
        detail += f"; {more}"
    user = check.user.name if check.user is not None else audit.NO_USER
    try:
        audit.record(session, user, audit.LOGIN_FAILED, attempt.address[:256], now, detail)
        session.commit()
    except SQLAlchemyError as exc:  # the 401 stands without its entry
        session.rollback()
        logger.error("could not audit a refused login from %s: %s", attempt.address, exc)
        return
    logger.warning("refused a login from %s: %s", attempt.address, detail)


class AuthMiddleware:
    """Resolve the caller of every HTTP request before routing; 401 unless the path is open."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.failed = FailedLogins()  # which refused tokens are audited

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        try:
            ctx: Context | None = getattr(scope["app"].state, "ctx", None)
            if ctx is None:
                raise ServerUnavailable("the server is starting")
            header = Headers(scope=scope).get("authorization")
            client = scope.get("client")
            attempt = Attempt(client[0] if client else "unknown", scope["method"], scope["path"])
            scope[CALLER_KEY] = await anyio.to_thread.run_sync(
                authenticate, ctx, header, attempt, self.failed
            )
        except DlappError as exc:
            response = JSONResponse(
                {"error": exc.to_dict()}, status_code=exc.http_status, headers=exc.headers()
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def get_caller(request: Request) -> Caller:
    caller = request.scope.get(CALLER_KEY)
    if not isinstance(caller, Caller):  # the middleware is missing: still deny
        raise Unauthorized("not authenticated")
    return caller


def require_admin(caller: Annotated[Caller, Depends(get_caller)]) -> Caller:
    if not caller.is_admin:
        raise Forbidden(f"{caller.name} is not a cluster admin")
    return caller


def bootstrap_admin(ctx: Context) -> str | None:
    """On a store without users, make the first admin; its token goes to <home>/admin.token.

    Returns the admin's name when one was made. The token is written with mode 0600 and never
    logged: the CLI of the embedded cluster reads it from there, and the admin of a configured
    server copies it into their client config (``dlapp login``).
    """
    with ctx.sessions() as session:
        if users.has_users(session):
            return None
        name = ctx.settings.admin_user or _login_name()
        now = ctx.clock()
        _, token = users.add_user(session, name, now, is_admin=True)
        audit.record(session, name, "user.add", name, now, "first admin, made on a fresh store")
        path = ctx.settings.home / ADMIN_TOKEN_FILE
        write_private(path, token + "\n")
        session.commit()
    logger.info("made the first admin user %s; its token is in %s", name, path)
    return name


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return "admin"
