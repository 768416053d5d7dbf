"""The audit log: who did what to what, and when. Rows are only ever added.

Actions: ``submit``, ``kill``, ``softkill`` (target: the app), ``user.add``, ``user.disable``,
``user.enable``, ``token.rotate``, ``token.revoke`` (target: the user); ``login.failed``
(target: the client's address; user: the token's owner when it is known, else ``-``; detail:
why, the token's fingerprint, and how many more were refused from that address without an
entry of their own). Never a token's text.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from dlapp.store.models import Audit

LOGIN_FAILED = "login.failed"
NO_USER = "-"  # the user of an entry whose actor is unknown (a token that matches no one)


def record(
    session: Session, user: str, action: str, target: str, now: float, detail: str = ""
) -> None:
    session.add(Audit(time=now, user=user, action=action, target=target, detail=detail))


def entries(
    session: Session,
    user: str | None = None,
    action: str | None = None,
    target: str | None = None,
    limit: int = 1000,
) -> list[Audit]:
    """Newest first."""
    q = select(Audit)
    if user:
        q = q.where(Audit.user == user)
    if action:
        q = q.where(Audit.action == action)
    if target:
        q = q.where(Audit.target == target)
    return list(session.scalars(q.order_by(Audit.id.desc()).limit(limit)))
