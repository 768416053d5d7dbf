"""The scheduling cycle: reconcile what happened, then admit what fits.

One cycle, as a recipe:
  1. take the executor's reports and record them (containers started, exited, lost);
  2. finish apps whose containers have all ended, and end the gang of any that failed;
  3. take the queue heads and an immutable snapshot of capacity, usage and the queue tree;
  4. decide (pure policy);
  5. apply: start admitted apps, stop preempted ones (they go back to their queue), write
     each waiting app's reason, place in line and estimated start.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.orm import Session

from dlapp.errors import DlappError
from dlapp.executor import NODE_LOST, NOT_STARTED, Report
from dlapp.gpu_usage import MeterPlan
from dlapp.scheduler import (
    Admit,
    AppHead,
    NodeView,
    Preempt,
    Resources,
    RunningApp,
    Snapshot,
    Wait,
    decide,
)
from dlapp.server import nodes, tenancy
from dlapp.server.context import Context
from dlapp.server.views import iso
from dlapp.spec import AppSpec
from dlapp.staging import LINE_PREFIXES
from dlapp.status import AppState, ContainerState, FinalStatus
from dlapp.store import lease as lease_store
from dlapp.store import repo
from dlapp.store.models import App, Container
from dlapp.stores import DataConfig
from dlapp.supervisor import KILLED_BY_REQUEST, ContainerPlan
from dlapp.unix_accounts import AccountPlan

logger = logging.getLogger(__name__)
ORPHAN_SWEEP_CYCLES = 20  # remove orphan containers every this many cycles
START_TIMEOUT_REQUEUES = 1  # supervisors never up: requeued this often, then FAILED


class Fenced(Exception):
    """This server lost the scheduler lease: what it was about to write was rolled back."""


class Scheduler:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease: lease_store.Lease | None = None
        self._recovering = False  # running apps still to take over (or requeue)
        self._after_commit: list[Callable[[], None]] = []  # executor calls, once committed
        self._stopping: set[tuple[str, int]] = set()  # (app, attempt) told to stop
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self.cycles = 0
        self._specs: dict[str, AppSpec] = {}  # parsed specs by app id (specs never change)
        self._claims: dict[str, str] = {}  # preempted app -> the queue its resources go to
        self.observe_cycle: Callable[[float], None] = lambda seconds: None  # metrics hook
        self.after_cycle: Callable[[], None] = lambda: None  # usage_monitor.UsageMonitor.tick

    # -- the loop -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dlapp-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                self.step()
            except Fenced:
                logger.warning("lost the scheduler lease; standing by")
            except Exception:
                logger.exception("scheduling cycle failed")
            self.observe_cycle(time.perf_counter() - started)
            try:
                self.after_cycle()
            except Exception:
                logger.exception("recording GPU usage and queue samples failed")
            self._wake.wait(self.ctx.settings.schedule_interval_s)
            self._wake.clear()

    # -- leadership ---------------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self.lease is not None

    def step(self) -> None:
        """Lead (taking the lease when it is free or expired, then taking over the running
        apps), or stand by while another server leads."""
        if self.lease is None:
            with self.ctx.sessions() as session:
                ttl = self.ctx.settings.lease_ttl_s
                self.lease = lease_store.acquire(session, self.holder, self.ctx.clock(), ttl)
            if self.lease is None:
                return
            logger.info("scheduling as %s (lease epoch %d)", self.holder, self.lease.epoch)
            self._recovering = True
        if self._recovering:  # until it has gone through: no app left RUNNING unheld
            self.recover()
            self._recovering = False
        self.cycle()

    def _commit(self, session: Session) -> None:
        """Commit, renewing the lease in the same transaction; then run the executor calls
        that wait on this commit. A lost lease rolls everything back (fencing)."""
        assert self.lease is not None, "only the lease holder writes scheduling decisions"
        renewed = lease_store.renew(
            session, self.lease, self.ctx.clock(), self.ctx.settings.lease_ttl_s
        )
        if renewed is None:
            session.rollback()
            self._after_commit.clear()
            self.lease = None
            self.ctx.executor.forget()
            raise Fenced()
        self.lease = renewed
        session.commit()
        calls, self._after_commit = self._after_commit, []
        for call in calls:
            call()

    def _stop_app(
        self, app_id: str, attempt: int, grace: float, notice: dict[str, Any] | None
    ) -> None:
        """Stop an app's containers once the decision is committed (once per attempt)."""
        if (app_id, attempt) in self._stopping:
            return
        self._stopping.add((app_id, attempt))
        self._after_commit.append(lambda: self.ctx.executor.stop(app_id, grace, notice))

    def _apply_kills(self, session: Session) -> None:
        """Kills and softkills asked through any server, carried out by the leader."""
        for app in repo.running_apps(session):
            if app.kill_requested in ("kill", "softkill", "evict"):
                soft = app.kill_requested != "kill"
                grace = self.ctx.settings.softkill_grace_s if soft else 0.0
                now = self.ctx.clock()
                reason = "evicted" if app.kill_requested == "evict" else app.kill_requested
                notice = {"reason": reason, "deadline": now + grace} if soft else None
                self._stop_app(app.id, app.attempt, grace, notice)

    def cycle(self) -> None:
        self.ctx.queues.reload()  # a changed queue file takes effect now; a bad one is refused
        with self.ctx.sessions() as session:
            # 1-2. reconcile
            for report in self.ctx.executor.poll():
                self._record(session, report)
            self._apply_kills(session)
            self._commit(session)
            self._finish_ended(session)
            self._commit(session)
            if self.cycles % ORPHAN_SWEEP_CYCLES == 0:  # on start, then every few cycles
                self.remove_orphans(session)
            # 3. heads and snapshot
            pending = repo.pending_apps(session)
            if pending:
                heads = [self._head(a) for a in pending]
                snapshot = self._snapshot(session)
                # 4. decide
                decisions = decide(heads, snapshot)
                # 5. apply
                by_id = {a.id: a for a in pending}
                for d in decisions:
                    if isinstance(d, Admit):
                        self._admit(session, by_id[d.app_id], d, snapshot)
                    elif isinstance(d, Wait):
                        app = by_id[d.app_id]
                        reason = f"{d.reason} (position {d.position} in queue {app.queue})"
                        if d.estimate is not None:
                            reason += f"; could start by {iso(d.estimate)}"
                        if app.pending_reason != reason:
                            app.pending_reason = reason
                    elif isinstance(d, Preempt):
                        self._preempt(session, d)
                self._commit(session)
        self.cycles += 1

    # -- recovery -------------------------------------------------------------------------------

    def remove_orphans(self, session: Session) -> None:
        """Remove, on every node, this cluster's containers whose app is not RUNNING."""
        running = {a.id for a in repo.running_apps(session)}
        self.ctx.executor.remove_orphans(self.ctx.settings.container_policy, running)

    def recover(self) -> None:
        """RUNNING apps this executor does not hold (a restart) go back to their queue."""
        with self.ctx.sessions() as session:
            now = self.ctx.clock()
            for app in repo.running_apps(session):
                if self.ctx.executor.holds(app.id):
                    continue
                nodes = [c.node_id for c in repo.current_containers(session, app)]
                if nodes and self.ctx.executor.adopt(app.id, app.attempt, nodes):
                    repo.add_event(session, app.id, "info", "taken over by a restarted server", now)
                    if app.kill_requested in ("gang", "preempt"):
                        self._stop_app(app.id, app.attempt, 0.0, None)  # asked before
                    continue
                for c in repo.current_containers(session, app):
                    if not ContainerState(c.state).is_terminal():
                        repo.update_container(
                            session,
                            c,
                            now,
                            state=ContainerState.LOST.value,
                            end_time=now,
                            diagnostics="lost when the server restarted",
                        )
                if app.kill_requested in ("kill", "softkill"):
                    repo.transition(
                        session, app, AppState.FINISHED, "killed", now, FinalStatus.KILLED
                    )
                else:
                    repo.transition(
                        session,
                        app,
                        AppState.ACCEPTED,
                        "requeued: its containers were lost when the server restarted",
                        now,
                    )
            self._commit(session)

    # -- reconcile ------------------------------------------------------------------------------

    def _record(self, session: Session, report: Report) -> None:
        app = session.get(App, report.app_id)
        if app is None or app.attempt != report.attempt:
            return
        now = self.ctx.clock()
        c = repo.get_container(session, app, report.index)
        if report.kind == "started":
            if report.info is None:
                return  # taken over, and it never started: its exit report says why
            if report.diagnostics:
                repo.add_event(
                    session,
                    app.id,
                    "container",
                    f"container {c.index} could not start: {report.diagnostics}",
                    now,
                )
                return
            info = report.info
            if c.state != ContainerState.RUNNING.value:  # not a taken-over one's again
                _add_notes(session, app.id, c.index, info.get("notes", ()))
            repo.update_container(
                session,
                c,
                now,
                state=ContainerState.RUNNING.value,
                node_name=str(info.get("node_name", c.node_name)),
                gpu_ids=",".join(str(g) for g in info.get("gpu_ids", [])),
                pid=info.get("pid"),
                start_time=float(info.get("start_time", now)),
            )
        elif report.kind == "exited" and report.result is not None:
            r = report.result
            _add_notes(session, app.id, c.index, r.notes)
            repo.update_container(
                session,
                c,
                now,
                state=ContainerState.EXITED.value,
                exit_code=r.exit_code,
                end_time=r.end_time,
                log_location=r.log_location,
                diagnostics=r.diagnostics,
            )
        else:
            repo.update_container(
                session,
                c,
                now,
                state=ContainerState.LOST.value,
                end_time=now,
                diagnostics=report.diagnostics or "lost",
            )

    def _finish_ended(self, session: Session) -> None:
        now = self.ctx.clock()
        for app in repo.running_apps(session):
            containers = repo.current_containers(session, app)
            failed = [c for c in containers if _failed(c)]
            ended = all(ContainerState(c.state).is_terminal() for c in containers)
            lost_node = next((c for c in containers if _lost_with_node(c)), None)
            not_up = next((c for c in containers if _not_started(c)), None)
            if ended and app.kill_requested in ("preempt", "evict"):
                # back to its queue, keeping its place (seq); a preemption is no failure
                app.kill_requested = None
                self._claims.pop(app.id, None)
                repo.transition(session, app, AppState.ACCEPTED, "requeued after preemption", now)
            elif ended and not_up is not None and app.kill_requested in (None, "gang"):
                # never came up (start_timeout_s): the cluster's fault, so requeued, but a
                # placement that never works must not loop forever
                app.kill_requested = None
                times = _start_timeouts(session, app)
                if times <= START_TIMEOUT_REQUEUES:
                    reason = (
                        f"requeued: container {not_up.index} {not_up.diagnostics}; "
                        "not counted against max_attempts"
                    )
                    repo.transition(session, app, AppState.ACCEPTED, reason, now)
                else:
                    reason = f"container {not_up.index} {not_up.diagnostics} ({times} attempts)"
                    repo.transition(
                        session, app, AppState.FINISHED, reason, now, FinalStatus.FAILED
                    )
            elif ended and lost_node is not None and app.kill_requested in (None, "gang"):
                # an infrastructure failure: back to its queue, not counted against max_attempts
                app.kill_requested = None
                repo.transition(
                    session,
                    app,
                    AppState.ACCEPTED,
                    f"requeued: container {lost_node.index} was lost with its node "
                    f"({lost_node.diagnostics}); not counted against max_attempts",
                    now,
                )
            elif ended and self._retry(session, app, containers):
                app.kill_requested = None
                failures = _own_failures(session, app)
                repo.transition(
                    session,
                    app,
                    AppState.ACCEPTED,
                    f"retrying: attempt {failures} of {self._spec(app).max_attempts} failed "
                    f"({_outcome(app, containers)[1]})",
                    now,
                )
            elif ended:
                final, reason = _outcome(app, containers)
                repo.transition(session, app, AppState.FINISHED, reason, now, final)
            elif failed and not app.kill_requested:
                # gang: one container failing ends the others
                app.kill_requested = "gang"
                why = failed[0].diagnostics or f"exited with code {failed[0].exit_code}"
                repo.add_event(
                    session,
                    app.id,
                    "info",
                    f"container {failed[0].index} failed ({why}); stopping the others",
                    now,
                )
                self._stop_app(app.id, app.attempt, 0.0, None)

    def _retry(self, session: Session, app: App, containers: Sequence[Container]) -> bool:
        """An app that failed by itself runs again while it has attempts left."""
        if app.kill_requested in ("kill", "softkill"):
            return False
        if _outcome(app, containers)[0] is not FinalStatus.FAILED:
            return False
        if not any(_own_failure(c) for c in containers):
            return False  # e.g. its supervisor died: that ends the app, as FAILED
        return _own_failures(session, app) < self._spec(app).max_attempts

    # -- admit ----------------------------------------------------------------------------------

    def _spec(self, app: App) -> AppSpec:
        spec = self._specs.get(app.id)
        if spec is None:
            spec = self._specs[app.id] = repo.app_spec(app)
        return spec

    def _head(self, app: App) -> AppHead:
        spec = self._spec(app)
        return AppHead(
            app_id=app.id,
            user=app.user,
            queue=app.queue,
            seq=app.seq,
            request=Resources(app.cpus, app.memory_mb, app.gpus),
            num_containers=app.num_containers,
            include_nodes=spec.nodes.include,
            exclude_nodes=spec.nodes.exclude,
            priority=spec.priority,
            spread=spec.nodes.strategy == "spread",
        )

    def _running(self, session: Session) -> tuple[RunningApp, ...]:
        nodes: dict[str, list[str]] = {}
        apps: dict[str, App] = {}
        for app, c in repo.allocations(session):
            apps[app.id] = app
            nodes.setdefault(app.id, []).append(c.node_id)
        out = []
        for app_id, app in apps.items():
            spec = self._spec(app)
            started = app.start_time or 0.0
            out.append(
                RunningApp(
                    app_id=app_id,
                    user=app.user,
                    queue=app.queue,
                    seq=app.seq,
                    request=Resources(app.cpus, app.memory_mb, app.gpus),
                    nodes=tuple(nodes[app_id]),
                    priority=spec.priority,
                    started_at=started,
                    ends_by=None if spec.max_runtime_s is None else started + spec.max_runtime_s,
                    stopping=app.kill_requested is not None,
                    claimed_by=self._claims.get(app_id),
                )
            )
        return tuple(out)

    def _preempt(self, session: Session, d: Preempt) -> None:
        app = session.get(App, d.app_id)
        if app is None or app.state != AppState.RUNNING.value or app.kill_requested:
            return
        now = self.ctx.clock()
        grace = self.ctx.queues.tree.preemption_grace_s
        app.kill_requested = "preempt"
        self._claims[app.id] = d.for_queue
        repo.add_event(session, app.id, "preemption", d.reason, now)
        repo.add_event(session, d.for_app, "preemption", f"{d.app_id} preempted for this app", now)
        notice = {"reason": "preempted", "detail": d.reason, "deadline": now + grace}
        self._stop_app(app.id, app.attempt, grace, notice)

    def _snapshot(self, session: Session) -> Snapshot:
        used: dict[str, Resources] = {}
        for app, c in repo.allocations(session):
            used[c.node_id] = used.get(c.node_id, Resources()) + Resources(
                app.cpus, app.memory_mb, app.gpus
            )
        views = []
        held_back = nodes.states(session)  # drained or cordoned: no new apps
        for n in self.ctx.nodes(max_age_s=0.0):  # fresh: never place on a node just lost
            if not n.alive:
                continue
            free = n.total - used.get(n.node_id, Resources())
            views.append(
                NodeView(n.node_id, n.name, n.total, _clamp(free), n.node_id not in held_back)
            )
        return Snapshot(
            tuple(views),
            running=self._running(session),
            queues=self.ctx.queues.tree,
            now=self.ctx.clock(),
        )

    def _admit(self, session: Session, app: App, admit: Admit, snapshot: Snapshot) -> None:
        now = self.ctx.clock()
        spec = repo.app_spec(app)
        app.attempt += 1
        names = {n.node_id: n.name for n in snapshot.nodes}
        repo.add_containers(session, app, [(n, names.get(n, n)) for n in admit.nodes])
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
        self._commit(session)  # fenced: a server that lost the lease never starts anything
        node_names = [names.get(n, n) for n in admit.nodes]
        plans = _plans(self.ctx, app, spec, node_names, admit.nodes, data, account)
        try:
            self.ctx.executor.start(
                plans, admit.nodes, Resources(app.cpus, app.memory_mb, app.gpus)
            )
        except (DlappError, OSError, ValueError) as exc:
            logger.exception("could not start %s", app.id)
            for c in repo.current_containers(session, app):
                repo.update_container(
                    session, c, now, state=ContainerState.LOST.value, diagnostics=str(exc)
                )
            repo.transition(
                session, app, AppState.FINISHED, f"could not start: {exc}", now, FinalStatus.FAILED
            )


