"""Use cases behind the admin routes: users, tokens and the audit log.

Each change is audited in the same commit. A token's text appears only in the answer that
made it (``add_user``, ``rotate_token``), never in the store, the audit log or the logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from dlapp.server import tenancy
from dlapp.server.auth import Caller
from dlapp.server.context import Context
from dlapp.server.views import iso
from dlapp.store import audit, users
from dlapp.store.models import Audit, User


def user_view(ctx: Context, session: Session, user: User) -> dict[str, Any]:
    token = users.live_token(session, user.name)
    expires = users.expiry(token, ctx.settings.token_lifetime_s) if token else None
    return {
        "name": user.name,
        "is_admin": user.is_admin,
        "groups": sorted(users.groups_of(user)),
        "disabled": user.disabled,
        "created": iso(user.created),
        "token_created": iso(token.created) if token else None,
        "token_last_used": iso(token.last_used) if token else None,
        "token_expires": iso(expires),
        "token_expired": expires is not None and ctx.clock() >= expires,
    }


def expires_at(now: float, expires_in_days: float | None) -> float | None:
    """A token's own expiry, ``expires_in_days`` from ``now``; None: only the server's
    ``token_lifetime_days`` limits it."""
    return None if expires_in_days is None else now + expires_in_days * 86400.0


def audit_view(entry: Audit) -> dict[str, Any]:
    return {
        "time": iso(entry.time),
        "user": entry.user,
        "action": entry.action,
        "target": entry.target,
        "detail": entry.detail,
    }


def add_user(
    ctx: Context,
    session: Session,
    caller: Caller,
    name: str,
    is_admin: bool,
    groups: Sequence[str],
    expires_in_days: float | None = None,
) -> dict[str, Any]:
    now = ctx.clock()
    expires = expires_at(now, expires_in_days)
    user, token = users.add_user(
        session, name, now, is_admin=is_admin, groups=groups, expires=expires
    )
    detail = ("admin" if is_admin else "user") + (f", groups {','.join(groups)}" if groups else "")
    if expires is not None:
        detail += f", token expires {iso(expires)}"
    audit.record(session, caller.name, "user.add", name, now, detail)
    session.commit()
    made: dict[str, Any] = {"user": user_view(ctx, session, user), "token": token}
    notice = tenancy.notice_on_new_user(ctx, session)
    if notice:
        made["notice"] = notice
    return made


def set_disabled(ctx: Context, session: Session, caller: Caller, name: str, disabled: bool) -> User:
    user = users.set_disabled(session, name, disabled)
    action = "user.disable" if disabled else "user.enable"
    audit.record(session, caller.name, action, name, ctx.clock())
    session.commit()
    return user


def rotate_token(
    ctx: Context,
    session: Session,
    caller: Caller,
    name: str,
    expires_in_days: float | None = None,
) -> str:
    users.get_user(session, name)
    now = ctx.clock()
    expires = expires_at(now, expires_in_days)
    token = users.issue_token(session, name, now, expires)
    detail = "" if expires is None else f"expires {iso(expires)}"
    audit.record(session, caller.name, "token.rotate", name, now, detail)
    session.commit()
    return token


def revoke_tokens(ctx: Context, session: Session, caller: Caller, name: str) -> int:
    now = ctx.clock()
    count = users.revoke_tokens(session, name, now)
    audit.record(session, caller.name, "token.revoke", name, now, f"{count} token(s)")
    session.commit()
    return count
