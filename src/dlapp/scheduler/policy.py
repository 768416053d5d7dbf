"""The scheduling policy: capacity queues, dominant resource fairness, gang, preemption.

``decide(heads, snapshot) -> list[Decision]`` is pure: no database, no Ray, no clock (the
snapshot carries ``now``). One cycle:

  1. resolve every queue's guaranteed / maximum capacity for this cluster size, and what each
     queue and each user holds now;
  2. serve queues in order of how much of their guarantee they use (a queue under its
     guarantee comes first; past that, idle capacity is lent up to each queue's maximum, the
     least-served queue first: dominant resource fairness, GPU being the scarce resource);
  3. inside a queue, take the highest priority first, then the user with the smallest
     dominant share, then submission order;
  4. check the queue's maximum (and its ancestors'), the user's limit, then place the whole
     gang by best fit; an app that cannot start says why (``fifo`` queues stop there,
     ``backfill`` queues let later apps that fit go ahead);
  5. when preemption is on and a queue under its guarantee cannot place its next app,
     choose victims from queues over their guarantee (most over first, lowest priority,
     youngest), no more than needed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TypeAlias

from dlapp.scheduler.placement import FreeIndex, explain_free
from dlapp.scheduler.queues import Limits, QueueTree
from dlapp.scheduler.snapshot import (
    AppHead,
    NodeView,
    Resources,
    RunningApp,
    Snapshot,
    describe_gpus,
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
    estimate: float | None = None  # when it could start, from running apps' max runtimes


@dataclass(frozen=True)
class Preempt:
    """Stop ``app_id`` (SIGTERM, grace, SIGKILL) and requeue it, to make room for ``for_app``."""

    app_id: str
    for_app: str
    reason: str


Decision: TypeAlias = Admit | Wait | Preempt
_MAX_ESTIMATES = 32  # estimates are worked out for this many distinct request shapes per cycle


def share(r: Resources, of: Resources) -> float:
    """The dominant share of ``r`` in ``of``: the largest fraction over the three resources."""
    fractions = [0.0]
    for amount, total in ((r.gpus, of.gpus), (r.cpus, of.cpus), (r.memory_mb, of.memory_mb)):
        if total > 0:
            fractions.append(amount / total)
        elif amount > 0:
            fractions.append(math.inf)
    return max(fractions)


def _say(r: Resources, of: Resources) -> str:
    """``8/8 GPUs``, naming the resource that is exhausted (GPUs first)."""
    for amount, total, word in (
        (r.gpus, of.gpus, "GPUs"),
        (r.cpus, of.cpus, "CPUs"),
        (r.memory_mb, of.memory_mb, "MiB memory"),
    ):
        if total > 0 and amount >= total:
            return f"{amount:g}/{total:g} {word}"
    return f"{r.gpus}/{of.gpus} GPUs"


def _over(used: Resources, limit: Resources) -> str | None:
    """The resource by which ``used`` exceeds ``limit``, said plainly, or None."""
    for amount, total, word in (
        (used.gpus, limit.gpus, "GPUs"),
        (used.cpus, limit.cpus, "CPUs"),
        (used.memory_mb, limit.memory_mb, "MiB memory"),
    ):
        if amount > total + 1e-9:
            return word
    return None


def _binds(used: Resources, maximum: Resources, total: Resources) -> bool:
    """True when a queue's maximum, not the cluster's size, is what ``used`` runs into."""
    return (
        (used.gpus > maximum.gpus and maximum.gpus < total.gpus)
        or (used.cpus > maximum.cpus + 1e-9 and maximum.cpus < total.cpus - 1e-9)
        or (used.memory_mb > maximum.memory_mb and maximum.memory_mb < total.memory_mb)
    )


class _Cycle:
    """The working state of one call to ``decide``; only it changes while deciding."""

    def __init__(self, heads: Sequence[AppHead], snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.tree: QueueTree = snapshot.queues
        self.total = snapshot.totals()
        self.limits = self.tree.resolve(self.total)
        self.free = FreeIndex(snapshot.nodes)
        self.usage: dict[str, Resources] = defaultdict(Resources)
        self.user_usage: dict[tuple[str, str], Resources] = defaultdict(Resources)
        self.path_of: dict[str, str] = {}
        for app in snapshot.running:
            self._charge(self._path(app.queue), app.user, app.total)
        self.decisions: dict[str, Decision] = {}
        self.preempts: list[Preempt] = []
        self.failed_shapes: dict[tuple[object, ...], str] = {}
        self.estimates: dict[tuple[object, ...], float | None] = {}
        self.preempting: set[str] = set()  # queues that asked for a preemption this cycle

    # -- queues and usage ----------------------------------------------------------------------

    def _path(self, queue: str) -> str:
        path = self.path_of.get(queue)
        if path is None:
            by_path = self.tree.by_path
            if queue in by_path:
                path = queue
            elif f"root.{queue}" in by_path:
                path = f"root.{queue}"
            else:  # a queue no longer configured: best effort, no guarantee, no limit
                path = queue
            self.path_of[queue] = path
        return path

    def limits_of(self, path: str) -> Limits:
        return self.limits.get(path) or Limits(Resources(), self.total)

    def chain(self, path: str) -> list[str]:
        return self.tree.ancestors(path) if path in self.tree.by_path else [path]

    def _charge(self, path: str, user: str, r: Resources) -> None:
        for p in self.chain(path):
            self.usage[p] = self.usage[p] + r
        self.user_usage[(path, user)] = self.user_usage[(path, user)] + r

    def relative_use(self, path: str) -> tuple[float, float, str]:
        """Sort key of queues: used/guaranteed, then dominant share of the cluster."""
        used, g = self.usage[path], self.limits_of(path).guaranteed
        ratios = [
            u / t
            for u, t in ((used.gpus, g.gpus), (used.cpus, g.cpus), (used.memory_mb, g.memory_mb))
            if t > 0
        ]
        relative = max(ratios) if ratios else math.inf
        return (relative, share(used, self.total), path)

    def user_cap(self, path: str) -> Resources:
        if path not in self.tree.by_path:
            return self.total
        return self.tree.user_cap(path, self.limits_of(path).maximum)

    # -- one app -------------------------------------------------------------------------------

    def limit_reason(self, head: AppHead, path: str) -> str | None:
        need = head.total
        for p in self.chain(path):
            maximum = self.limits_of(p).maximum
            if _binds(self.usage[p] + need, maximum, self.total):
                in_use = _say(self.usage[p], maximum)
                return f"queue {p} at its maximum ({in_use} in use, needs {need.describe()})"
        cap = self.user_cap(path)
        held = self.user_usage[(path, head.user)]
        if _binds(held + need, cap, self.total):
            return f"user limit: {head.user} holds {_say(held, cap)} in {path}"
        return None

    def shape(self, head: AppHead) -> tuple[object, ...]:
        return (head.request, head.num_containers, head.include_nodes, head.exclude_nodes)

    def try_place(self, head: AppHead) -> tuple[str, ...] | str:
        """Node ids, or the reason the gang does not fit now."""
        key = self.shape(head)
        known = self.failed_shapes.get(key)
        if known is not None:
            return known
        nodes = self.free.place(head)
        if nodes is None:
            reason = explain_free(head, self.free.snapshot_nodes())
            self.failed_shapes[key] = reason
            return reason
        return nodes

    def admit(self, head: AppHead, path: str, nodes: tuple[str, ...]) -> None:
        self._charge(path, head.user, head.total)
        self.decisions[head.app_id] = Admit(head.app_id, nodes)
        # an admission can only shrink free space: failed shapes stay failed this cycle

    def estimate(self, head: AppHead) -> float | None:
        """When ``head`` could start if nothing else started first: the earliest time at which
        running apps' max runtimes free enough room. None when no such bound is known."""
        key = self.shape(head)
        if key in self.estimates:
            return self.estimates[key]
        if len(self.estimates) >= _MAX_ESTIMATES:
            return None
        ending = sorted(
            (a for a in self.snapshot.running if a.ends_by is not None),
            key=lambda a: a.ends_by or 0.0,
        )
        result: float | None = None
        if ending:
            sim = FreeIndex(replace(n, free=self.free.free[i]) for i, n in self.free.nodes.items())
            for app in ending:
                for node_id in app.nodes:
                    if node_id in sim.nodes:
                        sim.give(node_id, app.request)
                if sim.place(head) is not None:
                    result = max(app.ends_by or 0.0, self.snapshot.now)
                    break
        self.estimates[key] = result
        return result

    # -- preemption ----------------------------------------------------------------------------

    def preempt_for(self, head: AppHead, path: str) -> str | None:
        """Choose victims so that ``head`` fits; returns the Wait reason, or None if it can't."""
        if not self.tree.preemption or path in self.preempting or path not in self.tree.by_path:
            return None
        g = self.limits_of(path).guaranteed
        if _over(self.usage[path] + head.total, g):
            return None  # preemption only gives a queue its guarantee back, not more
        base = [(n, self.free.free[i]) for i, n in self.free.nodes.items()]
        stopping = [a for a in self.snapshot.running if a.stopping]
        if stopping and self._fits_after(head, base, stopping):
            self.preempting.add(path)
            return f"waiting for {len(stopping)} stopping app(s) to release their resources"
        candidates = [a for a in self.snapshot.running if self._victim_ok(a, path)]
        candidates.sort(
            key=lambda a: (
                -self.relative_use(self._path(a.queue))[0],
                a.priority,
                -a.started_at,
                -a.seq,
            )
        )
        chosen: list[RunningApp] = []
        queue_use = dict(self.usage)
        for victim in candidates:
            vpath = self._path(victim.queue)
            after = queue_use[vpath] - victim.total
            vg = self.limits_of(vpath).guaranteed
            dim_short = after.gpus < vg.gpus if head.request.gpus else after.cpus < vg.cpus - 1e-9
            if dim_short:
                continue  # never push the victim's queue under its own guarantee
            queue_use[vpath] = after
            chosen.append(victim)
            if self._fits_after(head, base, chosen):
                break
        else:
            return None
        for victim in list(reversed(chosen)):  # no more than needed
            rest = [v for v in chosen if v is not victim]
            if rest and self._fits_after(head, base, rest):
                chosen = rest
        self.preempting.add(path)
        used, glimit = self.usage[path], g
        for victim in chosen:
            vpath = self._path(victim.queue)
            vuse, vg = self.usage[vpath], self.limits_of(vpath).guaranteed
            self.preempts.append(
                Preempt(
                    victim.app_id,
                    head.app_id,
                    f"preempted for {head.app_id}: queue {path} is under its guarantee "
                    f"({describe_gpus(used.gpus)} of {glimit.gpus} guaranteed) and {vpath} is over "
                    f"its guarantee ({describe_gpus(vuse.gpus)} of {vg.gpus} guaranteed)",
                )
            )
        return f"waiting for {len(chosen)} preempted app(s) to release their resources"

    def _victim_ok(self, app: RunningApp, path: str) -> bool:
        if app.stopping:
            return False
        vpath = self._path(app.queue)
        if vpath == path or vpath not in self.tree.by_path:
            return False
        if not self.tree.by_path[vpath].preemptible:
            return False
        return _over(self.usage[vpath], self.limits_of(vpath).guaranteed) is not None

    def _fits_after(
        self, head: AppHead, base: Sequence[tuple[NodeView, Resources]], freed: Iterable[RunningApp]
    ) -> bool:
        sim = FreeIndex(replace(n, free=f) for n, f in base)
        for app in freed:
            for node_id in app.nodes:
                if node_id in sim.nodes:
                    sim.give(node_id, app.request)
        return sim.place(head) is not None


