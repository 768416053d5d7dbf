"""Test-data builders: ``make_app("a1").gpus(2).queue("q").build()``, ``make_node(...)``.

Each builder starts from small, plain defaults and changes one thing per call, so a test states
only what matters to it. Apps built later get a later ``seq`` unless a test sets one.
"""

from __future__ import annotations

import itertools
import re
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

_seq = itertools.count(1)

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_MIB_PER_UNIT = {"K": 1 / 1024, "M": 1, "": 1, "G": 1024, "T": 1024 * 1024}


def mib(memory: str | int) -> int:
    """MiB from ``"2G"``, ``"512M"``, ``"1.5GiB"``, or an int already in MiB."""
    if isinstance(memory, int):
        return memory
    match = _MEMORY.match(memory)
    if match is None:
        raise ValueError(f"not a memory amount: {memory!r}")
    number, unit = match.groups()
    return int(float(number) * _MIB_PER_UNIT[unit.upper()])


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

    def gpus(self, n: int) -> AppBuilder:
        return self._request(replace(self._head.request, gpus=n))

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

    def build(self) -> AppHead:
        return self._head


class NodeBuilder:
    """A node named ``name`` (its id is the name unless ``.id()`` says otherwise)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._id = name
        self._total = Resources(cpus=8, memory_mb=32 * 1024, gpus=0)
        self._used = Resources()
        self._schedulable = True

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

    def drained(self) -> NodeBuilder:
        self._schedulable = False
        return self

    def build(self) -> NodeView:
        if not self._used.fits_in(self._total):
            raise ValueError(f"node {self._name}: used {self._used} exceeds {self._total}")
        return NodeView(
            node_id=self._id,
            name=self._name,
            total=self._total,
            free=self._total - self._used,
            schedulable=self._schedulable,
        )


def make_app(app_id: str = "app") -> AppBuilder:
    return AppBuilder(app_id)


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
