"""Admission: the queue heads and the snapshot the pure policy decides on, and its decisions
carried out (admit and start, preempt, or say why an app waits)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from dlapp.contract import ContainerCause, ContainerPlan
from dlapp.errors import DlappError
from dlapp.scheduler import (
    Admit,
    AppHead,
    Decision,
    Preempt,
    Resources,
    RunningApp,
    Snapshot,
    Wait,
)
from dlapp.scheduler.arrays import hold_over_limits
from dlapp.server import nodes, tenancy
from dlapp.server.context import Context
from dlapp.server.queue_service import app_request
from dlapp.server.scheduling import gpus
from dlapp.server.scheduling.effects import Effects
from dlapp.server.scheduling.plans import container_plans
from dlapp.server.scheduling.waiting import WaitingSet
from dlapp.server.views import iso
from dlapp.spec import AppSpec
from dlapp.status import AppState, ContainerState, FinalStatus, StopReason
from dlapp.store import arrays as array_store
from dlapp.store import repo
from dlapp.store.models import App, Container

logger = logging.getLogger(__name__)


class Specs:
    """Parsed specs by app id (a spec never changes)."""

    def __init__(self) -> None:
        self._by_id: dict[str, AppSpec] = {}

    def __call__(self, app: App) -> AppSpec:
        spec = self._by_id.get(app.id)
        if spec is None:
            spec = self._by_id[app.id] = repo.app_spec(app)
        return spec

    def of(self, session: Session, app_ids: Sequence[str]) -> dict[str, AppSpec]:
        """The specs of ``app_ids``, those not parsed yet read in one query."""
        missing = [i for i in app_ids if i not in self._by_id]
        for app_id, text in repo.specs_json(session, missing).items():
            self._by_id[app_id] = repo.parse_spec(text)
        return {i: self._by_id[i] for i in app_ids if i in self._by_id}


class Admission:
    def __init__(
        self,
        ctx: Context,
        effects: Effects,
        specs: Specs,
        claims: dict[str, str],
        commit: Callable[[Session], None],
        waiting: WaitingSet,
    ) -> None:
        self.ctx = ctx
        self.waiting = waiting  # the waiting apps' rows: their reasons are written through it
        self.effects = effects
        self.specs = specs
        self.claims = claims  # preempted app -> the queue its resources go to
        self.commit = commit  # fenced: raises when the lease was lost
        # waiting app -> (attempt, earlier runs, its head): made once while it waits
        self._heads: dict[str, tuple[int, tuple[float, float] | None, AppHead]] = {}

    # -- what decide() sees ---------------------------------------------------------------------

    def hold_array_members(
        self, session: Session, pending: Sequence[repo.Waiting]
    ) -> tuple[list[repo.Waiting], bool]:
        """The waiting apps that go on to ``decide``: all but the members over their array's
        running limit, which wait with the reason said (``scheduler.arrays``); and whether a
        reason changed."""
        ids = sorted({a.array_id for a in pending if a.array_id is not None})
        limits = array_store.limits(session, ids) if ids else {}
        if not limits:
            return list(pending), False
        running = array_store.running_members(session, list(limits))
        held = hold_over_limits([(a.id, a.array_id) for a in pending], running, limits)
        out: list[repo.Waiting] = []
        changed: dict[str, str] = {}
        for a in pending:
            reason = held.get(a.id)
            if reason is None:
                out.append(a)
            elif a.pending_reason != reason:
                changed[a.id] = reason
        self.waiting.write_reasons(session, changed)
        return out, bool(changed)

    def heads(self, session: Session, pending: Sequence[repo.Waiting]) -> list[AppHead]:
        """The waiting apps as ``decide`` sees them, with the service they have had and how
        long they have waited (the las / srtf orderings, promotion and reservations). A head
        is made once per app and attempt and kept while the app waits: nothing it holds
        changes in between."""
        runs = repo.earlier_runs(session, {a.id: a.attempt + 1 for a in pending if a.attempt})
        key = {a.id: (a.attempt, runs.get(a.id)) for a in pending}
        stale = [i for i, k in key.items() if self._heads.get(i, (None, None))[:2] != k]
        specs = self.specs.of(session, stale)
        kept: dict[str, tuple[int, tuple[float, float] | None, AppHead]] = {}
        for a in pending:
            attempt, ran = key[a.id]
            entry = self._heads.get(a.id)
            if entry is None or entry[:2] != (attempt, ran):
                if a.id not in specs:  # deleted since it was read: passed over
                    continue
                entry = (attempt, ran, self.head(a, specs[a.id], ran))
            kept[a.id] = entry
        self._heads = kept
        return [entry[2] for entry in kept.values()]

    def head(
        self,
        app: App | repo.Waiting,
        spec: AppSpec,
        runs: tuple[float, float] | None = None,
    ) -> AppHead:
        """``runs``: (seconds it ran before, when its last run ended), when it has run."""
        ran, last_end = runs if runs is not None else (0.0, None)
        return AppHead(
            app_id=app.id,
            user=app.user,
            queue=app.queue,
            seq=app.seq,
            request=app_request(app),
            num_containers=app.num_containers,
            include_nodes=spec.nodes.include,
            exclude_nodes=spec.nodes.exclude,
            priority=spec.priority,
            spread=spec.nodes.strategy == "spread",
            ran_s=ran,
            waiting_since=last_end if last_end is not None else app.submit_time,
            max_runtime_s=spec.max_runtime_s,
            gpu_types=spec.resources.gpu_type,
            mig=spec.resources.mig,
        )

    def snapshot(self, session: Session) -> Snapshot:
        allocs = repo.allocations(session)  # read once: the nodes' use and the running apps
        used: dict[str, Resources] = {}
        holds: dict[str, list[gpus.Held]] = {}
        for app, c in allocs:
            used[c.node_id] = used.get(c.node_id, Resources()) + app_request(app)
            holds.setdefault(c.node_id, []).append(
                gpus.held(app.gpus, self.specs(app), c.node_id, c.gpu_ids)
            )
        views = []
        held_back = nodes.states(session)  # drained or cordoned: no new apps
        for n in self.ctx.nodes(max_age_s=0.0):  # fresh: never place on a node just lost
            if not n.alive:
                continue
            free = n.total - used.get(n.node_id, Resources())
            views.append(
                gpus.node_view(n, holds.get(n.node_id, ()), free, n.node_id not in held_back)
            )
        return Snapshot(
            tuple(views),
            running=self._running(session, allocs),
            queues=self.ctx.queues.tree,
            now=self.ctx.clock(),
            placement=self.ctx.settings.placement,
        )

    def _running(
        self, session: Session, allocs: Sequence[tuple[App, Container]]
    ) -> tuple[RunningApp, ...]:
        placed: dict[str, list[str]] = {}
        devices: dict[str, list[tuple[int, ...]]] = {}
        apps: dict[str, App] = {}
        by_id = {n.node_id: n for n in self.ctx.nodes()}
        for app, c in allocs:
            apps[app.id] = app
            placed.setdefault(app.id, []).append(c.node_id)
            node = by_id.get(c.node_id)
            ids = c.gpu_ids.split(",") if c.gpu_ids else []
            devices.setdefault(app.id, []).append(
                gpus.device_indices(node, ids) if node is not None else ()
            )
        runs = repo.earlier_runs(session, {i: a.attempt for i, a in apps.items() if a.attempt > 1})
        out = []
        for app_id, app in apps.items():
            spec = self.specs(app)
            started = app.start_time or 0.0
            out.append(
                RunningApp(
                    app_id=app_id,
                    user=app.user,
                    queue=app.queue,
                    seq=app.seq,
                    request=app_request(app),
                    nodes=tuple(placed[app_id]),
                    priority=spec.priority,
                    started_at=started,
                    ends_by=None if spec.max_runtime_s is None else started + spec.max_runtime_s,
                    stopping=app.kill_requested is not None,
                    claimed_by=self.claims.get(app_id),
                    ran_before_s=runs.get(app_id, (0.0, 0.0))[0],
                    mig=spec.resources.mig,
                    devices=_known(devices[app_id], app_request(app).gpus, spec),
                )
            )
        return tuple(out)

    # -- carrying decisions out -----------------------------------------------------------------

    def apply(
        self,
        session: Session,
        pending: Sequence[repo.Waiting],
        decisions: Sequence[Decision],
        snapshot: Snapshot,
    ) -> None:
        by_id = {a.id: a for a in pending}
        reasons: dict[str, str] = {}  # only those that changed are written
        for d in decisions:
            if isinstance(d, Wait):
                waiting = by_id[d.app_id]
                reason = f"{d.reason} (position {d.position} in queue {waiting.queue})"
                if d.estimate is not None:
                    reason += f"; could start by {iso(d.estimate)}"
                if waiting.pending_reason != reason:
                    reasons[d.app_id] = reason
        self.waiting.write_reasons(session, reasons)
        admitted: list[_Admitted] = []
        holds: dict[str, list[gpus.Held]] | None = None  # GPUs held, per node: read once
        for d in decisions:
            if isinstance(d, Admit):
                app = session.get(App, d.app_id)
                if app is None:
                    continue
                if holds is None:
                    holds = self._holds(session)
                made = self._admit(session, app, d, snapshot, holds)
                if made is not None:
                    admitted.append(made)
            elif isinstance(d, Preempt):
                self._preempt(session, d)
        if admitted:
            # one commit for the cycle's admissions, fenced: a server that lost the lease never
            # starts anything; then every start
            self.commit(session)
            for made in admitted:
                self._start(session, made)

    def _preempt(self, session: Session, d: Preempt) -> None:
        app = session.get(App, d.app_id)
        if app is None or app.state != AppState.RUNNING.value or app.kill_requested:
            return
        now = self.ctx.clock()
        grace = self.ctx.queues.tree.preemption_grace_s
        app.kill_requested = StopReason.PREEMPT
        self.claims[app.id] = d.for_queue
        repo.add_event(session, app.id, "preemption", d.reason, now)
        repo.add_event(session, d.for_app, "preemption", f"{d.app_id} preempted for this app", now)
        notice = {"reason": "preempted", "detail": d.reason, "deadline": now + grace}
        self.effects.stop_app(app.id, app.attempt, grace, notice)

    def _holds(self, session: Session) -> dict[str, list[gpus.Held]]:
        """The GPUs each node's running apps hold now (the admitted ones added as they are)."""
        holds: dict[str, list[gpus.Held]] = {}
        for other, c in repo.allocations(session):
            holds.setdefault(c.node_id, []).append(
                gpus.held(other.gpus, self.specs(other), c.node_id, c.gpu_ids)
            )
        return holds

    def _admit(
        self,
        session: Session,
        app: App,
        admit: Admit,
        snapshot: Snapshot,
        holds: dict[str, list[gpus.Held]],
    ) -> _Admitted | None:
        """The app RUNNING with its containers and their GPUs (``holds`` gains them), not
        committed; None if it is not waiting any more."""
        # 1. still waiting? A kill may have finished it since this cycle read it (an array's
        #    queued members are killed in bulk): on PostgreSQL the row lock waits for that
        #    commit and reads it, so the kill is never overwritten (SQLite refuses the stale
        #    write itself)
        session.refresh(app, ["state"], with_for_update=True)
        if app.state != AppState.ACCEPTED.value:
            return None
        now = self.ctx.clock()
        spec = self.specs(app)
        app.attempt += 1
        names = {n.node_id: n.name for n in snapshot.nodes}
        repo.add_containers(session, app, [(n, names.get(n, n)) for n in admit.nodes])
        # 2. its GPUs: the devices decide chose, MIG instances free on its nodes; kept with its
        #    containers from now (its engine may report others when they start)
        infos = {n.node_id: n for n in self.ctx.nodes()}
        grants = gpus.grants(spec, [infos[n] for n in admit.nodes], admit.devices, holds)
        for c, grant in zip(repo.current_containers(session, app), grants, strict=True):
            c.gpu_ids = ",".join(grant.gpu_ids)
            holds.setdefault(c.node_id, []).append(gpus.held(app.gpus, spec, c.node_id, c.gpu_ids))
        repo.transition(
            session,
            app,
            AppState.RUNNING,
            f"admitted on {', '.join(names.get(n, n) for n in admit.nodes)}",
            now,
        )
        multi = tenancy.multi_user(self.ctx, session)
        account = tenancy.account_plan(self.ctx, session, app.user, multi)
        data = tenancy.data(self.ctx, multi)  # the account's uid, given now, is kept below
        node_names = [names.get(n, n) for n in admit.nodes]
        plans = container_plans(self.ctx, app, spec, node_names, admit.nodes, data, account, grants)
        return _Admitted(app, plans, list(admit.nodes), app_request(app), now)

    def _start(self, session: Session, made: _Admitted) -> None:
        """Start an admitted app's containers (committed); one that cannot start ends FAILED."""
        app = made.app
        try:
            self.ctx.executor.start(made.plans, made.nodes, made.request)
        except (DlappError, OSError, ValueError) as exc:
            logger.exception("could not start %s", app.id)
            for c in repo.current_containers(session, app):
                repo.update_container(
                    session,
                    c,
                    made.now,
                    state=ContainerState.LOST.value,
                    diagnostics=str(exc),
                    cause=ContainerCause.LOST,
                )
            repo.transition(
                session,
                app,
                AppState.FINISHED,
                f"could not start: {exc}",
                made.now,
                FinalStatus.FAILED,
            )


@dataclass(frozen=True)
class _Admitted:
    """An app admitted this cycle, to start once the admissions are committed."""

    app: App
    plans: list[ContainerPlan]
    nodes: list[str]
    request: Resources  # each container's
    now: float


def _known(
    devices: list[tuple[int, ...]], gpus_each: float, spec: AppSpec
) -> tuple[tuple[int, ...], ...]:
    """Each container's device indices, when every one of them is known (else ``()``: the
    policy then counts them where they most likely are)."""
    if spec.resources.mig is not None or gpus_each <= 0:
        return ()
    count = 1 if gpus_each < 1 else round(gpus_each)
    return tuple(devices) if all(len(d) == count for d in devices) else ()
