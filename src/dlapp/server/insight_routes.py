"""Read-only routes for the dashboard and ``dlapp usage``: GPU-hours per user or queue, the
queues over time, and an app's spec as it was stored.

``GET /api/v1/usage?since=&until=&by=user|queue``: a cluster admin sees everyone; anyone else
only their own apps (whatever ``by`` says). ``GET /api/v1/timeseries?since=&until=``: every
queue's samples (``server.usage_monitor``), for every user, as ``/api/v1/queues`` is.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from dlapp.errors import BadRequest
from dlapp.server import accounting, services, usage_monitor
from dlapp.server.auth import Caller, get_caller
from dlapp.server.context import Context
from dlapp.server.routes import Ctx, Db, User
from dlapp.server.views import iso
from dlapp.store.models import App, Container, GpuUsage

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
        select(App, Container, GpuUsage)
        .join(Container, Container.app_id == App.id)
        .outerjoin(GpuUsage, GpuUsage.container_id == Container.id)
        .where(Container.start_time.is_not(None), Container.start_time < until)
        .where((Container.end_time.is_(None)) | (Container.end_time > since))
    )
    if not caller.is_admin:
        q = q.where(App.user == caller.name)
    out = []
    for app, c, measured in session.execute(q).all():
        assert c.start_time is not None
        end = c.end_time
        if end is None and app.state == "FINISHED":  # never got an end time: the app's
            end = app.finish_time or c.start_time
        sampled = measured if measured is not None and measured.samples > 0 else None
        out.append(
            accounting.Allocation(
                app.id,
                app.user,
                app.queue,
                app.gpus,
                c.start_time,
                end,
                sampled.gpu_seconds_used if sampled else None,
                sampled.seconds_sampled if sampled and sampled.samples > 1 else None,
            )
        )
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
        "total_gpu_hours_used": None
        if all(r.gpu_hours_used is None for r in rows)
        else round(sum(r.gpu_hours_used or 0.0 for r in rows), 4),
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


@router.get("/timeseries", tags=["accounting"])
def get_timeseries(
    ctx: Ctx,
    session: Db,
    since: Annotated[
        str | None, Query(description="ISO date or date-time; default a day ago")
    ] = None,
    until: Annotated[str | None, Query(description="ISO date or date-time; default now")] = None,
) -> dict[str, Any]:
    """Per queue over time: GPUs guaranteed, allocated and used; apps running and pending; the
    longest wait. ``root`` is the whole cluster. Times are UNIX seconds. A range that holds
    now ends with a point for now (as ``/cluster`` and ``/queues`` say it), whatever the
    sampling interval."""
    now = ctx.clock()
    start, end = parse_time(since, now - 86400), parse_time(until, now + 1)
    if end <= start:
        raise BadRequest("until must be after since")
    queues = usage_monitor.series(session, start, end)
    if start <= now < end:
        usage_monitor.add_now(queues, usage_monitor.take_samples(ctx, session, now))
    return {
        "since": iso(start),
        "until": iso(end),
        "interval_s": ctx.settings.timeseries_interval_s,
        "queues": queues,
    }


@router.get("/apps/{app_id}/spec", tags=["apps"])
def get_spec(ctx: Ctx, session: Db, me: User, app_id: str) -> dict[str, Any]:
    """The app's normalised spec, as stored at submit."""
    app = services.get(ctx, session, app_id, me)
    spec: dict[str, Any] = json.loads(app.spec)
    return {"id": app.id, "spec": spec}
