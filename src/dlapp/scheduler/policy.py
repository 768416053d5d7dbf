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

import heapq
import math
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TypeAlias

from dlapp.scheduler.placement import FreeIndex, explain_free
from dlapp.scheduler.queues import Limits, QueueTree
from dlapp.scheduler.snapshot import (
    AppHead,
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
    """Stop ``app_id`` (SIGTERM, grace, SIGKILL) and requeue it, to make room for ``for_app``
    of queue ``for_queue`` (whose claim on the freed resources later cycles honour)."""

    app_id: str
    for_app: str
    reason: str
    for_queue: str = ""


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
        self._rooms: dict[str, tuple[Resources, Resources]] = {}
        self._caps: dict[str, Resources] = {}
        self.preempts: list[Preempt] = []
        self.failed_shapes: dict[tuple[object, ...], str] = {}
        self.estimates: dict[tuple[object, ...], float | None] = {}
        self.preempting: set[str] = set()  # queues that asked for a preemption this cycle
        self.no_victims: set[tuple[str, tuple[object, ...]]] = set()
        self.victims: dict[str, str] = {}  # chosen this cycle -> the queue they make room for
        self._victim_order: list[tuple[RunningApp, str]] | None = None
        self._victim_queues: set[str] = set()

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
        cap = self._caps.get(path)
        if cap is None:
            if path not in self.tree.by_path:
                cap = self.total
            else:
                cap = self.tree.user_cap(path, self.limits_of(path).maximum)
            self._caps[path] = cap
        return cap

    # -- one app -------------------------------------------------------------------------------

    def within_guarantee(self, head: AppHead, path: str) -> bool:
        """Whether admitting ``head`` keeps its queue within its guarantee, on every resource
        the queue has a guarantee of."""
        if path not in self.tree.by_path:
            return False
        after, g = self.usage[path] + head.total, self.limits_of(path).guaranteed
        return (
            (g.gpus <= 0 or after.gpus <= g.gpus)
            and (g.cpus <= 0 or after.cpus <= g.cpus + 1e-9)
            and (g.memory_mb <= 0 or after.memory_mb <= g.memory_mb)
        )

    def _room(self, path: str) -> tuple[Resources, Resources]:
        """(room under the queue's and its ancestors' maxima, a user's cap) for leaf ``path``;
        cached until the next admission changes usage."""
        room = self._rooms.get(path)
        if room is None:
            rooms = [self.limits_of(p).maximum - self.usage[p] for p in self.chain(path)]
            headroom = Resources(
                min(r.cpus for r in rooms),
                min(r.memory_mb for r in rooms),
                min(r.gpus for r in rooms),
            )
            room = self._rooms[path] = (headroom, self.user_cap(path))
        return room

    def limit_reason(self, head: AppHead, path: str) -> str | None:
        need = head.total
        headroom, cap = self._room(path)
        if need.fits_in(headroom) and (need.fits_in(cap - self.user_usage[(path, head.user)])):
            return None
        for p in self.chain(path):
            maximum = self.limits_of(p).maximum
            if _binds(self.usage[p] + need, maximum, self.total):
                in_use = _say(self.usage[p], maximum)
                return f"queue {p} at its maximum ({in_use} in use, needs {need.describe()})"
        held = self.user_usage[(path, head.user)]
        if _binds(held + need, cap, self.total):
            return f"user limit: {head.user} holds {_say(held, cap)} in {path}"
        return None

    def shape(self, head: AppHead) -> tuple[object, ...]:
        return (
            head.request,
            head.num_containers,
            head.include_nodes,
            head.exclude_nodes,
            head.spread,
        )

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
        self._rooms.clear()
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
        tried = (path, self.shape(head))
        if tried in self.no_victims:
            return None
        stopping = [
            a
            for a in self.snapshot.running
            if (a.stopping and a.claimed_by in (None, path)) or self.victims.get(a.app_id) == path
        ]
        if stopping and self._fits_with(head, stopping):
            self.preempting.add(path)
            return f"waiting for {len(stopping)} stopping app(s) to release their resources"
        order = self._victims()
        over = {
            q
            for q in self._victim_queues
            if q != path
            and q in self.tree.by_path
            and self.tree.by_path[q].preemptible
            and _over(self.usage[q], self.limits_of(q).guaranteed) is not None
        }
        candidates = (
            a for a, q in order if q in over and not a.stopping and a.app_id not in self.victims
        )
        chosen: list[RunningApp] = []
        queue_use = dict(self.usage)
        for victim in candidates:
            vpath = self._path(victim.queue)
            if _over(queue_use[vpath], self.limits_of(vpath).guaranteed) is None:
                continue  # its queue is no longer borrowing: take nothing more from it
            after = queue_use[vpath] - victim.total
            queue_use[vpath] = after
            chosen.append(victim)
            self._free_up([victim], +1)
            placed = self.free.place(head)
            if placed is not None:
                for node_id in placed:
                    self.free.give(node_id, head.request)
                break
        else:
            self._free_up(chosen, -1)
            self.no_victims.add(tried)
            return None
        self._free_up(chosen, -1)
        for victim in list(reversed(chosen)):  # no more than needed
            rest = [v for v in chosen if v is not victim]
            if rest and self._fits_with(head, rest):
                chosen = rest
        self.preempting.add(path)
        self.victims.update((v.app_id, path) for v in chosen)
        used, glimit = self.usage[path], g
        for victim in chosen:
            vpath = self._path(victim.queue)
            vuse, vg = self.usage[vpath], self.limits_of(vpath).guaranteed
            self.preempts.append(
                Preempt(
                    app_id=victim.app_id,
                    for_app=head.app_id,
                    for_queue=path,
                    reason=f"preempted for {head.app_id}: queue {path} is under its guarantee "
                    f"({describe_gpus(used.gpus)} of {glimit.gpus} guaranteed) and {vpath} is over "
                    f"its guarantee ({describe_gpus(vuse.gpus)} of {vg.gpus} guaranteed)",
                )
            )
        return f"waiting for {len(chosen)} preempted app(s) to release their resources"

    def _victims(self) -> list[tuple[RunningApp, str]]:
        """Running apps (with their queue) in the order preemption takes them: queue most over
        its guarantee first, then lowest priority, then youngest. Sorted once a cycle."""
        if self._victim_order is None:
            pairs = [(a, self._path(a.queue)) for a in self.snapshot.running]
            rel = {q: self.relative_use(q)[0] for q in {q for _, q in pairs}}
            pairs.sort(key=lambda p: (-rel[p[1]], p[0].priority, -p[0].started_at, -p[0].seq))
            self._victim_order = pairs
            self._victim_queues = set(rel)
        return self._victim_order

    def _free_up(self, apps: Iterable[RunningApp], sign: int) -> None:
        """Pretend ``apps`` are gone (+1), or undo that (-1), on the working index."""
        for app in apps:
            for node_id in app.nodes:
                if node_id in self.free.nodes:
                    if sign > 0:
                        self.free.give(node_id, app.request)
                    else:
                        self.free.take(node_id, app.request)

    def _fits_with(self, head: AppHead, freed: Sequence[RunningApp]) -> bool:
        """Whether ``head`` would fit once ``freed`` are gone; the working index is unchanged."""
        self._free_up(freed, +1)
        placed = self.free.place(head)
        if placed is not None:
            for node_id in placed:
                self.free.give(node_id, head.request)
        self._free_up(freed, -1)
        return placed is not None


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
    pending: dict[str, _Line] = {}
    for path, line in lines.items():
        line.sort(key=lambda h: (-h.priority, h.seq, h.app_id))
        for i, h in enumerate(line, 1):
            position[h.app_id] = i
        pending[path] = _Line(line, cycle, path)

    def wait(h: AppHead, path: str, reason: str, estimate: float | None) -> None:
        cycle.decisions[h.app_id] = Wait(h.app_id, position[h.app_id], reason, estimate)

    # 2. first every queue up to its guarantee (preempting for it when that is on), then
    #    idle capacity lent out up to each queue's maximum; the least-served queue first
    for borrowing in (False, True):
        order = [(cycle.relative_use(path), path) for path, q_line in pending.items() if q_line]
        heapq.heapify(order)
        while order:
            _, path = heapq.heappop(order)
            queue_line = pending[path]
            head = queue_line.next()
            if head is None:
                continue
            if not borrowing and not cycle.within_guarantee(head, path):
                queue_line.put_back(head)  # its turn comes when capacity is lent out
                continue
            if _serve(cycle, head, path, borrowing, wait):
                queue_line.charged(head.user)
            else:
                queue = cycle.tree.by_path.get(path)
                if queue is not None and queue.ordering == "fifo":
                    blocker = head.app_id
                    while (behind := queue_line.next()) is not None:
                        why = f"waiting behind {blocker} (first in queue {path}, which is fifo)"
                        wait(behind, path, why, None)
                    continue
            heapq.heappush(order, (cycle.relative_use(path), path))
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


def _serve(
    cycle: _Cycle,
    head: AppHead,
    path: str,
    borrowing: bool,
    wait: Callable[[AppHead, str, str, float | None], None],
) -> bool:
    """Admit ``head`` if its queue's maximum, its user's limit and the cluster allow; else
    record why it waits (after trying preemption, for a queue under its guarantee)."""
    # 3. the queue's maximum and the user's limit
    limited = cycle.limit_reason(head, path)
    if limited is not None:
        wait(head, path, limited, None)
        return False
    # 4. the whole gang, by best fit
    placed = cycle.try_place(head)
    if isinstance(placed, tuple):
        cycle.admit(head, path, placed)
        return True
    # 5. preemption gives a queue its guarantee back (never for borrowing)
    preempting = None if borrowing else cycle.preempt_for(head, path)
    if preempting is not None:
        wait(head, path, preempting, None)
    else:
        wait(head, path, placed, cycle.estimate(head))
    return False


class _Line:
    """One queue's pending apps: top priority first, then the user with the smallest dominant
    share (a heap per priority; only the user who was just served changes place)."""

    def __init__(self, line: Sequence[AppHead], cycle: _Cycle, path: str) -> None:
        self.cycle, self.path = cycle, path
        self.cap = cycle.limits_of(path).maximum
        self.apps: dict[int, dict[str, deque[AppHead]]] = defaultdict(lambda: defaultdict(deque))
        for h in line:  # already in (priority, seq) order
            self.apps[h.priority][h.user].append(h)
        self.priorities = sorted(self.apps, reverse=True)
        self.heaps: dict[int, list[tuple[float, int, str]]] = {}
        for prio, users in self.apps.items():
            heap = [(self._share(u), apps[0].seq, u) for u, apps in users.items()]
            heapq.heapify(heap)
            self.heaps[prio] = heap
        self._last: tuple[int, str] | None = None
        self._held: AppHead | None = None

    def _share(self, user: str) -> float:
        return share(self.cycle.user_usage[(self.path, user)], self.cap)

    def __bool__(self) -> bool:
        return self._held is not None or any(self.heaps.values())

    def put_back(self, head: AppHead) -> None:
        """Return the app just taken: it is the next one again."""
        self._held = head

    def next(self) -> AppHead | None:
        if self._held is not None:
            head, self._held = self._held, None
            return head
        self._requeue_last()
        while self.priorities:
            prio = self.priorities[0]
            heap = self.heaps[prio]
            if not heap:
                self.priorities.pop(0)
                continue
            _, _, user = heapq.heappop(heap)
            self._last = (prio, user)
            return self.apps[prio][user].popleft()
        return None

    def charged(self, user: str) -> None:
        """The last app served was admitted: its user's share grew (re-sorted on next())."""

    def _requeue_last(self) -> None:
        if self._last is None:
            return
        prio, user = self._last
        self._last = None
        rest = self.apps[prio][user]
        if rest:
            heapq.heappush(self.heaps[prio], (self._share(user), rest[0].seq, user))