def rendezvous(app_id: str, attempt: int, node_names: list[str]) -> list[dict[str, str]]:
    """torch.distributed's environment for each container of a gang: one process per
    container; container 0's node is the master; the port is derived from the app and attempt
    (29500-30499) so every container knows it before any starts."""
    port = 29500 + zlib.crc32(f"{app_id}:{attempt}".encode()) % 1000
    node_order = list(dict.fromkeys(node_names))
    seen: dict[str, int] = {}
    out = []
    for rank, node in enumerate(node_names):
        out.append(
            {
                "MASTER_ADDR": node_names[0],
                "MASTER_PORT": str(port),
                "WORLD_SIZE": str(len(node_names)),
                "RANK": str(rank),
                "LOCAL_RANK": str(seen.get(node, 0)),
                "NODE_RANK": str(node_order.index(node)),
            }
        )
        seen[node] = seen.get(node, 0) + 1
    return out


def _plans(
    ctx: Context,
    app: App,
    spec: AppSpec,
    node_names: list[str],
    node_ids: Sequence[str],
    data_config: DataConfig,
    account: AccountPlan | None,
) -> list[ContainerPlan]:
    s = ctx.settings
    env = rendezvous(app.id, app.attempt, node_names)
    # the same for every container of the app: worked out once (data_config resolves paths)
    spec_dict, data = spec.to_dict(), data_config.to_dict()
    account_dict = account.to_dict() if account else {}
    container = s.container_policy.model_dump(mode="json")
    meter = MeterPlan(s.gpu_sampler, s.gpu_sample_interval_s, s.gpu_idle_below).to_dict()
    return [
        ContainerPlan(
            app_id=app.id,
            attempt=app.attempt,
            index=i,
            num_containers=app.num_containers,
            spec=spec_dict,
            workspace_tarball=app.workspace,
            artifact_root=str(s.artifacts),
            work_root=str(s.work),
            checkpoint_root=str(s.checkpoints),
            max_files=s.workspace_max_files,
            max_bytes=s.workspace_max_mb * 1024 * 1024,
            rendezvous=env[i],
            node_id=node_ids[i],
            data=data,
            container=container,
            meter=meter,
            account=account_dict,
        )
        for i in range(app.num_containers)
    ]


