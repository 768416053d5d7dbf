"""Placement: where an app's containers can go, and plain words for why they can't.

``FreeIndex`` is the working view of free resources used while deciding: nodes bucketed by
free GPUs and sorted by free CPUs, so best fit is a short lookup rather than a scan of every
node. ``place_gang`` puts all of an app's containers or none.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from dlapp.errors import InfeasibleError
from dlapp.scheduler.snapshot import (
    AppHead,
    NodeView,
    Resources,
    Snapshot,
    describe_cpus,
    describe_gpus,
    describe_memory,
)

# The three resources, each with how to read it and how to say an amount of it.
_KINDS: tuple[tuple[Callable[[Resources], float], Callable[[Resources], str]], ...] = (
    (lambda r: r.gpus, lambda r: describe_gpus(r.gpus)),
    (lambda r: r.cpus, lambda r: describe_cpus(r.cpus)),
    (lambda r: r.memory_mb, lambda r: describe_memory(r.memory_mb)),
)


_EPS = 1e-9


class FreeIndex:
    """Mutable free resources per node, for one decision cycle (never shared)."""

    def __init__(self, nodes: Iterable[NodeView]) -> None:
        self.nodes: dict[str, NodeView] = {}
        self.free: dict[str, Resources] = {}
        self._buckets: dict[int, list[tuple[float, str, str]]] = {}
        for n in nodes:
            self.nodes[n.node_id] = n
            self.free[n.node_id] = n.free
            if n.schedulable:
                self._insert(n.node_id)

    def _key(self, node_id: str) -> tuple[float, str, str]:
        return (self.free[node_id].cpus, self.nodes[node_id].name, node_id)

    def _insert(self, node_id: str) -> None:
        bisect.insort(self._buckets.setdefault(self.free[node_id].gpus, []), self._key(node_id))

    def _remove(self, node_id: str) -> None:
        bucket = self._buckets[self.free[node_id].gpus]
        del bucket[bisect.bisect_left(bucket, self._key(node_id))]

    def take(self, node_id: str, r: Resources) -> None:
        if self.nodes[node_id].schedulable:
            self._remove(node_id)
        self.free[node_id] = self.free[node_id] - r
        if self.nodes[node_id].schedulable:
            self._insert(node_id)

    def give(self, node_id: str, r: Resources) -> None:
        self.take(node_id, Resources(-r.cpus, -r.memory_mb, -r.gpus))

    def best_fit(self, head: AppHead, avoid: frozenset[str] = frozenset()) -> str | None:
        """The node with the fewest free GPUs that fits one container, then fewest free CPUs,
        then by name: whole GPU nodes stay free for big apps, CPU work goes to CPU nodes."""
        req = head.request
        for gpus in sorted(g for g in self._buckets if g >= req.gpus):
            bucket = self._buckets[gpus]
            for _cpus, _name, node_id in bucket[bisect.bisect_left(bucket, (req.cpus - _EPS,)) :]:
                if node_id in avoid:
                    continue
                if req.memory_mb <= self.free[node_id].memory_mb and head.allows(
                    self.nodes[node_id]
                ):
                    return node_id
        return None

    def place(self, head: AppHead) -> tuple[str, ...] | None:
        """Take room for all of ``head``'s containers, or take nothing and return None."""
        placed: list[str] = []
        for _ in range(head.num_containers):
            node_id = self.best_fit(head, frozenset(placed) if head.spread else frozenset())
            if node_id is None:
                for taken in placed:
                    self.give(taken, head.request)
                return None
            self.take(node_id, head.request)
            placed.append(node_id)
        return tuple(placed)

    def snapshot_nodes(self) -> list[tuple[NodeView, Resources]]:
        return [(n, self.free[i]) for i, n in self.nodes.items()]


def place_gang(head: AppHead, snapshot: Snapshot) -> tuple[str, ...] | None:
    """Node ids for all of ``head``'s containers, or None when they cannot all be placed now.

    Each container lands wholly on one schedulable node that ``head`` may use, by best fit
    (see ``FreeIndex.best_fit``). Containers of one app are identical, so placing them one by
    one this way finds room whenever room exists. ``snapshot`` is not changed.
    """
    return FreeIndex(snapshot.nodes).place(head)


def explain_wait(head: AppHead, snapshot: Snapshot) -> str:
    """Why ``head`` cannot be placed on ``snapshot`` now, in one plain sentence."""
    return explain_free(head, [(n, n.free) for n in snapshot.nodes])


