"""The replayed cluster's GPUs, device by device: where each job's containers sit, what is
free, and how much of the free share is *fragmented*.

Containers take the devices ``decide`` names in its ``Admit`` (a fraction shares one device
with other fractions; whole GPUs take whole devices) and give them back when they end. The
fragmented share is the free GPU share that the trace's kinds of job could not use where it
is (``dlapp.scheduler.gpus.fragmentation``, weighed by the whole trace's mix of jobs, one
yardstick for every placement compared): kept per node, updated as nodes change.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import replace

from dlapp.scheduler import NodeView, Resources, TaskShape, Workload
from dlapp.scheduler.gpus import fragmentation, give_devices, take_devices, workload_of
from dlapp.sim.trace import TraceJob


def job_shape(job: TraceJob, request: Resources) -> TaskShape:
    """The kind of task one container of ``job`` is."""
    return TaskShape(request.cpus, request.memory_mb, request.gpus, job.gpu_types)


class GpuLedger:
    """Free devices and fragmentation of every node; ``take`` / ``give`` return the node's
    new view."""

    def __init__(self, nodes: Iterable[NodeView], yardstick: Workload) -> None:
        self.yardstick = yardstick
        self.frag: dict[str, float] = {}
        self.fragmented = 0.0  # GPUs, over every node
        for n in nodes:
            self._measure(n)

    def _measure(self, view: NodeView) -> None:
        before = self.frag.get(view.node_id, 0.0)
        after = fragmentation(
            view.devices(), view.free.cpus, view.free.memory_mb, view.model, self.yardstick
        )
        self.frag[view.node_id] = after
        self.fragmented += after - before

    def take(self, view: NodeView, request: Resources, devices: tuple[int, ...]) -> NodeView:
        free = list(view.devices())
        take_devices(free, devices, request.gpus)
        after = replace(view, free=view.free - request, gpu_free=tuple(free))
        self._measure(after)
        return after

    def give(self, view: NodeView, request: Resources, devices: tuple[int, ...]) -> NodeView:
        free = list(view.devices())
        give_devices(free, devices, request.gpus)
        after = replace(view, free=view.free + request, gpu_free=tuple(free))
        self._measure(after)
        return after


class RecentMix:
    """The kinds of task among the last ``window`` arrivals: the workload fragmentation-aware
    placement keeps room for, as the server would learn it from the recent requests."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.recent: deque[TaskShape] = deque()
        self.counts: Counter[TaskShape] = Counter()
        self._cached: Workload | None = None

    def add(self, shape: TaskShape) -> None:
        self.recent.append(shape)
        self.counts[shape] += 1
        if len(self.recent) > self.window:
            self.counts[self.recent.popleft()] -= 1
        self._cached = None

    def workload(self) -> Workload:
        if self._cached is None:
            self._cached = workload_of(self.counts)
        return self._cached
