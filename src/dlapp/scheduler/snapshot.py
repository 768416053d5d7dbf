"""What the scheduler sees: resources, pending app heads, nodes, and an immutable snapshot.

Everything here is a frozen value. ``Snapshot.allocate`` returns a new snapshot and leaves the
old one as it was, so a decision cycle can try placements without touching the cluster's state.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from dlapp.scheduler.queues import DEFAULT_TREE, QueueTree
from dlapp.scheduler.resources import (
    Resources,
    describe_cpus,
    describe_gpus,
    describe_memory,
)

__all__ = [
    "AppHead",
    "NodeView",
    "Resources",
    "RunningApp",
    "Snapshot",
    "describe_cpus",
    "describe_gpus",
    "describe_memory",
]


@dataclass(frozen=True)
class AppHead:
    """One pending app, as the scheduler sees it."""

    app_id: str
    user: str
    queue: str
    seq: int  # submission order
    request: Resources  # per container
    num_containers: int = 1
    include_nodes: tuple[str, ...] = ()  # node names or ids; empty = any node
    exclude_nodes: tuple[str, ...] = ()
    priority: int = 0  # higher first, inside its queue
    spread: bool = False  # each container on a different node (default: pack by best fit)

    @property
    def total(self) -> Resources:
        return self.request.scaled(self.num_containers)

    def __post_init__(self) -> None:
        if self.num_containers < 1:
            raise ValueError(f"{self.app_id}: num_containers must be at least 1")
        if self.request.is_negative():
            raise ValueError(f"{self.app_id}: negative resource request {self.request}")

    def allows(self, node: NodeView) -> bool:
        """True when the include / exclude lists let this app use ``node`` (by id or name)."""
        if self.include_nodes and not node.matches(self.include_nodes):
            return False
        return not node.matches(self.exclude_nodes)


@dataclass(frozen=True)
class NodeView:
    """One node: its capacity, what is free now, and whether new containers may land on it."""

    node_id: str
    name: str  # ip or hostname, what users type
    total: Resources
    free: Resources
    schedulable: bool = True  # False when drained / cordoned / dead

    def matches(self, refs: tuple[str, ...]) -> bool:
        """True when any of ``refs`` names this node, by id or by name."""
        return self.node_id in refs or self.name in refs


@dataclass(frozen=True)
class RunningApp:
    """An app holding resources now: what preemption may take back, and estimates read."""

    app_id: str
    user: str
    queue: str  # leaf queue path
    seq: int
    request: Resources  # per container
    nodes: tuple[str, ...]  # node_id of each container
    priority: int = 0
    started_at: float = 0.0
    ends_by: float | None = None  # start + max runtime, when the app has one
    stopping: bool = False  # killed / preempted, not yet gone
    claimed_by: str | None = None  # preempted for this queue: its resources are that queue's

    @property
    def total(self) -> Resources:
        return self.request.scaled(len(self.nodes))


@dataclass(frozen=True)
class Snapshot:
    """The cluster's capacity and usage at one instant; never changed, only replaced."""

    nodes: tuple[NodeView, ...]
    running: tuple[RunningApp, ...] = ()
    queues: QueueTree = DEFAULT_TREE
    now: float = 0.0  # the clock, for estimates; the policy never reads a clock itself
    _index: dict[str, NodeView] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        counts = Counter(n.node_id for n in self.nodes)
        duplicates = sorted(i for i, c in counts.items() if c > 1)
        if duplicates:
            raise ValueError(f"duplicate node ids in snapshot: {duplicates}")

    def node(self, node_id: str) -> NodeView:
        if not self._index:
            self._index.update((n.node_id, n) for n in self.nodes)
        try:
            return self._index[node_id]
        except KeyError:
            raise KeyError(f"no node {node_id!r} in snapshot") from None

    def allocate(self, node_id: str, r: Resources) -> Snapshot:
        """A new snapshot with ``r`` taken from that node's free resources.

        Raises ValueError when ``r`` does not fit in what the node has free; ``self`` is
        never changed.
        """
        target = self.node(node_id)
        if not r.fits_in(target.free):
            raise ValueError(
                f"cannot allocate {r.describe()} on node {target.name}: "
                f"only {target.free.describe()} free"
            )
        taken = replace(target, free=target.free - r)
        nodes = tuple(taken if n.node_id == node_id else n for n in self.nodes)
        return replace(self, nodes=nodes, _index={})

    def totals(self) -> Resources:
        """Capacity of every node, schedulable or not."""
        return sum((n.total for n in self.nodes), Resources())

    def free(self) -> Resources:
        """Free resources of every node, schedulable or not."""
        return sum((n.free for n in self.nodes), Resources())