def explain_free(head: AppHead, nodes: Sequence[tuple[NodeView, Resources]]) -> str:
    """Why ``head`` cannot be placed on nodes with these free resources, in one sentence."""
    if not nodes:
        return "the cluster has no nodes"
    allowed = [(n, f) for n, f in nodes if head.allows(n)]
    if not allowed:
        return f"no allowed node ({_lists(head.include_nodes, head.exclude_nodes)})"
    usable = [(n, f) for n, f in allowed if n.schedulable]
    if not usable:
        return "no schedulable node: every allowed node is drained, cordoned or down"
    request = head.request
    needs = f"needs {_containers(head.num_containers)} of {request.describe()}"
    if head.spread:
        holders = sum(1 for _, f in usable if request.fits_in(f))
        if holders < head.num_containers:
            return (
                f"{needs}, {head.num_containers} containers on different nodes; "
                f"only {holders} node{'' if holders == 1 else 's'} can hold one now"
            )
    fit = sum(_fit_count(request, f, head.num_containers) for _, f in usable)
    if fit > 0:
        return f"{needs} at once; only {fit} fit{'s' if fit == 1 else ''} now"
    where = "any allowed node" if head.include_nodes or head.exclude_nodes else "any node"
    short = []
    for amount, say in _KINDS:
        node, most = _largest(usable, amount)
        if amount(request) > amount(most):
            short.append(f"{say(most)} (node {node.name})")
    if not short:
        return f"{needs}; no node has all of it free at once"
    return f"{needs}; the most free on {where}: {', '.join(short)}"


def check_feasible(
    request: Resources,
    num_containers: int,
    nodes: Sequence[NodeView],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> None:
    """Raise InfeasibleError when no state of this cluster, even empty, could ever hold the app.

    Every node counts as empty and schedulable: a drained node may come back, so only the
    nodes that belong to the cluster should be passed.
    """
    if not nodes:
        raise InfeasibleError("the cluster has no nodes")
    head = AppHead(
        app_id="feasibility-check",
        user="",
        queue="",
        seq=0,
        request=request,
        num_containers=num_containers,
        include_nodes=tuple(include),
        exclude_nodes=tuple(exclude),
    )
    empty = Snapshot(tuple(replace(n, free=n.total, schedulable=True) for n in nodes))
    if place_gang(head, empty) is not None:
        return
    allowed = [n for n in empty.nodes if head.allows(n)]
    if not allowed:
        raise InfeasibleError(f"no allowed node ({_lists(head.include_nodes, head.exclude_nodes)})")
    restricted = bool(include or exclude)
    # A single container larger than every allowed node.
    largest = "largest allowed node" if restricted else "largest node"
    capacity = [(n, n.total) for n in allowed]
    too_big = []
    for amount, say in _KINDS:
        node, biggest = _largest(capacity, amount)
        if amount(request) > amount(biggest):
            too_big.append(
                f"a container asks for {say(request)} but the {largest} "
                f"({node.name}) has {say(biggest)}"
            )
    if too_big:
        raise InfeasibleError("; ".join(too_big))
    fit = sum(_fit_count(request, n.total, num_containers) for n in allowed)
    if fit == 0:
        raise InfeasibleError(
            f"a container asks for {request.describe()} but no "
            f"{'allowed ' if restricted else ''}node has all of that at once"
        )
    # The gang as a whole is larger than the (allowed part of the) cluster.
    whole = sum((n.total for n in allowed), Resources())
    has = "the allowed nodes have" if restricted else "the cluster has"
    gang = request.scaled(num_containers)
    over = [
        f"{_containers(num_containers)} of {say(request)} need {say(gang)} at once; "
        f"{has} {say(whole)}"
        for amount, say in _KINDS
        if amount(gang) > amount(whole)
    ]
    if over:
        raise InfeasibleError("; ".join(over))
    raise InfeasibleError(
        f"{_containers(num_containers)} of {request.describe()} do not fit "
        f"even on the empty cluster: at most {fit} fit at once"
    )


def _fit_count(request: Resources, free: Resources, limit: int) -> int:
    """How many containers of ``request`` fit in ``free``, counting no further than ``limit``."""
    count = 0
    while count < limit and request.fits_in(free):
        free = free - request
        count += 1
    return count


def _largest(
    candidates: Sequence[tuple[NodeView, Resources]], amount: Callable[[Resources], float]
) -> tuple[NodeView, Resources]:
    """The (node, resources) pair with the most of ``amount``; ties go to the first by name."""
    return min(candidates, key=lambda c: (-amount(c[1]), c[0].name, c[0].node_id))


def _containers(n: int) -> str:
    return f"{n} container" + ("" if n == 1 else "s")


def _lists(include: tuple[str, ...], exclude: tuple[str, ...]) -> str:
    parts = []
    if include:
        parts.append(f"include: [{', '.join(include)}]")
    if exclude:
        parts.append(f"exclude: [{', '.join(exclude)}]")
    return ", ".join(parts) or "no node in the cluster"
