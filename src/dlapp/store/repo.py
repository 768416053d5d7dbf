"""Repository functions over a Session: every state change goes through ``transition``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import String, cast, func, or_, select, update
from sqlalchemy.orm import Session, lazyload, undefer

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


def next_id(session: Session, now: float, prefix: str, seq: Any) -> tuple[str, int]:
    """``<prefix>_<cluster start ms>_<seq:04d>`` and its sequence number: one past the largest
    of ``seq`` (a table's sequence column)."""
    ts = cluster_timestamp(session, now)
    n = int(session.scalar(select(func.coalesce(func.max(seq), 0))) or 0) + 1
    return f"{prefix}_{ts}_{n:04d}", n


def next_app_id(session: Session, now: float) -> tuple[str, int]:
    return next_id(session, now, "application", App.seq)


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
        gpus=spec.resources.gpu_share,
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
    return parse_spec(app.spec)


def parse_spec(stored: str) -> AppSpec:
    """An app's spec from the JSON kept in its row (``App.spec``)."""
    return AppSpec.from_dict(json.loads(stored))


def get_app(session: Session, app_id: str) -> App:
    app = session.get(App, app_id)
    if app is None:
        raise NotFoundError(f"no app {app_id}")
    return app


@dataclass(frozen=True)
class AppFilter:
    """Which apps a list shows, newest first; every field given narrows it. ``visible_to``
    is what a caller may see: the apps of ``(user, queues)``'s user or in one of its queues."""

    user: str | None = None
    queue: str | None = None
    states: Sequence[AppState] = ()
    visible_to: tuple[str, Sequence[str]] | None = None
    array: str | None = None  # only this array's members


@dataclass(frozen=True)
class AppPage:
    apps: list[App]
    next_before: int | None  # pass as ``before`` for the next page; None: this was the last


def apps_page(
    session: Session, where: AppFilter, limit: int = 1000, before: int | None = None
) -> AppPage:
    """One page of apps (``seq`` below ``before``), newest first; one query for the apps and
    one per relationship for all of them (their containers), whatever the page size."""
    if limit < 1:
        raise ValueError(f"a page holds at least one app, not {limit}")
    q = select(App)
    if where.user:
        q = q.where(App.user == where.user)
    if where.queue:
        q = q.where(App.queue == where.queue)
    if where.states:
        q = q.where(App.state.in_([s.value for s in where.states]))
    if where.array:
        q = q.where(App.array_id == where.array)
    if where.visible_to is not None:
        owner, queues = where.visible_to
        q = q.where(or_(App.user == owner, App.queue.in_(list(queues))))
    if before is not None:
        q = q.where(App.seq < before)
    rows = list(session.scalars(q.order_by(App.seq.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return AppPage(rows, rows[-1].seq if more else None)


def list_apps(
    session: Session,
    user: str | None = None,
    queue: str | None = None,
    states: Sequence[AppState] = (),
    limit: int = 1000,
) -> list[App]:
    return apps_page(session, AppFilter(user, queue, states), limit).apps


@dataclass(frozen=True, slots=True)
class Live:
    """A queued or running app's columns that the queues view adds up (``live_apps``)."""

    queue: str
    state: str
    user: str
    cpus: float
    memory_mb: int
    gpus: float
    num_containers: int


_LIVE_COLUMNS = tuple(getattr(App, f.name) for f in fields(Live))


def live_apps(session: Session) -> list[Live]:
    """Every queued or running app, newest first, as plain rows (no ORM objects: 9,000 of
    those took a tenth of a second)."""
    states = (AppState.ACCEPTED.value, AppState.RUNNING.value)
    q = select(*_LIVE_COLUMNS).where(App.state.in_(states)).order_by(App.seq.desc())
    return [Live(*row) for row in session.execute(q)]


def oldest_waiting(session: Session) -> dict[str, float]:
    """Each queue's oldest waiting app's submission time (one grouped query)."""
    q = (
        select(App.queue, func.min(App.submit_time))
        .where(App.state == AppState.ACCEPTED.value)
        .group_by(App.queue)
    )
    return {queue: float(t) for queue, t in session.execute(q)}


def count_apps(session: Session, states: Sequence[AppState]) -> dict[AppState, int]:
    """How many apps are in each of ``states`` (one grouped count, no rows loaded)."""
    q = (
        select(App.state, func.count())
        .where(App.state.in_([s.value for s in states]))
        .group_by(App.state)
    )
    found = {AppState(state): int(n) for state, n in session.execute(q)}
    return {s: found.get(s, 0) for s in states}


@dataclass(frozen=True, slots=True)
class Waiting:
    """A waiting app's columns that the scheduler reads every cycle (``waiting_apps``)."""

    id: str
    seq: int
    user: str
    queue: str
    num_containers: int
    cpus: float
    memory_mb: int
    gpus: float
    attempt: int
    submit_time: float
    pending_reason: str
    array_id: str | None


_WAITING_COLUMNS = tuple(getattr(App, f.name) for f in fields(Waiting))


def waiting_apps(session: Session) -> list[Waiting]:
    """The waiting apps, oldest first, as plain rows, read whole: the rows the scheduler
    keeps between cycles (``scheduling.waiting``, which reads only those it has not seen) are
    always these."""
    q = select(*_WAITING_COLUMNS).where(App.state == AppState.ACCEPTED.value).order_by(App.seq)
    return [Waiting(*row) for row in session.execute(q)]


def waiting_keys(session: Session) -> list[tuple[int, int]]:
    """(seq, attempt) of every waiting app, in no order: read from an index alone
    (``ix_apps_state_queue``), as one string made by the database ("seq:attempt,...").

    One row, not one a waiting app: the driver lets go of the GIL for every row it fetches, and
    while the API's threads are busy each row then waits for the GIL again (9,000 rows: 4.5 ms
    alone, ~490 ms beside one busy thread; this string: 2.3 and ~7 ms)."""
    pair = cast(App.seq, String) + ":" + cast(App.attempt, String)
    q = select(func.aggregate_strings(pair, ",")).where(App.state == AppState.ACCEPTED.value)
    joined = session.scalar(q)
    out: list[tuple[int, int]] = []
    for key in joined.split(",") if joined else ():
        seq, _, attempt = key.partition(":")
        out.append((int(seq), int(attempt)))
    return out


def waiting_by_seq(session: Session, seqs: Sequence[int]) -> list[Waiting]:
    """The rows of those of the apps numbered ``seqs`` that wait, in no order."""
    out: list[Waiting] = []
    for i in range(0, len(seqs), 500):
        chunk = list(seqs[i : i + 500])
        q = select(*_WAITING_COLUMNS).where(
            App.seq.in_(chunk), App.state == AppState.ACCEPTED.value
        )
        out.extend(Waiting(*row) for row in session.execute(q))
    return out


def set_pending_reasons(session: Session, reasons: dict[str, str]) -> None:
    """Write the waiting apps' new reasons (app id -> reason) in one statement."""
    if reasons:
        session.execute(update(App), [{"id": k, "pending_reason": v} for k, v in reasons.items()])


def specs_json(session: Session, app_ids: Sequence[str]) -> dict[str, str]:
    """The stored spec JSON of each of ``app_ids`` that exists."""
    out: dict[str, str] = {}
    for i in range(0, len(app_ids), 500):
        chunk = list(app_ids[i : i + 500])
        out.update(
            (app_id, text)
            for app_id, text in session.execute(select(App.id, App.spec).where(App.id.in_(chunk)))
        )
    return out


def running_apps(session: Session) -> list[App]:
    q = select(App).where(App.state == AppState.RUNNING.value).order_by(App.seq)
    return list(session.scalars(q))


_ENDED = [s.value for s in ContainerState if s.is_terminal()]


def running_to_stop(session: Session) -> list[App]:
    """The running apps asked to stop (kill, softkill, eviction, preemption, a gang's end),
    by ``seq``: the scheduler's cycle looks at these, not at every running app."""
    q = (
        select(App)
        .where(App.state == AppState.RUNNING.value, App.kill_requested.is_not(None))
        .order_by(App.seq)
    )
    return list(session.scalars(q))


def running_may_settle(session: Session) -> list[App]:
    """The running apps whose current attempt may have ended, by ``seq``: one of its
    containers has ended (or it has none). Every other running app still runs all its
    containers, so no cycle has anything to settle for it; at thousands running, reading each
    one's containers (two queries an app) was most of a cycle."""
    current = (Container.app_id == App.id) & (Container.attempt == App.attempt)
    one_ended = select(Container.id).where(current, Container.state.in_(_ENDED)).exists()
    any_one = select(Container.id).where(current).exists()
    q = (
        select(App)
        .where(App.state == AppState.RUNNING.value, or_(one_ended, ~any_one))
        .order_by(App.seq)
    )
    return list(session.scalars(q))


def running_ids(session: Session) -> set[str]:
    return set(session.scalars(select(App.id).where(App.state == AppState.RUNNING.value)))


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
        .options(undefer(Container.cause))
        .where(Container.app_id == app.id, Container.attempt == app.attempt)
        .order_by(Container.index)
    )
    return list(session.scalars(q))


def all_containers(session: Session, app: App) -> list[Container]:
    """Every container of every attempt of ``app``."""
    q = (
        select(Container)
        .options(undefer(Container.cause))
        .where(Container.app_id == app.id)
        .order_by(Container.id)
    )
    return list(session.scalars(q))


def get_container(session: Session, app: App, index: int) -> Container:
    for c in current_containers(session, app):
        if c.index == index:
            return c
    raise NotFoundError(f"{app.id} has no container {index}")


def update_container(session: Session, container: Container, now: float, **fields: Any) -> None:
    """Set the container's fields; a change of state is an event (a taken-over container
    reported RUNNING again is not: it ran once)."""
    moved = "state" in fields and fields["state"] != container.state
    for key, value in fields.items():
        setattr(container, key, value)
    if moved:
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
        # the apps' own columns only: their containers and usage rows (loaded with every app
        # otherwise) are read when asked for
        .options(lazyload(App.containers), lazyload(App.gpu_usage))
    )
    return [(row[0], row[1]) for row in session.execute(q)]


def earlier_runs(session: Session, before: dict[str, int]) -> dict[str, tuple[float, float]]:
    """(seconds it ran, when its last run ended) over each app's attempts numbered below
    ``before[app_id]``, from the first container of each; only apps that have run appear. The
    scheduler's las ordering reads the service an app has had, its promotion how long it has
    waited since."""
    if not before:
        return {}
    q = select(Container.app_id, Container.attempt, Container.start_time, Container.end_time).where(
        Container.app_id.in_(list(before)),
        Container.index == 0,
        Container.start_time.is_not(None),
    )
    out: dict[str, tuple[float, float]] = {}
    for app_id, attempt, start, end in session.execute(q):
        if attempt >= before[app_id] or start is None or end is None:
            continue
        ran, last = out.get(app_id, (0.0, 0.0))
        out[app_id] = (ran + max(0.0, end - start), max(last, end))
    return out
