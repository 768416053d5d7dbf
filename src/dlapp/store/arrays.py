"""Arrays in the store: one array row and its members (ordinary ``apps`` rows) written in bulk,
their ids, the counts of an array's members by state, a member by its index."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, insert, or_, select
from sqlalchemy.orm import Session

from dlapp.arrays import Member
from dlapp.spec import AppSpec
from dlapp.status import AppState, FinalStatus
from dlapp.store.models import App, AppArray, Event
from dlapp.store.repo import next_app_id, next_id


def next_array_id(session: Session, now: float) -> tuple[str, int]:
    """``array_<cluster start ms>_<seq:04d>``: its own sequence, beside the apps'."""
    return next_id(session, now, "array", AppArray.seq)


@dataclass(frozen=True)
class NewArray:
    user: str
    spec: AppSpec  # the array's spec: its array and sweep fields say what the members are
    members: Sequence[Member]
    max_running: int | None
    workspace: str  # the one tarball every member runs


def add_array(session: Session, new: NewArray, now: float, array_id: str, seq: int) -> AppArray:
    """The array and its members, ``ACCEPTED``, each with its submitted event: three bulk
    inserts (one for the array, one for the apps, one for the events), flushed, not committed."""
    spec = new.spec
    member = spec.member_spec()
    array = AppArray(
        id=array_id,
        seq=seq,
        user=new.user,
        name=spec.name,
        queue=spec.queue,
        size=len(new.members),
        max_running=new.max_running,
        indices=spec.array if spec.array is not None and not spec.sweep else "",
        sweep=json.dumps({k: list(v) for k, v in spec.sweep.items()}) if spec.sweep else "",
        workspace=new.workspace,
        submit_time=now,
    )
    session.add(array)
    session.flush()
    first_id, first_seq = next_app_id(session, now)
    prefix = first_id.rsplit("_", 1)[0]
    spec_json = json.dumps(member.to_dict())  # the same for every member: made once
    common = {
        "user": new.user,
        "name": spec.name,
        "queue": spec.queue,
        "state": AppState.ACCEPTED.value,
        "final_status": FinalStatus.UNDEFINED.value,
        "diagnostics": "",
        "pending_reason": "waiting for the scheduler",
        "spec": spec_json,
        "num_containers": spec.num_containers,
        "cpus": spec.resources.cpus,
        "memory_mb": spec.resources.memory_mb,
        "gpus": spec.resources.gpu_share,
        "workspace": new.workspace,
        "kill_requested": None,
        "attempt": 0,
        "submit_time": now,
        "array_id": array_id,
    }
    rows, events = [], []
    reason = f"submitted by {new.user} to queue {spec.queue} (array {array_id})"
    for i, m in enumerate(new.members):
        app_id = f"{prefix}_{first_seq + i:04d}"
        rows.append(
            common
            | {
                "id": app_id,
                "seq": first_seq + i,
                "array_index": m.index,
                "array_values": json.dumps(m.values) if m.values else "",
            }
        )
        events.append(
            {
                "app_id": app_id,
                "time": now,
                "kind": "state",
                "from_state": None,
                "to_state": AppState.ACCEPTED.value,
                "reason": reason,
            }
        )
    session.execute(insert(App), rows)
    session.execute(insert(Event), events)
    return array


def counts(session: Session, array_id: str) -> dict[str, int]:
    """How many of the array's members are in each state, finished ones by final status
    (``ACCEPTED``, ``RUNNING``, ``SUCCEEDED``, ``FAILED``, ``KILLED``): one grouped count."""
    q = (
        select(App.state, App.final_status, func.count())
        .where(App.array_id == array_id)
        .group_by(App.state, App.final_status)
    )
    out = {"ACCEPTED": 0, "RUNNING": 0, "SUCCEEDED": 0, "FAILED": 0, "KILLED": 0}
    for state, final, n in session.execute(q):
        key = final if state == AppState.FINISHED.value else state
        out[key] = out.get(key, 0) + int(n)
    return out


def member(session: Session, array_id: str, index: int) -> App | None:
    q = select(App).where(App.array_id == array_id, App.array_index == index)
    return session.scalars(q).first()


def members(session: Session, array_id: str, states: Sequence[AppState] = ()) -> list[App]:
    q = select(App).where(App.array_id == array_id)
    if states:
        q = q.where(App.state.in_([s.value for s in states]))
    return list(session.scalars(q.order_by(App.seq)))


def running_members(session: Session, array_ids: Sequence[str]) -> dict[str, int]:
    """How many members of each of ``array_ids`` are RUNNING (stopping ones too)."""
    if not array_ids:
        return {}
    q = (
        select(App.array_id, func.count())
        .where(App.array_id.in_(list(array_ids)), App.state == AppState.RUNNING.value)
        .group_by(App.array_id)
    )
    return {str(a): int(n) for a, n in session.execute(q)}


def limits(session: Session, array_ids: Sequence[str]) -> dict[str, int]:
    """The running limit (``%N``) of each of ``array_ids`` that has one."""
    if not array_ids:
        return {}
    q = select(AppArray.id, AppArray.max_running).where(
        AppArray.id.in_(list(array_ids)), AppArray.max_running.is_not(None)
    )
    return {str(a): int(n) for a, n in session.execute(q) if n is not None}


def page(
    session: Session, owner: str | None, limit: int = 100, queues: Sequence[str] | None = None
) -> list[AppArray]:
    """The newest arrays: ``owner``'s (and those in ``queues``), or everyone's (None)."""
    q = select(AppArray)
    if owner is not None:
        q = q.where(or_(AppArray.user == owner, AppArray.queue.in_(list(queues or ()))))
    return list(session.scalars(q.order_by(AppArray.seq.desc()).limit(limit)))
