"""Whole scheduling cycles in one process: the real store, loop, reconcile and admission, with a
scripted executor and a fixed clock (as Kueue tests ``schedule()``). The end-to-end tests run
the same loop over real supervisors and processes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dlapp.config import ContainerPolicy, ServerSettings
from dlapp.contract import ContainerCause, ContainerPlan, ContainerResult, stop_diagnostics
from dlapp.executor import Executor, NodeInfo, Report
from dlapp.scheduler import Resources
from dlapp.server.context import Context
from dlapp.server.queue_config import QueueConfig
from dlapp.server.scheduling.loop import Scheduler
from dlapp.server.usage_monitor import record_usage
from dlapp.spec import AppSpec
from dlapp.status import AppState, ContainerState, FinalStatus, StopReason
from dlapp.store import repo
from dlapp.store.db import make_engine, migrate, session_factory
from dlapp.store.models import App
from spec_builders import make_spec

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class ScriptedExecutor(Executor):
    """One node; starts nothing. The test scripts what each poll reports."""

    total: Resources = field(default_factory=lambda: Resources(8, 16384, 2))
    started: list[ContainerPlan] = field(default_factory=list)
    stopped: list[tuple[str, float, dict[str, Any] | None]] = field(default_factory=list)
    reports: list[Report] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def _nodes(self) -> list[NodeInfo]:
        return [NodeInfo("node-a", "a", self.total, gpu_ids=("0", "1"))]

    def _start(
        self, plans: Sequence[ContainerPlan], node_ids: Sequence[str], request: Resources
    ) -> None:
        self.started.extend(plans)

    def _stop(self, app_id: str, grace: float, notice: dict[str, Any] | None) -> None:
        self.stopped.append((app_id, grace, notice))

    def _poll(self) -> list[Report]:
        out, self.reports = self.reports, []
        return out

    def _read_log(
        self, app_id: str, index: int, stream: str, offset: int, length: int
    ) -> bytes | None:
        return None

    def _holds(self, app_id: str) -> bool:
        return any(p.app_id == app_id for p in self.started)

    def _remove_orphans(self, policy: ContainerPolicy, running: set[str]) -> None:
        return None

    # -- the script -----------------------------------------------------------------------------

    def up(self, plan: ContainerPlan) -> None:
        info = {"node_name": "a", "gpu_ids": [], "pid": 100 + plan.index, "start_time": T0}
        self.reports.append(Report(plan.app_id, plan.attempt, plan.index, "started", info=info))

    def exit(
        self,
        plan: ContainerPlan,
        code: int,
        diagnostics: str = "",
        cause: ContainerCause = ContainerCause.EXITED,
        usage: dict[str, Any] | None = None,
    ) -> None:
        result = ContainerResult(code, diagnostics, None, T0 + 10, cause=cause, usage=usage)
        self.reports.append(Report(plan.app_id, plan.attempt, plan.index, "exited", result=result))

    def lose(self, plan: ContainerPlan, diagnostics: str, cause: ContainerCause) -> None:
        self.reports.append(
            Report(
                plan.app_id, plan.attempt, plan.index, "lost", diagnostics=diagnostics, cause=cause
            )
        )


@dataclass
class Cluster:
    scheduler: Scheduler
    executor: ScriptedExecutor
    ctx: Context
    clock: Clock

    def submit(self, spec: AppSpec, user: str = "alice") -> str:
        with self.ctx.sessions() as session:
            app_id, seq = repo.next_app_id(session, self.clock())
            repo.add_app(
                session, repo.NewApp(user, spec, "/nowhere.tar.gz"), self.clock(), app_id, seq
            )
            session.commit()
        return app_id

    def cycle(self) -> None:
        self.clock.now += 1
        self.scheduler.step()

    def app(self, app_id: str) -> App:
        with self.ctx.sessions() as session:
            app = repo.get_app(session, app_id)
            session.expunge(app)
            return app

    def plans(self, app_id: str) -> list[ContainerPlan]:
        attempt = self.app(app_id).attempt
        return [p for p in self.executor.started if p.app_id == app_id and p.attempt == attempt]

    def kill(self, app_id: str, reason: StopReason) -> None:
        with self.ctx.sessions() as session:
            repo.get_app(session, app_id).kill_requested = reason
            session.commit()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    settings = ServerSettings(home=tmp_path / "home")
    engine = make_engine(settings.database_url)
    migrate(engine)
    executor = ScriptedExecutor()
    clock = Clock()
    ctx = Context(
        settings=settings,
        sessions=session_factory(engine),
        executor=executor,
        queues=QueueConfig(settings.queues_path),
        clock=clock,
    )
    yield Cluster(Scheduler(ctx), executor, ctx, clock)
    engine.dispose()


def test_an_app_is_admitted_started_and_finished_in_cycles(cluster: Cluster) -> None:
    app_id = cluster.submit(make_spec("one").containers(2).build())
    cluster.cycle()  # admitted, started
    app = cluster.app(app_id)
    assert (app.state, app.attempt) == (AppState.RUNNING.value, 1)
    plans = cluster.plans(app_id)
    assert [p.index for p in plans] == [0, 1]
    assert plans[1].rendezvous["RANK"] == "1" and plans[0].node_id == "node-a"
    for p in plans:
        cluster.executor.up(p)
    cluster.cycle()
    assert cluster.app(app_id).state == AppState.RUNNING.value
    for p in plans:
        cluster.executor.exit(p, 0)
    cluster.cycle()
    app = cluster.app(app_id)
    assert (app.state, app.final_status) == (AppState.FINISHED.value, FinalStatus.SUCCEEDED.value)
    assert app.diagnostics == "all containers exited with code 0"


def test_a_containers_last_gpu_report_is_final_in_the_commit_that_ends_it(
    cluster: Cluster,
) -> None:
    """Accounting reads an ended app's GPU-hours at once: its last report is stored with the
    exit, not at the next usage sample; a late, older answer never replaces it."""
    app_id = cluster.submit(make_spec("metered").gpus(1).build())
    cluster.cycle()
    (plan,) = cluster.plans(app_id)
    cluster.executor.up(plan)
    cluster.cycle()
    last = {"samples": 7, "gpu_seconds_used": 5.6, "seconds_sampled": 7.0, "gpus": {}}
    cluster.executor.exit(plan, 0, usage=last)
    cluster.cycle()
    with cluster.ctx.sessions() as session:
        app = repo.get_app(session, app_id)
        assert app.state == AppState.FINISHED.value
        [row] = app.gpu_usage
        assert (row.samples, row.gpu_seconds_used) == (7, 5.6)
        stale = {"samples": 3, "gpu_seconds_used": 2.4, "seconds_sampled": 3.0, "gpus": {}}
        assert record_usage(session, {(app_id, 1, 0): stale}, cluster.clock()) == 0
        session.commit()
        session.refresh(row)
        assert (row.samples, row.gpu_seconds_used) == (7, 5.6)


def test_a_failed_container_stops_its_gang_and_fails_the_app(cluster: Cluster) -> None:
    app_id = cluster.submit(make_spec("gang").containers(2).build())
    cluster.cycle()
    first, second = cluster.plans(app_id)
    cluster.executor.up(first)
    cluster.executor.up(second)
    cluster.executor.exit(first, 3, "exited with code 3")
    cluster.cycle()
    assert cluster.app(app_id).kill_requested == StopReason.GANG
    [(stopped, grace, notice)] = cluster.executor.stopped
    assert (stopped, grace, notice["reason"]) == (app_id, 0.0, "gang")
    # the others say why they were stopped: not "killed by request"
    said = stop_diagnostics(notice)
    assert said == "stopped with its gang: container 0 failed (exited with code 3)"
    cluster.executor.exit(second, 137, said, ContainerCause.KILLED)
    cluster.cycle()
    app = cluster.app(app_id)
    assert (app.state, app.final_status) == (AppState.FINISHED.value, FinalStatus.FAILED.value)
    assert app.diagnostics == "container 0 exited with code 3"


def test_a_container_lost_with_its_node_requeues_the_app_uncounted(cluster: Cluster) -> None:
    app_id = cluster.submit(make_spec("lost").build())
    cluster.cycle()
    (plan,) = cluster.plans(app_id)
    cluster.executor.lose(plan, "node lost: 10.0.0.9", ContainerCause.NODE_LOST)
    cluster.cycle()  # requeued, then admitted again in the same cycle
    app = cluster.app(app_id)
    assert (app.state, app.attempt) == (AppState.RUNNING.value, 2)
    (again,) = cluster.plans(app_id)
    cluster.executor.exit(again, 0)
    cluster.cycle()
    assert cluster.app(app_id).final_status == FinalStatus.SUCCEEDED.value


def test_the_cause_decides_never_the_text_of_the_diagnostics(cluster: Cluster) -> None:
    """A program that prints what dlapp writes for a lost node still failed by itself."""
    app_id = cluster.submit(make_spec("liar").build())
    cluster.cycle()
    (plan,) = cluster.plans(app_id)
    cluster.executor.exit(plan, 1, "node lost: made up by the app")
    cluster.cycle()
    app = cluster.app(app_id)
    assert (app.state, app.final_status) == (AppState.FINISHED.value, FinalStatus.FAILED.value)


def test_a_failed_attempt_is_retried_then_the_app_fails(cluster: Cluster) -> None:
    app_id = cluster.submit(make_spec("flaky").max_attempts(2).build())
    cluster.cycle()
    cluster.executor.exit(cluster.plans(app_id)[0], 1, "exited with code 1")
    cluster.cycle()  # retried: requeued and admitted again
    assert cluster.app(app_id).attempt == 2
    cluster.executor.exit(cluster.plans(app_id)[0], 1, "exited with code 1")
    cluster.cycle()
    app = cluster.app(app_id)
    assert (app.final_status, app.attempt) == (FinalStatus.FAILED.value, 2)


def test_a_softkill_is_carried_out_with_a_notice_then_killed(cluster: Cluster) -> None:
    app_id = cluster.submit(make_spec("soft").build())
    cluster.cycle()
    cluster.kill(app_id, StopReason.SOFTKILL)
    cluster.cycle()
    grace = cluster.ctx.settings.softkill_grace_s
    assert cluster.executor.stopped == [
        (app_id, grace, {"reason": "softkill", "deadline": cluster.clock.now + grace})
    ]
    cluster.executor.exit(cluster.plans(app_id)[0], 143, "killed by request", ContainerCause.KILLED)
    cluster.cycle()
    app = cluster.app(app_id)
    assert (app.final_status, app.diagnostics) == (
        FinalStatus.KILLED.value,
        "softkilled by request",
    )


def test_an_eviction_requeues_the_app_keeping_its_place(cluster: Cluster) -> None:
    app_id = cluster.submit(make_spec("evicted").build())
    cluster.cycle()
    cluster.kill(app_id, StopReason.EVICT)
    cluster.cycle()
    assert cluster.executor.stopped[0][2]["reason"] == "evicted"  # type: ignore[index]
    cluster.executor.exit(cluster.plans(app_id)[0], 143, "killed by request", ContainerCause.KILLED)
    cluster.cycle()  # requeued, and admitted again
    app = cluster.app(app_id)
    assert (app.state, app.attempt, app.kill_requested) == (AppState.RUNNING.value, 2, None)


def test_a_container_recorded_lost_gets_its_cause(cluster: Cluster) -> None:
    app_id = cluster.submit(make_spec("recorded").build())
    cluster.cycle()
    (plan,) = cluster.plans(app_id)
    cluster.executor.lose(plan, "did not start within 60s: ...", ContainerCause.NOT_STARTED)
    cluster.cycle()
    with cluster.ctx.sessions() as session:
        (c,) = [
            c for c in repo.all_containers(session, repo.get_app(session, app_id)) if c.attempt == 1
        ]
        assert (c.state, c.cause) == (ContainerState.LOST.value, ContainerCause.NOT_STARTED.value)


def test_the_policy_sees_the_service_an_app_has_had_and_its_wait(cluster: Cluster) -> None:
    app_id = cluster.submit(make_spec("resumed").build())
    cluster.cycle()
    (plan,) = cluster.plans(app_id)
    cluster.executor.up(plan)  # ran from T0 ...
    cluster.kill(app_id, StopReason.EVICT)
    cluster.cycle()
    cluster.executor.exit(plan, 143, "killed by request", ContainerCause.KILLED)  # ... to T0 + 10
    cluster.cycle()  # requeued, and admitted again
    with cluster.ctx.sessions() as session:
        assert repo.earlier_runs(session, {app_id: 3}) == {app_id: (10.0, T0 + 10)}
        app = repo.get_app(session, app_id)
        (running,) = cluster.scheduler.admission.snapshot(session).running
        assert running.ran_before_s == 10.0  # its first run, for the las ordering
        head = cluster.scheduler.admission.heads(session, [app])[0]
        assert (head.ran_s, head.waiting_since) == (10.0, T0 + 10)