def _add_notes(session: Session, app_id: str, index: int, notes: Sequence[Sequence[Any]]) -> None:
    """A supervisor's lines (staging totals, progress and summaries; stops) as the app's
    events, at the times the node wrote them."""
    for at, line in notes:
        kind = "staging" if str(line).startswith(LINE_PREFIXES) else "container"
        repo.add_event(session, app_id, kind, f"container {index}: {line}", float(at))


def _clamp(r: Resources) -> Resources:
    return Resources(max(r.cpus, 0.0), max(r.memory_mb, 0), max(r.gpus, 0))


def _lost_with_node(c: Container) -> bool:
    return c.state == ContainerState.LOST.value and c.diagnostics.startswith(NODE_LOST)


def _not_started(c: Container) -> bool:
    return c.state == ContainerState.LOST.value and c.diagnostics.startswith(NOT_STARTED)


def _start_timeouts(session: Session, app: App) -> int:
    """Attempts of the app whose supervisors did not come up within start_timeout_s."""
    return len({c.attempt for c in repo.all_containers(session, app) if _not_started(c)})


def _own_failures(session: Session, app: App) -> int:
    """Attempts that failed by the app's own doing: a container exited non-zero (or could
    not start) and was not killed; a lost node or a preemption is never the app's failure."""
    return len({c.attempt for c in repo.all_containers(session, app) if _own_failure(c)})


def _own_failure(c: Container) -> bool:
    return (
        c.state == ContainerState.EXITED.value
        and c.exit_code != 0
        and c.diagnostics != KILLED_BY_REQUEST
    )


def _failed(c: Container) -> bool:
    return ContainerState(c.state) is ContainerState.LOST or (
        c.state == ContainerState.EXITED.value and c.exit_code != 0
    )


def _outcome(app: App, containers: Sequence[Container]) -> tuple[FinalStatus, str]:
    if app.kill_requested in ("kill", "softkill"):
        return FinalStatus.KILLED, f"{app.kill_requested}ed by request"
    failed = [c for c in containers if _failed(c)]
    if not failed:
        return FinalStatus.SUCCEEDED, "all containers exited with code 0"
    first = min(failed, key=lambda c: (c.end_time or 0, c.index))
    why = first.diagnostics or f"exited with code {first.exit_code}"
    return FinalStatus.FAILED, f"container {first.index} {why}" if not why.startswith(
        "container"
    ) else why
