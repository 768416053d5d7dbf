"""What the scheduler sees: resources, pending app heads, nodes, and an immutable snapshot.

Everything here is a frozen value. ``Snapshot.allocate`` returns a new snapshot and leaves the
old one as it was, so a decision cycle can try placements without touching the cluster's state.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from functools import cached_property

from dlapp.scheduler.gpus import (
    GPU_EPS,
    Workload,
    expand_devices,
    mig_counts,
    mig_share,
    mig_total_share,
    pick_devices,
    same_model,
    take_devices,
)
from dlapp.scheduler.queues import DEFAULT_TREE, QueueTree
from dlapp.scheduler.resources import (
    Resources,
    describe_cpus,
    describe_gpus,
    describe_memory,
)

# fgd: fragmentation-aware (the default); best-fit: least free CPU and GPU left, weighed alike;
# first-fit: the first node by name; pack: fewest free GPUs, then fewest free CPUs (dlapp's
# placement before GPU sharing)
PLACEMENTS = ("fgd", "best-fit", "first-fit", "pack")

__all__ = [
    "PLACEMENTS",
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
    # what the las / srtf orderings, promotion and reservations read:
    ran_s: float = 0.0  # seconds it ran in earlier attempts (before a preemption, say)
    waiting_since: float | None = None  # when it last joined its queue's line; None: now
    max_runtime_s: float | None = None  # the limit its user stated, over all its attempts
    gpu_types: tuple[str, ...] = ()  # GPU models it accepts (``H100``); empty: any
    mig: str | None = None  # a MIG profile (``1g.18gb``): request.gpus is then its instances' share

    @cached_property  # read for every head in every cycle: worked out once
    def total(self) -> Resources:
        return self.request.scaled(self.num_containers)

    @property
    def mig_count(self) -> int:
        """MIG instances per container (0 when it asks for no MIG profile)."""
        return 0 if self.mig is None else round(self.request.gpus / mig_share(self.mig))

    def accepts(self, node: NodeView) -> bool:
        """True when ``node``'s GPU model is one this app accepts (any, when it names none or
        asks for no GPU)."""
        if not self.gpu_types or self.request.gpus <= GPU_EPS:
            return True
        return same_model(node.model, self.gpu_types)

    @property
    def attained_gpu_s(self) -> float:
        """GPU-seconds of service it has had (Tiresias's two-dimensional attained service)."""
        return self.ran_s * self.request.gpus * self.num_containers

    @property
    def remaining_s(self) -> float | None:
        """What is left of its stated ``max_runtime``; None when it stated none."""
        if self.max_runtime_s is None:
            return None
        return max(0.0, self.max_runtime_s - self.ran_s)

    def __post_init__(self) -> None:
        if self.num_containers < 1:
            raise ValueError(f"{self.app_id}: num_containers must be at least 1")
        if self.request.is_negative():
            raise ValueError(f"{self.app_id}: negative resource request {self.request}")
        gpus = self.request.gpus
        if self.mig is not None:
            count = gpus / mig_share(self.mig)  # ValueError naming a bad profile
            if count < 1 - GPU_EPS or abs(count - round(count)) > GPU_EPS:
                raise ValueError(
                    f"{self.app_id}: request.gpus {gpus:g} is not a whole number of "
                    f"{self.mig} instances ({mig_share(self.mig):.4f} of a GPU each)"
                )
        elif gpus > 1 + GPU_EPS and abs(gpus - round(gpus)) > GPU_EPS:
            raise ValueError(
                f"{self.app_id}: {gpus:g} GPUs per container: a fraction must be below 1, "
                "more than one GPU must be whole"
            )

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
    total: Resources  # gpus: its shareable devices plus the share of its MIG instances
    free: Resources
    schedulable: bool = True  # False when drained / cordoned / dead
    model: str = ""  # its GPUs' model (``H100``); "" when unknown or it has none
    # free share of each shareable device, by index; None: as many wholly free ones as
    # ``free`` holds (see ``devices``)
    gpu_free: tuple[float, ...] | None = None
    mig_total: tuple[tuple[str, int], ...] = ()  # MIG instances by profile
    mig_free: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if self.gpu_free is None:
            return
        n = self.device_count
        if len(self.gpu_free) != n or any(not -GPU_EPS <= d <= 1 + GPU_EPS for d in self.gpu_free):
            raise ValueError(
                f"node {self.name}: gpu_free must give a share in [0, 1] for each of its "
                f"{n} devices, not {self.gpu_free}"
            )
        free = self.free.gpus - mig_total_share(mig_counts(self.mig_free))
        if abs(sum(self.gpu_free) - free) > 1e-4:
            raise ValueError(
                f"node {self.name}: its devices' free shares add up to {sum(self.gpu_free):g}, "
                f"not the {free:g} GPUs it has free"
            )

    def matches(self, refs: tuple[str, ...]) -> bool:
        """True when any of ``refs`` names this node, by id or by name."""
        return self.node_id in refs or self.name in refs

    @property
    def device_count(self) -> int:
        """Its shareable devices (GPUs not in MIG mode)."""
        if not self.mig_total:
            return round(self.total.gpus)
        return round(self.total.gpus - mig_total_share(mig_counts(self.mig_total)))

    def devices(self) -> tuple[float, ...]:
        """Free share of each shareable device, by index."""
        if self.gpu_free is not None:
            return self.gpu_free
        free = self.free.gpus
        if self.mig_free:
            free -= mig_total_share(mig_counts(self.mig_free))
        return expand_devices(self.device_count, max(0.0, free))


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
    ran_before_s: float = 0.0  # seconds it ran in earlier attempts (las reads its service)
    mig: str | None = None  # its MIG profile, when it holds MIG instances
    # the device indices each container holds on its node; () when not known
    devices: tuple[tuple[int, ...], ...] = ()

    @cached_property
    def total(self) -> Resources:
        return self.request.scaled(len(self.nodes))

    def attained_gpu_s(self, now: float) -> float:
        """GPU-seconds of service it has had, this run included."""
        ran = self.ran_before_s + max(0.0, now - self.started_at)
        return ran * self.request.gpus * len(self.nodes)

    def remaining_s(self, now: float) -> float | None:
        """Time left before its ``max_runtime`` ends it; None when it has none."""
        return None if self.ends_by is None else max(0.0, self.ends_by - now)


@dataclass(frozen=True)
class Snapshot:
    """The cluster's capacity and usage at one instant; never changed, only replaced."""

    nodes: tuple[NodeView, ...]
    running: tuple[RunningApp, ...] = ()
    queues: QueueTree = DEFAULT_TREE
    now: float = 0.0  # the clock, for estimates; the policy never reads a clock itself
    placement: str = "fgd"  # how a container's node is chosen: one of PLACEMENTS
    # the kinds of task coming, for fragmentation-aware placement; (): the waiting and
    # running apps' own mix (see ``dlapp.scheduler.gpus.workload``)
    workload: Workload = ()
    _index: dict[str, NodeView] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        counts = Counter(n.node_id for n in self.nodes)
        duplicates = sorted(i for i, c in counts.items() if c > 1)
        if duplicates:
            raise ValueError(f"duplicate node ids in snapshot: {duplicates}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement {self.placement!r} is not one of {', '.join(PLACEMENTS)}")

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
        gpu_free = target.gpu_free
        if gpu_free is not None and r.gpus > GPU_EPS:
            devices = list(gpu_free)
            try:
                take_devices(devices, pick_devices(devices, r.gpus), r.gpus)
            except ValueError as exc:
                raise ValueError(
                    f"cannot allocate {r.describe()} on node {target.name}: {exc}"
                ) from None
            gpu_free = tuple(devices)
        taken = replace(target, free=target.free - r, gpu_free=gpu_free)
        nodes = tuple(taken if n.node_id == node_id else n for n in self.nodes)
        return replace(self, nodes=nodes, _index={})

    def totals(self) -> Resources:
        """Capacity of every node, schedulable or not."""
        return sum((n.total for n in self.nodes), Resources())

    def free(self) -> Resources:
        """Free resources of every node, schedulable or not."""
        return sum((n.free for n in self.nodes), Resources())
