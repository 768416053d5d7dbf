"""Use cases behind the admin routes: users, tokens and the audit log.

Each change is audited in the same commit. A token's text appears only in the answer that
made it (``add_user``, ``rotate_token``), never in the store, the audit log or the logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from dlapp.server.auth import Caller
from dlapp.server.context import Context
from dlapp.server.views import iso
from dlapp.store import audit, users
from dlapp.store.models import Audit, User


def user_view(session: Session, user: User) -> dict[str, Any]:
    token = users.live_token(session, user.name)
    return {
        "name": user.name,
        "is_admin": user.is_admin,
        "groups": sorted(users.groups_of(user)),
        "disabled": user.disabled,
        "created": iso(user.created),
        "token_created": iso(token.created) if token else None,
        "token_last_used": iso(token.last_used) if token else None,
    }


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
) -> dict[str, Any]:
    now = ctx.clock()
    user, token = users.add_user(session, name, now, is_admin=is_admin, groups=groups)
    detail = ("admin" if is_admin else "user") + (f", groups {','.join(groups)}" if groups else "")
    audit.record(session, caller.name, "user.add", name, now, detail)
    session.commit()
    return {"user": user_view(session, user), "token": token}


def set_disabled(ctx: Context, session: Session, caller: Caller, name: str, disabled: bool) -> User:
    user = users.set_disabled(session, name, disabled)
    action = "user.disable" if disabled else "user.enable"
    audit.record(session, caller.name, action, name, ctx.clock())
    session.commit()
    return user


def rotate_token(ctx: Context, session: Session, caller: Caller, name: str) -> str:
    users.get_user(session, name)
    now = ctx.clock()
    token = users.issue_token(session, name, now)
    audit.record(session, caller.name, "token.rotate", name, now)
    session.commit()
    return token


def revoke_tokens(ctx: Context, session: Session, caller: Caller, name: str) -> int:
    now = ctx.clock()
    count = users.revoke_tokens(session, name, now)
    audit.record(session, caller.name, "token.revoke", name, now, f"{count} token(s)")
    session.commit()
    return count
