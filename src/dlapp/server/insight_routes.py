"""Read-only routes for the dashboard and ``dlapp usage``: GPU-hours per user or queue, and an
app's spec as it was stored.

``GET /api/v1/usage?since=&until=&by=user|queue``: a cluster admin sees everyone; anyone else
only their own apps (whatever ``by`` says).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from dlapp import accounting
from dlapp.errors import BadRequest
from dlapp.server import services
from dlapp.server.auth import Caller, get_caller
from dlapp.server.context import Context
from dlapp.server.routes import Ctx, Db, User
from dlapp.server.views import iso
from dlapp.store.models import App, Container

router = APIRouter(dependencies=[Depends(get_caller)])


def parse_time(text: str | None, default: float) -> float:
    """An ISO date or date-time (UTC when it names no zone) as a UNIX time."""
    if not text:
        return default
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{text!r} is not an ISO date or date-time (e.g. 2026-11-01)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def allocations(
    session: Session, caller: Caller, since: float, until: float
) -> list[accounting.Allocation]:
    """Containers that started before ``until`` and had not ended by ``since``."""
    q = (
        select(App, Container)
        .join(Container, Container.app_id == App.id)
        .where(Container.start_time.is_not(None), Container.start_time < until)
        .where((Container.end_time.is_(None)) | (Container.end_time > since))
    )
    if not caller.is_admin:
        q = q.where(App.user == caller.name)
    out = []
    for app, c in session.execute(q).all():
        assert c.start_time is not None
        end = c.end_time
        if end is None and app.state == "FINISHED":  # never got an end time: the app's
            end = app.finish_time or c.start_time
        out.append(accounting.Allocation(app.id, app.user, app.queue, app.gpus, c.start_time, end))
    return out


def usage(
    ctx: Context, session: Session, caller: Caller, since: float, until: float, by: str
) -> dict[str, Any]:
    if by not in accounting.GROUPS:
        raise BadRequest(f"by must be one of {', '.join(accounting.GROUPS)}, not {by!r}")
    if until <= since:
        raise BadRequest("until must be after since")
    group: accounting.GroupBy = "user" if by == "user" else "queue"
    rows = accounting.usage(allocations(session, caller, since, until), since, until, group)
    return {
        "since": iso(since),
        "until": iso(until),
        "by": by,
        "scope": "all" if caller.is_admin else caller.name,
        "rows": [r.to_dict() for r in rows],
        "total_gpu_hours": round(sum(r.gpu_hours for r in rows), 4),
    }


@router.get("/usage", tags=["accounting"])
def get_usage(
    ctx: Ctx,
    session: Db,
    me: User,
    since: Annotated[str | None, Query(description="ISO date or date-time, UTC")] = None,
    until: Annotated[str | None, Query(description="ISO date or date-time; default now")] = None,
    by: Annotated[str, Query(description="user or queue")] = "user",
) -> dict[str, Any]:
    """GPU-hours allocated per user or queue (admins: everyone; others: their own apps)."""
    now = ctx.clock()
    return usage(ctx, session, me, parse_time(since, 0.0), parse_time(until, now), by)


@router.get("/apps/{app_id}/spec", tags=["apps"])
def get_spec(ctx: Ctx, session: Db, me: User, app_id: str) -> dict[str, Any]:
    """The app's normalised spec, as stored at submit."""
    app = services.get(ctx, session, app_id, me)
    spec: dict[str, Any] = json.loads(app.spec)
    return {"id": app.id, "spec": spec}
