"""A stateful property test of GPU sharing: random whole, fractional, MIG and typed apps
submitted, finished and preempted on nodes of two GPU models, one with MIG instances.

Each cycle runs ``decide`` and applies its decisions as the server's GPU-ID manager does: an
admitted container takes the devices ``Admit.devices`` names (MIG instances: any free one of
its profile). After every step: no device holds more than 1.0 of a GPU, a device held whole is
held by that one container only (never shared with a fraction), MIG instances are never
over-committed, typed apps sit on their model, and every admission's devices were free.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dlapp.scheduler import (
    Admit,
    AppHead,
    NodeView,
    Preempt,
    Resources,
    RunningApp,
    Snapshot,
    decide,
    mig_share,
    parse_tree,
)

GPUS = 4
PROFILE = "1g.18gb"
INSTANCES = 7  # one GPU of the MIG node, in MIG mode
NODES = {"a0": "A100", "a1": "A100", "h0": "H100"}  # h0 also has the MIG GPU
TREE = parse_tree(
    {
        "preemption": {"enabled": True, "grace_s": 1},
        "queues": {
            "a": {"guaranteed": "50%", "maximum": "100%"},
            "b": {"guaranteed": "50%", "maximum": "100%", "user_limit": {"gpus": 6}},
        },
    }
)
ASKS = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 2.0, 0.125])


@dataclass
class App:
    app_id: str
    queue: str
    seq: int
    gpus: float
    containers: int
    models: tuple[str, ...] = ()
    mig: str | None = None
    placed: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    instances: list[tuple[str, int]] = field(default_factory=list)  # MIG: (node, instance)
    stopping_for: int | None = None
    claimed_by: str | None = None

    @property
    def request(self) -> Resources:
        return Resources(cpus=0.5, memory_mb=512, gpus=self.gpus)


class Sharing(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.nodes = dict(NODES)
        # per node, per device: the holders and the share each holds
        self.held: dict[str, list[dict[str, float]]] = {
            n: [{} for _ in range(GPUS)] for n in self.nodes
        }
        self.mig: dict[str, dict[int, str | None]] = {"h0": dict.fromkeys(range(INSTANCES))}
        self.pending: dict[str, App] = {}
        self.running: dict[str, App] = {}
        self.seq = 0

    # -- what users and the cluster do ---------------------------------------------------------

    @rule(
        queue=st.sampled_from(["a", "b"]),
        gpus=ASKS,
        containers=st.integers(1, 3),
        model=st.sampled_from([(), ("A100",), ("H100",), ("H100", "A100")]),
    )
    def submit(self, queue: str, gpus: float, containers: int, model: tuple[str, ...]) -> None:
        self.seq += 1
        app = App(f"app{self.seq}", f"root.{queue}", self.seq, gpus, containers, model)
        self.pending[app.app_id] = app

    @rule(
        queue=st.sampled_from(["a", "b"]),
        asks=st.lists(ASKS, min_size=2, max_size=12),
        model=st.sampled_from([(), ("A100",), ("H100",)]),
    )
    def submit_many(self, queue: str, asks: list[float], model: tuple[str, ...]) -> None:
        for gpus in asks:
            self.submit(queue, gpus, 1, model)

    @rule(queue=st.sampled_from(["a", "b"]), count=st.integers(1, 3))
    def submit_mig(self, queue: str, count: int) -> None:
        self.seq += 1
        share = round(count * mig_share(PROFILE), 9)
        app = App(f"app{self.seq}", f"root.{queue}", self.seq, share, 1, mig=PROFILE)
        self.pending[app.app_id] = app

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        app_id = data.draw(st.sampled_from(sorted(self.running)))
        self._release(self.running.pop(app_id))

    @rule()
    def cycle(self) -> None:
        for app in list(self.running.values()):
            if app.stopping_for is not None:
                app.stopping_for -= 1
                if app.stopping_for < 0:
                    del self.running[app.app_id]
                    self._release(app)
                    app.stopping_for, app.claimed_by = None, None
                    self.pending[app.app_id] = app
        decisions = decide([self._head(a) for a in self.pending.values()], self._snapshot())
        for d in decisions:
            if isinstance(d, Admit):
                self._admit(self.pending.pop(d.app_id), d)
            elif isinstance(d, Preempt):
                victim = self.running[d.app_id]
                assert victim.stopping_for is None, d
                victim.stopping_for, victim.claimed_by = 1, d.for_queue

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def no_device_over_one_gpu(self) -> None:
        for node, devices in self.held.items():
            for i, holders in enumerate(devices):
                assert sum(holders.values()) <= 1 + 1e-9, f"{node}/{i} holds {holders}"

    @invariant()
    def a_whole_gpu_is_never_shared(self) -> None:
        for node, devices in self.held.items():
            for i, holders in enumerate(devices):
                if any(share >= 1 - 1e-9 for share in holders.values()):
                    assert len(holders) == 1, f"{node}/{i} held whole and shared: {holders}"

    @invariant()
    def typed_apps_sit_on_their_model(self) -> None:
        for app in self.running.values():
            if app.models and app.gpus > 0:
                assert all(self.nodes[n] in app.models for n, _ in app.placed), app

    @invariant()
    def mig_instances_held_once(self) -> None:
        held = [(n, i) for a in self.running.values() for n, i in a.instances]
        assert len(held) == len(set(held))

    # -- helpers -------------------------------------------------------------------------------

    def _head(self, app: App) -> AppHead:
        return AppHead(
            app.app_id,
            "alice",
            app.queue,
            app.seq,
            app.request,
            app.containers,
            gpu_types=app.models,
            mig=app.mig,
        )

    def _snapshot(self) -> Snapshot:
        views = []
        for node, model in sorted(self.nodes.items()):
            free_devices = tuple(round(1 - sum(holders.values()), 9) for holders in self.held[node])
            mig_free = sum(1 for v in self.mig.get(node, {}).values() if v is None)
            has_mig = node in self.mig
            mig_gpus = INSTANCES * mig_share(PROFILE) if has_mig else 0.0
            cpus_used = sum(
                a.request.cpus for a in self.running.values() for n, _ in a.placed if n == node
            )
            total = Resources(cpus=16, memory_mb=64 * 1024, gpus=GPUS + mig_gpus)
            free_gpus = sum(free_devices) + mig_free * mig_share(PROFILE)
            views.append(
                NodeView(
                    node,
                    node,
                    total,
                    Resources(16 - cpus_used, 64 * 1024 - int(cpus_used * 1024), free_gpus),
                    model=model,
                    gpu_free=free_devices,
                    mig_total=((PROFILE, INSTANCES),) if has_mig else (),
                    mig_free=((PROFILE, mig_free),) if has_mig else (),
                )
            )
        running = tuple(
            RunningApp(
                a.app_id,
                "alice",
                a.queue,
                a.seq,
                a.request,
                tuple(n for n, _ in a.placed),
                stopping=a.stopping_for is not None,
                claimed_by=a.claimed_by,
                mig=a.mig,
                devices=tuple(d for _, d in a.placed),
            )
            for a in self.running.values()
        )
        return Snapshot(tuple(views), running=running, queues=TREE)

    def _admit(self, app: App, d: Admit) -> None:
        assert len(d.nodes) == app.containers
        app.placed, app.instances = [], []
        for i, node in enumerate(d.nodes):
            devices = d.devices[i] if d.devices else ()
            if app.mig is not None:
                count = round(app.gpus / mig_share(app.mig))
                free = [k for k, v in self.mig[node].items() if v is None]
                assert len(free) >= count, f"{app.app_id}: no free {app.mig} on {node}"
                for k in free[:count]:
                    self.mig[node][k] = app.app_id
                    app.instances.append((node, k))
                assert devices == ()
            elif app.gpus > 0:
                each = app.gpus if app.gpus < 1 else 1.0
                assert len(devices) == (1 if app.gpus < 1 else round(app.gpus)), (app, d)
                for k in devices:
                    holders = self.held[node][k]
                    room = 1 - sum(holders.values())
                    assert room >= each - 1e-9, f"{app.app_id} on full device {node}/{k}"
                    assert not any(s >= 1 - 1e-9 for s in holders.values())
                    holders[f"{app.app_id}:{i}"] = each
            app.placed.append((node, devices))
        self.running[app.app_id] = app

    def _release(self, app: App) -> None:
        for i, (node, devices) in enumerate(app.placed):
            for k in devices:
                del self.held[node][k][f"{app.app_id}:{i}"]
        for node, k in app.instances:
            self.mig[node][k] = None
        app.placed, app.instances = [], []


TestSharingStateMachine = Sharing.TestCase
TestSharingStateMachine.settings = settings(
    max_examples=200,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
