"""The scheduling policy: given pending app heads and a snapshot, decide who starts where.

First cut: strict FIFO inside each queue (head-of-line blocking), queues independent, apps
taken in submission order across queues; gang placement (all containers or none) by best fit.
A later policy (capacity queues, dominant resource fairness, preemption) keeps this shape:
``decide(heads, snapshot) -> list[Decision]``, pure, no database, no Ray, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeAlias

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


@dataclass(frozen=True)
class Admit:
    """Start the app now; ``nodes[i]`` is the node_id for container ``i``."""

    app_id: str
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class Wait:
    """The app stays queued; ``position`` is its 1-based place in its queue's line."""

    app_id: str
    position: int
    reason: str


Decision: TypeAlias = Admit | Wait


# The three resources, each with how to read it and how to say an amount of it.
_KINDS: tuple[tuple[Callable[[Resources], float], Callable[[Resources], str]], ...] = (
    (lambda r: r.gpus, lambda r: describe_gpus(r.gpus)),
    (lambda r: r.cpus, lambda r: describe_cpus(r.cpus)),
    (lambda r: r.memory_mb, lambda r: describe_memory(r.memory_mb)),
)


def place_gang(head: AppHead, snapshot: Snapshot) -> tuple[str, ...] | None:
    """Node ids for all of ``head``'s containers, or None when they cannot all be placed now.

    Each container lands wholly on one schedulable node that ``head`` may use. Best fit: the
    node with the fewest free GPUs that still fits, then the fewest free CPUs, then by name,
    so whole GPU nodes stay free for big apps and CPU-only containers go to CPU nodes.
    Containers of one app are identical, so placing them one by one this way finds room
    whenever room exists.
    """
    working = snapshot
    placed: list[str] = []
    for _ in range(head.num_containers):
        fitting = [
            n
            for n in working.nodes
            if n.schedulable and head.allows(n) and head.request.fits_in(n.free)
        ]
        if not fitting:
            return None
        best = min(fitting, key=lambda n: (n.free.gpus, n.free.cpus, n.name, n.node_id))
        working = working.allocate(best.node_id, head.request)
        placed.append(best.node_id)
    return tuple(placed)


def decide(heads: Sequence[AppHead], snapshot: Snapshot) -> list[Decision]:
    """One decision per head, in the order of ``heads``. Pure: ``snapshot`` is not changed."""
    if len({h.app_id for h in heads}) != len(heads):
        raise ValueError("duplicate app_id among heads")
    # 1. Take the apps in submission order; inside a queue that is its FIFO line.
    in_order = sorted(heads, key=lambda h: (h.seq, h.app_id))
    # 2. Walk them; only the working snapshot changes while deciding.
    working = snapshot
    blocked_by: dict[str, str] = {}  # queue -> its head that could not be placed
    waiting: dict[str, int] = {}  # queue -> how many of its apps wait so far
    decided: dict[str, Decision] = {}
    for head in in_order:
        # 3. Behind a blocked head, the rest of that queue waits (strict FIFO).
        blocker = blocked_by.get(head.queue)
        if blocker is not None:
            waiting[head.queue] += 1
            reason = f"waiting behind {blocker} (first in queue {head.queue})"
            decided[head.app_id] = Wait(head.app_id, waiting[head.queue], reason)
            continue
        # 4. Place the whole gang or nothing.
        nodes = place_gang(head, working)
        if nodes is None:
            blocked_by[head.queue] = head.app_id
            waiting[head.queue] = 1
            decided[head.app_id] = Wait(head.app_id, 1, explain_wait(head, working))
            continue
        # 5. Admit, and take its resources from the working snapshot for the apps after it.
        for node_id in nodes:
            working = working.allocate(node_id, head.request)
        decided[head.app_id] = Admit(head.app_id, nodes)
    # 6. Answer in the caller's order.
    return [decided[h.app_id] for h in heads]


def explain_wait(head: AppHead, snapshot: Snapshot) -> str:
    """Why ``head`` cannot be placed on ``snapshot`` now, in one plain sentence."""
    if not snapshot.nodes:
        return "the cluster has no nodes"
    allowed = [n for n in snapshot.nodes if head.allows(n)]
    if not allowed:
        return f"no allowed node ({_lists(head.include_nodes, head.exclude_nodes)})"
    usable = [n for n in allowed if n.schedulable]
    if not usable:
        return "no schedulable node: every allowed node is drained, cordoned or down"
    request = head.request
    needs = f"needs {_containers(head.num_containers)} of {request.describe()}"
    fit = sum(_fit_count(request, n.free, head.num_containers) for n in usable)
    if fit > 0:
        return f"{needs} at once; only {fit} fit{'s' if fit == 1 else ''} now"
    where = "any allowed node" if head.include_nodes or head.exclude_nodes else "any node"
    free = [(n, n.free) for n in usable]
    short = []
    for amount, say in _KINDS:
        node, most = _largest(free, amount)
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
