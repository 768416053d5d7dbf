"""A stateful property test of the server's GPU-ID manager on the agent start path.

The whole server-side cycle runs (the real store on SQLite, the scheduling loop, reconcile,
admission and its device grants), over a scripted executor of three nodes x 4 GPUs that starts
nothing: it records each plan, the way a node's agent would receive it, and reports what the
rules script. Random submissions (whole, fractional and multi-GPU, gangs of two), starts, exits,
kills, a node lost (its raylet gone: every container there lost, the node dead until it comes
back) and a node's agent lost (its containers lost, the node alive) interleave with cycles.

After every step, for every container the store holds as running or starting: its devices are
devices of its node, a device held whole is held by that one container, fractions of a device
never add up past one GPU, and the plan the agent got names exactly the devices the store
keeps. The agent path trusts these device IDs (no engine hands them out any more), so they must
never be given twice.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dlapp.config import ContainerPolicy, ServerSettings
from dlapp.contract import ContainerCause, ContainerPlan, ContainerResult
from dlapp.executor import Executor, NodeInfo, Report
from dlapp.scheduler import Resources
from dlapp.server.context import Context
from dlapp.server.queue_config import QueueConfig
from dlapp.server.scheduling.loop import Scheduler
from dlapp.status import AppState, ContainerState, StopReason
from dlapp.store import repo
from dlapp.store.db import make_engine, migrate, session_factory
from dlapp.store.models import App
from spec_builders import make_spec

NODES = ("n0", "n1", "n2")
GPUS = ("0", "1", "2", "3")
T0 = 1_800_000_000.0
EPS = 1e-9


@dataclass
class AgentsExecutor(Executor):
    """Three nodes; starts nothing. What each node's agent was asked to run is ``live``
    (by ``(app, attempt, index)``) until the rules end it."""

    dead: set[str] = field(default_factory=set)
    live: dict[tuple[str, int, int], ContainerPlan] = field(default_factory=dict)
    up: set[tuple[str, int, int]] = field(default_factory=set)
    reports: list[Report] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def _nodes(self) -> list[NodeInfo]:
        return [
            NodeInfo(n, n, Resources(16, 65536, len(GPUS)), alive=n not in self.dead, gpu_ids=GPUS)
            for n in NODES
        ]

    def _start(
        self, plans: Sequence[ContainerPlan], node_ids: Sequence[str], request: Resources
    ) -> None:
        for plan in plans:
            self.live[(plan.app_id, plan.attempt, plan.index)] = plan

    def _stop(self, app_id: str, grace: float, notice: dict[str, Any] | None) -> None:
        for key in list(self.live):
            if key[0] == app_id:
                self.end(key, 137, ContainerCause.KILLED)

    def _poll(self) -> list[Report]:
        out, self.reports = self.reports, []
        return out

    def _read_log(
        self, app_id: str, index: int, stream: str, offset: int, length: int
    ) -> bytes | None:
        return None

    def _holds(self, app_id: str) -> bool:
        return any(k[0] == app_id for k in self.live)

    def _remove_orphans(self, policy: ContainerPolicy, running: set[str]) -> None:
        return None

    # -- the script -----------------------------------------------------------------------------

    def start_one(self, key: tuple[str, int, int]) -> None:
        plan = self.live[key]
        info = {"node_name": plan.node_id, "gpu_ids": list(plan.gpu_ids), "pid": 100}
        self.up.add(key)
        self.reports.append(Report(*key, "started", info=info))

    def end(self, key: tuple[str, int, int], code: int, cause: ContainerCause) -> None:
        self.live.pop(key, None)
        self.up.discard(key)
        result = ContainerResult(code, "" if code == 0 else f"exited {code}", None, T0, cause=cause)
        self.reports.append(Report(*key, "exited", result=result))

    def lose(self, key: tuple[str, int, int], cause: ContainerCause, why: str) -> None:
        self.live.pop(key, None)
        self.up.discard(key)
        self.reports.append(Report(*key, "lost", diagnostics=why, cause=cause))


@dataclass(frozen=True)
class Held:
    """A container the store holds as running or starting, with its app's GPUs each."""

    id: str
    gpus: float
    attempt: int
    index: int
    node_id: str
    gpu_ids: str


