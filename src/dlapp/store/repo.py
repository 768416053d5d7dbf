"""Repository functions over a Session: every state change goes through ``transition``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dlapp.errors import NotFoundError
from dlapp.spec import AppSpec
from dlapp.status import AppState, ContainerState, FinalStatus, check_transition
from dlapp.store.models import App, Container, Event, Meta


def _meta(session: Session, key: str) -> str | None:
    row = session.get(Meta, key)
    return row.value if row else None


def _set_meta(session: Session, key: str, value: str) -> None:
    row = session.get(Meta, key)
    if row is None:
        session.add(Meta(key=key, value=value))
    else:
        row.value = value


def cluster_timestamp(session: Session, now: float) -> int:
    """The cluster's start time in ms, fixed when the store is first used (YARN-style)."""
    value = _meta(session, "cluster_timestamp")
    if value is None:
        value = str(int(now * 1000))
        _set_meta(session, "cluster_timestamp", value)
        session.flush()
    return int(value)


def next_app_id(session: Session, now: float) -> tuple[str, int]:
    ts = cluster_timestamp(session, now)
    seq = int(session.scalar(select(func.coalesce(func.max(App.seq), 0))) or 0) + 1
    return f"application_{ts}_{seq:04d}", seq


@dataclass(frozen=True)
class NewApp:
    user: str
    spec: AppSpec
    workspace: str


def add_app(session: Session, new: NewApp, now: float, app_id: str, seq: int) -> App:
    spec = new.spec
    app = App(
        id=app_id,
        seq=seq,
        user=new.user,
        name=spec.name,
        queue=spec.queue,
        state=AppState.ACCEPTED.value,
        final_status=FinalStatus.UNDEFINED.value,
        diagnostics="",
        pending_reason="waiting for the scheduler",
        spec=json.dumps(spec.to_dict()),
        num_containers=spec.num_containers,
        cpus=spec.resources.cpus,
        memory_mb=spec.resources.memory_mb,
        gpus=spec.resources.gpus,
        workspace=new.workspace,
        kill_requested=None,
        attempt=0,
        submit_time=now,
    )
    session.add(app)
    session.add(
        Event(
            app_id=app_id,
            time=now,
            kind="state",
            from_state=None,
            to_state=AppState.ACCEPTED.value,
            reason=f"submitted by {new.user} to queue {spec.queue}",
        )
    )
    session.flush()
    return app


def app_spec(app: App) -> AppSpec:
    return AppSpec.from_dict(json.loads(app.spec))


def get_app(session: Session, app_id: str) -> App:
    app = session.get(App, app_id)
    if app is None:
        raise NotFoundError(f"no app {app_id}")
    return app


def list_apps(
    session: Session,
    user: str | None = None,
    queue: str | None = None,
    states: Sequence[AppState] = (),
    limit: int = 1000,
) -> list[App]:
    q = select(App)
    if user:
        q = q.where(App.user == user)
    if queue:
        q = q.where(App.queue == queue)
    if states:
        q = q.where(App.state.in_([s.value for s in states]))
    return list(session.scalars(q.order_by(App.seq.desc()).limit(limit)))


def pending_apps(session: Session) -> list[App]:
    q = select(App).where(App.state == AppState.ACCEPTED.value).order_by(App.seq)
    return list(session.scalars(q))


def running_apps(session: Session) -> list[App]:
    q = select(App).where(App.state == AppState.RUNNING.value).order_by(App.seq)
    return list(session.scalars(q))


def add_event(session: Session, app_id: str, kind: str, reason: str, now: float) -> None:
    session.add(Event(app_id=app_id, time=now, kind=kind, reason=reason))


def events(session: Session, app_id: str) -> list[Event]:
    return list(session.scalars(select(Event).where(Event.app_id == app_id).order_by(Event.id)))


def transition(
    session: Session,
    app: App,
    new: AppState,
    reason: str,
    now: float,
    final: FinalStatus = FinalStatus.UNDEFINED,
) -> None:
    """Move ``app`` to ``new`` through the transition table, recording the event."""
    current = AppState(app.state)
    check_transition(current, new)
    app.state = new.value
    if new is AppState.RUNNING:
        app.start_time = now
        app.pending_reason = ""
    elif new is AppState.FINISHED:
        app.final_status = final.value
        app.finish_time = now
        app.diagnostics = reason
        app.pending_reason = ""
    elif new is AppState.ACCEPTED:
        app.pending_reason = reason
    session.add(
        Event(
            app_id=app.id,
            time=now,
            kind="state",
            from_state=current.value,
            to_state=new.value,
            reason=reason if final is FinalStatus.UNDEFINED else f"{final.value}: {reason}",
        )
    )


def add_containers(session: Session, app: App, nodes: Sequence[tuple[str, str]]) -> None:
    """One STARTING container row per (node_id, node_name), for the app's current attempt."""
    for index, (node_id, node_name) in enumerate(nodes):
        session.add(
            Container(
                app_id=app.id,
                attempt=app.attempt,
                index=index,
                state=ContainerState.STARTING.value,
                node_id=node_id,
                node_name=node_name,
                gpu_ids="",
                diagnostics="",
            )
        )
    session.flush()


def current_containers(session: Session, app: App) -> list[Container]:
    q = (
        select(Container)
        .where(Container.app_id == app.id, Container.attempt == app.attempt)
        .order_by(Container.index)
    )
    return list(session.scalars(q))


def all_containers(session: Session, app: App) -> list[Container]:
    """Every container of every attempt of ``app``."""
    q = select(Container).where(Container.app_id == app.id).order_by(Container.id)
    return list(session.scalars(q))


def get_container(session: Session, app: App, index: int) -> Container:
    for c in current_containers(session, app):
        if c.index == index:
            return c
    raise NotFoundError(f"{app.id} has no container {index}")


def update_container(session: Session, container: Container, now: float, **fields: Any) -> None:
    for key, value in fields.items():
        setattr(container, key, value)
    if "state" in fields:
        add_event(
            session,
            container.app_id,
            "container",
            f"container {container.index} {fields['state']}"
            + (f" on {container.node_name}" if container.node_name else "")
            + (f": {fields['diagnostics']}" if fields.get("diagnostics") else ""),
            now,
        )


def allocations(session: Session) -> list[tuple[App, Container]]:
    """Containers currently holding resources (their app is RUNNING)."""
    q = (
        select(App, Container)
        .join(Container, (Container.app_id == App.id) & (Container.attempt == App.attempt))
        .where(App.state == AppState.RUNNING.value)
        .order_by(App.seq, Container.index)
    )
    return [(row[0], row[1]) for row in session.execute(q)]
