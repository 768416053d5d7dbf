"""Use cases of app arrays and sweeps: submit one (its members in one transaction, sharing one
kept workspace), see one (counts by state), list them, kill every unfinished member.

Members are ordinary apps: ``services.get`` finds one by its app id or as
``<array id>_<index>``, and every app route serves it. Who may see or kill an array is who may
see or kill its apps: its owner, an admin of its queue, a cluster admin."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from dlapp.arrays import members, running_limit
from dlapp.errors import BadRequest, ConflictError, NotFoundError, PayloadTooLarge
from dlapp.server import services
from dlapp.server.auth import Caller
from dlapp.server.context import Context
from dlapp.server.views import iso
from dlapp.spec import AppSpec
from dlapp.status import AppState, FinalStatus, StopReason
from dlapp.store import arrays as store
from dlapp.store import audit
from dlapp.store.models import App, AppArray, Event


def submit(
    ctx: Context, session: Session, user: str, spec: AppSpec, upload: Path
) -> dict[str, Any]:
    """Check the array as one app is checked (each member is that app), then keep its
    workspace once and record the array and all its members in one commit: all or nothing."""
    if not spec.is_array:
        raise BadRequest("this spec has no array or sweep: submit it to /api/v1/apps")
    found = members(spec.array, spec.sweep)
    size, most = len(found), ctx.settings.max_array_size
    if size > most:
        raise PayloadTooLarge(
            f"the array has {size} members, over the most this server takes, {most} "
            "(max_array_size); split it into smaller arrays"
        )
    checked = services.check_submission(ctx, session, user, spec.member_spec(), upload, size)
    spec = spec.model_copy(update={"queue": checked.queue})
    limit = running_limit(spec.array, spec.sweep)

    def add(dest: Path, array_id: str, seq: int, now: float) -> AppArray:
        new = store.NewArray(user, spec, found, limit, str(dest))
        array = store.add_array(session, new, now, array_id, seq)
        audit.record(
            session,
            user,
            "submit",
            array_id,
            now,
            f"array of {size}, queue {spec.queue}, name {spec.name}",
        )
        return array

    array = services.keep_new(ctx, session, upload, store.next_array_id, add)
    return view(session, array, ctx.settings.url)


def get(ctx: Context, session: Session, array_id: str, caller: Caller) -> AppArray:
    """The array, if ``caller`` may see it (as its apps); another's is not found."""
    array = session.get(AppArray, array_id)
    if array is None or not _may_see(ctx, caller, array):
        raise NotFoundError(f"no array {array_id}")
    return array


def _may_see(ctx: Context, caller: Caller, array: AppArray) -> bool:
    if caller.is_admin or array.user == caller.name:
        return True
    return ctx.queues.tree.administers(array.queue, caller.name, caller.groups)


def list_arrays(ctx: Context, session: Session, caller: Caller, limit: int) -> list[AppArray]:
    """The newest arrays the caller may see."""
    if caller.is_admin:
        return store.page(session, None, limit)
    administered = ctx.queues.tree.administered_by(caller.name, caller.groups)
    return store.page(session, caller.name, limit, administered)


def kill(ctx: Context, session: Session, array_id: str, soft: bool, caller: Caller) -> AppArray:
    """Kill (or softkill) every unfinished member: the queued ones finish now, in bulk; the
    running ones are stopped by the scheduler. One commit; 409 when all had finished."""
    array = get(ctx, session, array_id, caller)
    now = ctx.clock()
    word = "softkill" if soft else "kill"
    # the queued members, finished in one statement: those it finished are the ones it
    # returns (a member the scheduler is admitting now is RUNNING once its row is free)
    reason = f"{word}ed while queued (array {array_id})"
    queued = list(
        session.scalars(
            update(App)
            .where(App.array_id == array_id, App.state == AppState.ACCEPTED.value)
            .values(
                state=AppState.FINISHED.value,
                final_status=FinalStatus.KILLED.value,
                finish_time=now,
                diagnostics=reason,
                pending_reason="",
            )
            .returning(App.id)
            .execution_options(synchronize_session=False)
        )
    )
    if queued:
        session.execute(
            insert(Event),
            [
                {
                    "app_id": app_id,
                    "time": now,
                    "kind": "state",
                    "from_state": AppState.ACCEPTED.value,
                    "to_state": AppState.FINISHED.value,
                    "reason": f"{FinalStatus.KILLED.value}: {reason}",
                }
                for app_id in queued
            ],
        )
    running = store.members(session, array_id, (AppState.RUNNING,))
    if not queued and not running:
        raise ConflictError(f"{array_id}: every member has finished already")
    for app in running:
        if app.kill_requested is None or (not soft and app.kill_requested != StopReason.KILL):
            services.stop(ctx, session, app, soft, now)
    audit.record(
        session,
        caller.name,
        word,
        array_id,
        now,
        f"array of {array.user}: {len(queued)} queued, {len(running)} running",
    )
    session.commit()
    return array


def view(session: Session, array: AppArray, base_url: str) -> dict[str, Any]:
    """An array as the API shows it: what it is, and its members' counts by state."""
    counts = store.counts(session, array.id)
    done = counts["SUCCEEDED"] + counts["FAILED"] + counts["KILLED"]
    return {
        "id": array.id,
        "name": array.name,
        "user": array.user,
        "queue": array.queue,
        "size": array.size,
        "max_running": array.max_running,
        "indices": array.indices,
        "sweep": json.loads(array.sweep) if array.sweep else None,
        "submit_time": iso(array.submit_time),
        "counts": counts,
        "finished": done == array.size,
        "members": f"{base_url}/api/v1/apps?array={array.id}",
        "url": f"{base_url}/api/v1/arrays/{array.id}",
    }