class DeviceIds(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory(prefix="dlapp-devices-")
        home = Path(self.tmp.name) / "home"
        self.settings = ServerSettings(home=home, schedule_interval_s=3600)
        self.engine = make_engine(self.settings.database_url)
        migrate(self.engine)
        self.executor = AgentsExecutor()
        self.now = T0
        self.ctx = Context(
            settings=self.settings,
            sessions=session_factory(self.engine),
            executor=self.executor,
            queues=QueueConfig(self.settings.queues_path),
            clock=lambda: self.now,
        )
        self.scheduler = Scheduler(self.ctx)
        self.submitted: list[str] = []

    def teardown(self) -> None:
        self.engine.dispose()
        self.tmp.cleanup()

    # -- rules ----------------------------------------------------------------------------------

    @rule(
        gpus=st.sampled_from([0, 0.25, 0.5, 1, 1, 2, 3]),
        containers=st.sampled_from([1, 1, 2]),
        user=st.sampled_from(["ann", "bob"]),
    )
    def submit(self, gpus: float, containers: int, user: str) -> None:
        spec = make_spec("d").gpus(gpus).containers(containers).max_attempts(3).build()
        with self.ctx.sessions() as session:
            app_id, seq = repo.next_app_id(session, self.now)
            repo.add_app(session, repo.NewApp(user, spec, "/nowhere.tar.gz"), self.now, app_id, seq)
            session.commit()
        self.submitted.append(app_id)

    @rule()
    def cycle(self) -> None:
        self.now += 5
        self.scheduler.step()

    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        waiting = sorted(set(self.executor.live) - self.executor.up)
        if waiting:
            self.executor.start_one(data.draw(st.sampled_from(waiting)))

    @rule(data=st.data(), code=st.sampled_from([0, 0, 1]))
    def exit(self, data: st.DataObject, code: int) -> None:
        up = sorted(self.executor.up)
        if up:
            self.executor.end(data.draw(st.sampled_from(up)), code, ContainerCause.EXITED)

    @rule(data=st.data())
    def kill(self, data: st.DataObject) -> None:
        if not self.submitted:
            return
        app_id = data.draw(st.sampled_from(self.submitted))
        with self.ctx.sessions() as session:
            app = repo.get_app(session, app_id)
            if app.state != AppState.FINISHED.value and app.kill_requested is None:
                app.kill_requested = StopReason.KILL
                session.commit()

    @rule(node=st.sampled_from(NODES))
    def lose_node(self, node: str) -> None:
        self.executor.dead.add(node)
        for key, plan in list(self.executor.live.items()):
            if plan.node_id == node:
                self.executor.lose(key, ContainerCause.NODE_LOST, f"node lost: {node}")

    @rule(node=st.sampled_from(NODES))
    def node_back(self, node: str) -> None:
        self.executor.dead.discard(node)

    @rule(node=st.sampled_from(NODES))
    def lose_agent(self, node: str) -> None:
        for key, plan in list(self.executor.live.items()):
            if plan.node_id == node:
                self.executor.lose(key, ContainerCause.AGENT_LOST, "its node's agent died")

    # -- invariants -----------------------------------------------------------------------------

    def _held(self) -> list[Held]:
        with self.ctx.sessions() as session:
            return [
                Held(c.id, app.gpus, c.attempt, c.index, c.node_id, c.gpu_ids)
                for app in session.query(App).filter(App.state == AppState.RUNNING.value)
                for c in app.containers
                if c.attempt == app.attempt and not ContainerState(c.state).is_terminal()
            ]

    @invariant()
    def devices_are_never_given_twice(self) -> None:
        whole: dict[tuple[str, str], str] = {}
        shares: dict[tuple[str, str], float] = {}
        for c in self._held():
            ids = [g for g in c.gpu_ids.split(",") if g]
            each = c.gpus  # per container
            assert set(ids) <= set(GPUS), (c.id, c.node_id, ids)
            if each >= 1:
                assert len(ids) == round(each), (c.id, ids)
                for g in ids:
                    key = (c.node_id, g)
                    assert key not in whole, f"{key} given to {whole.get(key)} and {c.id}"
                    assert shares.get(key, 0.0) == 0.0, f"{key} whole to {c.id}, shared too"
                    whole[key] = f"{c.id}/{c.index}"
            elif each > 0:
                assert len(ids) == 1, (c.id, ids)
                key = (c.node_id, ids[0])
                assert key not in whole, f"{key} held whole by {whole.get(key)}, shared to {c.id}"
                shares[key] = shares.get(key, 0.0) + each
                assert shares[key] <= 1.0 + EPS, f"{key} over-shared: {shares[key]}"
            else:
                assert ids == [], (c.id, ids)

    @invariant()
    def each_agent_got_the_devices_the_store_keeps(self) -> None:
        held = {(c.id, c.attempt, c.index): c for c in self._held()}
        for key, plan in self.executor.live.items():
            c = held.get(key)
            if c is None:  # ended in the store already; its stop is on its way
                continue
            assert plan.node_id == c.node_id, key
            assert ",".join(plan.gpu_ids) == c.gpu_ids, (key, plan.gpu_ids, c.gpu_ids)


DeviceIds.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDeviceIds = DeviceIds.TestCase