def decide(heads: Sequence[AppHead], snapshot: Snapshot) -> list[Decision]:
    """One Admit or Wait per head, in the order of ``heads``, then any Preempts. Pure."""
    if len({h.app_id for h in heads}) != len(heads):
        raise ValueError("duplicate app_id among heads")
    cycle = _Cycle(heads, snapshot)
    # 1. each queue's line: highest priority first, then submission order (its positions)
    lines: dict[str, list[AppHead]] = defaultdict(list)
    for h in heads:
        lines[cycle._path(h.queue)].append(h)
    position: dict[str, int] = {}
    pending: dict[str, dict[int, dict[str, list[AppHead]]]] = {}
    for path, line in lines.items():
        line.sort(key=lambda h: (-h.priority, h.seq, h.app_id))
        by_prio: dict[int, dict[str, list[AppHead]]] = defaultdict(lambda: defaultdict(list))
        for i, h in enumerate(line, 1):
            position[h.app_id] = i
            by_prio[h.priority][h.user].append(h)
        for users in by_prio.values():
            for apps in users.values():
                apps.reverse()  # pop() from the end takes the earliest
        pending[path] = by_prio

    def wait(h: AppHead, path: str, reason: str, estimate: float | None = None) -> None:
        cycle.decisions[h.app_id] = Wait(h.app_id, position[h.app_id], reason, estimate)

    # 2. serve the least-served queue next, one app at a time
    active = set(pending)
    while active:
        path = min(active, key=cycle.relative_use)
        head = _next(pending[path], cycle, path)
        if head is None:
            active.discard(path)
            continue
        # 3. the queue's maximum and the user's limit
        limited = cycle.limit_reason(head, path)
        if limited is not None:
            wait(head, path, limited)
        else:
            # 4. the whole gang, by best fit
            placed = cycle.try_place(head)
            if isinstance(placed, tuple):
                cycle.admit(head, path, placed)
                continue
            # 5. preemption for a queue under its guarantee; else say why and when
            preempting = cycle.preempt_for(head, path)
            if preempting is not None:
                wait(head, path, preempting)
            else:
                wait(head, path, placed, cycle.estimate(head))
        queue = cycle.tree.by_path.get(path)
        if queue is not None and queue.ordering == "fifo":
            blocker = head.app_id
            while (behind := _next(pending[path], cycle, path)) is not None:
                wait(
                    behind, path, f"waiting behind {blocker} (first in queue {path}, which is fifo)"
                )
            active.discard(path)
    # 6. positions count only the apps still waiting, in each queue's line order
    for line in lines.values():
        place = 0
        for h in line:
            d = cycle.decisions[h.app_id]
            if isinstance(d, Wait):
                place += 1
                cycle.decisions[h.app_id] = replace(d, position=place)
    # 7. answer in the caller's order, then the preemptions
    return [cycle.decisions[h.app_id] for h in heads] + list(cycle.preempts)


def _next(by_prio: dict[int, dict[str, list[AppHead]]], cycle: _Cycle, path: str) -> AppHead | None:
    """The queue's next app: top priority, then the user with the smallest dominant share."""
    while by_prio:
        top = max(by_prio)
        users = {u: apps for u, apps in by_prio[top].items() if apps}
        if not users:
            del by_prio[top]
            continue
        cap = cycle.limits_of(path).maximum
        user = min(
            users, key=lambda u: (share(cycle.user_usage[(path, u)], cap), users[u][-1].seq, u)
        )
        return users[user].pop()
    return None
