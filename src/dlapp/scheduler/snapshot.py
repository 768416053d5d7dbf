"""What the scheduler sees: resources, pending app heads, nodes, and an immutable snapshot.

Everything here is a frozen value. ``Snapshot.allocate`` returns a new snapshot and leaves the
old one as it was, so a decision cycle can try placements without touching the cluster's state.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

# CPU counts are floats (Ray allows fractions); sums and differences of them drift.
_EPS = 1e-9


def _number(value: float) -> str:
    """``2`` for 2.0, ``0.5`` for 0.5, at most two decimals."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


def describe_cpus(cpus: float) -> str:
    return f"{_number(cpus)} CPU" + ("" if cpus == 1 else "s")


def describe_memory(memory_mb: int) -> str:
    """``2.0 GiB``; amounts under one GiB in MiB (``512 MiB``), so small ones stay exact."""
    if 0 < memory_mb < 1024:
        return f"{memory_mb} MiB"
    return f"{memory_mb / 1024:.1f} GiB"


def describe_gpus(gpus: int) -> str:
    return f"{gpus} GPU" + ("" if gpus == 1 else "s")


@dataclass(frozen=True)
class Resources:
    """An amount of CPU, memory and GPUs: what one container asks for, or a node's capacity."""

    cpus: float = 0.0
    memory_mb: int = 0
    gpus: int = 0

    def fits_in(self, other: Resources) -> bool:
        """True when every amount here is at most the same amount in ``other``."""
        return (
            self.cpus <= other.cpus + _EPS
            and self.memory_mb <= other.memory_mb
            and self.gpus <= other.gpus
        )

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            cpus=self.cpus + other.cpus,
            memory_mb=self.memory_mb + other.memory_mb,
            gpus=self.gpus + other.gpus,
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            cpus=self.cpus - other.cpus,
            memory_mb=self.memory_mb - other.memory_mb,
            gpus=self.gpus - other.gpus,
        )

    def scaled(self, n: int) -> Resources:
        """``n`` times this amount (``n`` containers of it)."""
        return Resources(cpus=self.cpus * n, memory_mb=self.memory_mb * n, gpus=self.gpus * n)

    def is_negative(self) -> bool:
        return self.cpus < -_EPS or self.memory_mb < 0 or self.gpus < 0

    def describe(self) -> str:
        """``1 CPU, 2.0 GiB, 1 GPU``."""
        return ", ".join(
            (describe_cpus(self.cpus), describe_memory(self.memory_mb), describe_gpus(self.gpus))
        )


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
class Snapshot:
    """The cluster's capacity and usage at one instant; never changed, only replaced."""

    nodes: tuple[NodeView, ...]

    def __post_init__(self) -> None:
        ids = [n.node_id for n in self.nodes]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate node ids in snapshot: {duplicates}")

    def node(self, node_id: str) -> NodeView:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise KeyError(f"no node {node_id!r} in snapshot")

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
        return Snapshot(tuple(taken if n.node_id == node_id else n for n in self.nodes))

    def totals(self) -> Resources:
        """Capacity of every node, schedulable or not."""
        return sum((n.total for n in self.nodes), Resources())

    def free(self) -> Resources:
        """Free resources of every node, schedulable or not."""
        return sum((n.free for n in self.nodes), Resources())
