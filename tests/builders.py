"""Test-data builders: ``make_app("a1").gpus(2).queue("q").build()``, ``make_node(...)``.

Each builder starts from small, plain defaults and changes one thing per call, so a test states
only what matters to it. Apps built later get a later ``seq`` unless a test sets one.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from dlapp.scheduler import (
    DEFAULT_TREE,
    AppHead,
    NodeView,
    QueueTree,
    Resources,
    RunningApp,
    Snapshot,
)
from dlapp.scheduler.gpus import mig_share
from dlapp.spec import MIB_PER_UNIT, memory_size

_seq = itertools.count(1)


def mib(memory: str | int) -> int:
    """MiB from ``"2G"``, ``"512M"``, ``"1.5GiB"``, or an int already in MiB."""
    if isinstance(memory, int):
        return memory
    size = memory_size(memory)
    if size is None or size[2] == "I":
        raise ValueError(f"not a memory amount: {memory!r}")
    number, unit, _ = size
    return int(number * MIB_PER_UNIT[unit])


class AppBuilder:
    def __init__(self, app_id: str) -> None:
        self._head = AppHead(
            app_id=app_id,
            user="alice",
            queue="default",
            seq=next(_seq),
            request=Resources(cpus=1, memory_mb=1024, gpus=0),
        )

    def _request(self, request: Resources) -> AppBuilder:
        self._head = replace(self._head, request=request)
        return self

    def cpus(self, n: float) -> AppBuilder:
        return self._request(replace(self._head.request, cpus=n))

    def memory(self, amount: str | int) -> AppBuilder:
        return self._request(replace(self._head.request, memory_mb=mib(amount)))

    def gpus(self, n: float) -> AppBuilder:
        """Whole GPUs per container, or a fraction of one (``0.5``)."""
        return self._request(replace(self._head.request, gpus=n))

    def gpu_types(self, *models: str) -> AppBuilder:
        self._head = replace(self._head, gpu_types=models)
        return self

    def mig(self, profile: str, count: int = 1) -> AppBuilder:
        """``count`` MIG instances of ``profile`` per container."""
        self._head = replace(
            self._head,
            mig=profile,
            request=replace(self._head.request, gpus=round(count * mig_share(profile), 9)),
        )
        return self

    def spread(self) -> AppBuilder:
        self._head = replace(self._head, spread=True)
        return self

    def containers(self, n: int) -> AppBuilder:
        self._head = replace(self._head, num_containers=n)
        return self

    def queue(self, name: str) -> AppBuilder:
        self._head = replace(self._head, queue=name)
        return self

    def user(self, name: str) -> AppBuilder:
        self._head = replace(self._head, user=name)
        return self

    def seq(self, n: int) -> AppBuilder:
        self._head = replace(self._head, seq=n)
        return self

    def include(self, *nodes: str) -> AppBuilder:
        self._head = replace(self._head, include_nodes=nodes)
        return self

    def exclude(self, *nodes: str) -> AppBuilder:
        self._head = replace(self._head, exclude_nodes=nodes)
        return self

    def priority(self, n: int) -> AppBuilder:
        self._head = replace(self._head, priority=n)
        return self

    def ran(self, seconds: float) -> AppBuilder:
        """Seconds it ran in earlier attempts (its attained service, with its GPUs)."""
        self._head = replace(self._head, ran_s=seconds)
        return self

    def waiting_since(self, t: float) -> AppBuilder:
        self._head = replace(self._head, waiting_since=t)
        return self

    def max_runtime(self, seconds: float) -> AppBuilder:
        self._head = replace(self._head, max_runtime_s=seconds)
        return self

    def build(self) -> AppHead:
        return self._head


class RunningBuilder:
    """A running app: one container of 1 CPU, 1 GiB and ``gpus`` GPUs per node given."""

    def __init__(self, app_id: str) -> None:
        self._app = RunningApp(
            app_id=app_id,
            user="alice",
            queue="default",
            seq=next(_seq),
            request=Resources(cpus=1, memory_mb=1024, gpus=0),
            nodes=("n1",),
        )

    def gpus(self, n: float) -> RunningBuilder:
        self._app = replace(self._app, request=replace(self._app.request, gpus=n))
        return self

    def queue(self, name: str) -> RunningBuilder:
        self._app = replace(self._app, queue=name)
        return self

    def user(self, name: str) -> RunningBuilder:
        self._app = replace(self._app, user=name)
        return self

    def on(self, *nodes: str) -> RunningBuilder:
        self._app = replace(self._app, nodes=nodes)
        return self

    def started(self, t: float) -> RunningBuilder:
        self._app = replace(self._app, started_at=t)
        return self

    def ran_before(self, seconds: float) -> RunningBuilder:
        self._app = replace(self._app, ran_before_s=seconds)
        return self

    def ends_by(self, t: float) -> RunningBuilder:
        self._app = replace(self._app, ends_by=t)
        return self

    def stopping(self, claimed_by: str | None = None) -> RunningBuilder:
        self._app = replace(self._app, stopping=True, claimed_by=claimed_by)
        return self

    def build(self) -> RunningApp:
        return self._app


class NodeBuilder:
    """A node named ``name`` (its id is the name unless ``.id()`` says otherwise)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._id = name
        self._total = Resources(cpus=8, memory_mb=32 * 1024, gpus=0)
        self._used = Resources()
        self._schedulable = True
        self._model = ""
        self._devices: tuple[float, ...] | None = None
        self._mig_total: dict[str, int] = {}
        self._mig_used: dict[str, int] = {}

    def id(self, node_id: str) -> NodeBuilder:
        self._id = node_id
        return self

    def cpus(self, n: float) -> NodeBuilder:
        self._total = replace(self._total, cpus=n)
        return self

    def memory(self, amount: str | int) -> NodeBuilder:
        self._total = replace(self._total, memory_mb=mib(amount))
        return self

    def memory_gb(self, gib: float) -> NodeBuilder:
        self._total = replace(self._total, memory_mb=int(gib * 1024))
        return self

    def gpus(self, n: int) -> NodeBuilder:
        self._total = replace(self._total, gpus=n)
        return self

    def used(self, cpus: float = 0, memory: str | int = 0, gpus: int = 0) -> NodeBuilder:
        """Resources already taken by running containers (added to any earlier ``used``)."""
        self._used = self._used + Resources(cpus=cpus, memory_mb=mib(memory), gpus=gpus)
        return self

    def model(self, name: str) -> NodeBuilder:
        """The GPU model its GPUs are (``A100``)."""
        self._model = name
        return self

    def shared(self, *free: float) -> NodeBuilder:
        """Its GPUs' free shares, one per device (``shared(1, 0.5, 0)``): as many GPUs as
        given, partly taken by fractional apps (added to ``used``)."""
        self._total = replace(self._total, gpus=len(free) + self._mig_share(self._mig_total))
        self._devices = tuple(float(f) for f in free)
        return self

    def mig(self, profile: str, count: int, used: int = 0) -> NodeBuilder:
        """``count`` MIG instances of ``profile`` (``used`` of them taken)."""
        self._mig_total[profile] = count
        self._mig_used[profile] = used
        self._total = replace(self._total, gpus=self._total.gpus + count * mig_share(profile))
        return self

    @staticmethod
    def _mig_share(counts: dict[str, int]) -> float:
        return sum(n * mig_share(p) for p, n in counts.items())

    def drained(self) -> NodeBuilder:
        self._schedulable = False
        return self

    def build(self) -> NodeView:
        if not self._used.fits_in(self._total):
            raise ValueError(f"node {self._name}: used {self._used} exceeds {self._total}")
        used = self._used
        if self._devices is not None:  # the devices' taken shares count as used GPUs
            used = used + Resources(gpus=round(len(self._devices) - sum(self._devices), 9))
        used = used + Resources(gpus=self._mig_share(self._mig_used))
        return NodeView(
            node_id=self._id,
            name=self._name,
            total=self._total,
            free=self._total - used,
            schedulable=self._schedulable,
            model=self._model,
            gpu_free=self._devices,
            mig_total=tuple(sorted(self._mig_total.items())),
            mig_free=tuple(
                sorted((p, n - self._mig_used.get(p, 0)) for p, n in self._mig_total.items())
            ),
        )


def make_app(app_id: str = "app") -> AppBuilder:
    return AppBuilder(app_id)


def make_running(app_id: str = "running") -> RunningBuilder:
    return RunningBuilder(app_id)


def make_node(name: str = "10.0.0.1") -> NodeBuilder:
    return NodeBuilder(name)


def make_snapshot(
    *nodes: NodeView | NodeBuilder,
    queues: QueueTree = DEFAULT_TREE,
    running: tuple[RunningApp, ...] = (),
    now: float = 0.0,
) -> Snapshot:
    built = tuple(n.build() if isinstance(n, NodeBuilder) else n for n in nodes)
    return Snapshot(built, running=running, queues=queues, now=now)
