"""The audit log: who did what to what, and when. Rows are only ever added.

Actions: ``submit``, ``kill``, ``softkill`` (target: the app), ``user.add``, ``user.disable``,
``user.enable``, ``token.rotate``, ``token.revoke`` (target: the user). Never a token's text.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from dlapp.store.models import Audit


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
