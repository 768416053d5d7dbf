"""The scheduling policy: capacity queues, dominant resource fairness, gang, preemption.

``decide(heads, snapshot) -> list[Decision]`` is pure: no database, no Ray, no clock (the
snapshot carries ``now``). One cycle:

  0. a queue's longest-waiting app, once it has waited ``reserve_after``, starts now if it
     fits, or gets a *reservation*: room on the nodes closest to holding it, which no other
     app may take, so that it starts when the apps running there end, not when luck allows;
  1. resolve every queue's guaranteed / maximum capacity for this cluster size, and what each
     queue and each user holds now;
  2. serve queues in order of how much of their guarantee they use (a queue under its
     guarantee comes first; past that, idle capacity is lent up to each queue's maximum, the
     least-served queue first: dominant resource fairness, GPU being the scarce resource);
  3. inside a queue, its line (``ordering``: fifo, backfill, las, srtf; see ``ordering``);
  4. check the queue's maximum (and its ancestors'), the user's limit, then place the whole
     gang by best fit; an app that cannot start says why (``fifo`` queues stop there, the
     others let later apps that fit go ahead);
  5. when preemption is on: a queue under its guarantee whose app cannot be placed takes back
     what it needs from queues over their guarantee (most over first, lowest priority,
     youngest), for as many of its apps as its guarantee covers, no more victims than needed;
     and for the app that needs more than is left of its guarantee, from queues that stay
     further over theirs than it will be (``preemption.past_guarantee``, on by default);
     in a ``las`` / ``srtf`` queue an app also preempts the queue's own apps of a later level
     (more attained service; much longer remaining time).

``decide_changes(backlog, snapshot)`` runs the same cycle on waiting heads that the caller
keeps in a ``Backlog`` between cycles and answers only the admissions and preemptions.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TypeAlias, cast

from dlapp.scheduler.gpu_quotas import ModelQuotas
from dlapp.scheduler.ordering import (
    PROMOTED,
    Backlog,
    Group,
    QueueLine,
    Shape,
    by_user_share,
    las_level,
    queue_path,
    shape,
)
from dlapp.scheduler.placement import FreeIndex, default_workload
from dlapp.scheduler.queues import Limits, Queue, QueueTree
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
    """Start the app now; ``nodes[i]`` is the node_id for container ``i``, and
    ``devices[i]`` the indices of the shareable GPU devices it takes there (a fraction shares
    its one device; MIG instances and CPU-only containers: ``()``). Two admissions are equal
    when they admit the same app on the same nodes."""

    app_id: str
    nodes: tuple[str, ...]
    devices: tuple[tuple[int, ...], ...] = field(default=(), compare=False)


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
_SRTF_MARGIN = 2.0  # srtf preempts only apps with over this many times the head's time left
_EPS = 1e-9
_UNKNOWN = object()  # not in a cache (whose values may be None)
_FIT_SLACK = 1e-3  # more than the slack of any number of containers' GPU comparisons


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


def _binds(used: Resources, maximum: Resources, total: Resources) -> bool:
    """True when a queue's maximum, not the cluster's size, is what ``used`` runs into."""
    return (
        (used.gpus > maximum.gpus and maximum.gpus < total.gpus)
        or (used.cpus > maximum.cpus + _EPS and maximum.cpus < total.cpus - _EPS)
        or (used.memory_mb > maximum.memory_mb and maximum.memory_mb < total.memory_mb)
    )


def _clamp(r: Resources, free: Resources) -> Resources:
    """The part of ``r`` that ``free`` holds."""
    return Resources(
        max(0.0, min(r.cpus, free.cpus)),
        max(0, min(r.memory_mb, free.memory_mb)),
        max(0, min(r.gpus, free.gpus)),
    )


def _chain(tree: QueueTree, path: str) -> list[str]:
    """``path`` and its ancestors, itself first (only itself when the tree lacks it)."""
    return tree.ancestors(path) if path in tree.by_path else [path]


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


class _Cycle:
    """The working state of one call to ``decide``; only it changes while deciding."""

    def __init__(self, snapshot: Snapshot, explain: bool) -> None:
        self.snapshot = snapshot
        self.now = snapshot.now
        self.explain = explain  # work out every waiting app's reason and estimate
        self.tree: QueueTree = snapshot.queues
        self.total = snapshot.totals()
        self.limits = self.tree.resolve(self.total)
        self.free = FreeIndex(snapshot.nodes, snapshot.placement, snapshot.workload)
        self.usage: dict[str, Resources] = defaultdict(Resources)
        self.user_usage: dict[tuple[str, str], Resources] = defaultdict(Resources)
        self.path_of: dict[str, str] = {}
        self.line_shares: dict[str, dict[str, float]] = {}  # see _Line.shares
        self._charge_running(snapshot.running)
        # per GPU model: what queues are guaranteed, may hold, and hold
        # (its chain function holds the tree, not this cycle: no reference cycle, so all of
        # the cycle's working state is freed when ``decide`` returns, not by a full GC later)
        self.quotas = ModelQuotas(
            self.tree, snapshot.nodes, snapshot.running, self._path, partial(_chain, self.tree)
        )
        self.decisions: dict[str, Admit] = {}
        self.waits: dict[str, tuple[str, float | None]] = {}  # app -> (reason, estimate)
        self._rooms: dict[str, tuple[Resources, Resources]] = {}
        self._relative: dict[str, tuple[float, float, str]] = {}
        self._caps: dict[str, Resources] = {}
        self._capped_of: dict[str, tuple[list[tuple[str, Resources]], bool]] = {}
        self.preempts: list[Preempt] = []
        self.failed_shapes: dict[Shape, str] = {}
        self.estimates: dict[Shape, float | None] = {}
        self._ends: list[RunningApp] | None = None  # running apps with an end, soonest first
        self.claimed: dict[str, Resources] = defaultdict(Resources)  # promised by preemption
        # (guarantee or level, queue, shape) -> the best rank that found no victims
        self.no_victims: dict[tuple[str, str, Shape], float] = {}
        self.victims: dict[str, str] = {}  # chosen this cycle -> the queue they make room for
        self._victim_order: list[tuple[RunningApp, str]] | None = None
        self._victim_use: dict[str, Resources] | None = None
        self._victim_at: dict[str, list[int]] | None = None  # queue -> its apps in _victims()
        self._borrowing: dict[str, bool] = {}  # preemptible and over by _victim_use, per queue
        self._lending: list[tuple[RunningApp, str, float, Resources]] | None = None  # _lenders
        self._lending_stale: set[str] = set()  # queues whose rows there are out of date
        self._by_queue: dict[str, list[RunningApp]] | None = None
        self._ranks: dict[str, list[tuple[float, RunningApp]]] = {}
        self._futures: dict[str, tuple[FreeIndex, list[int]]] = {}
        self.reserved: dict[str, str] = {}  # app holding a reservation -> its Wait reason
        self._promised: dict[str, Resources] = defaultdict(Resources)  # reserved, per node
        self._by_free: list[NodeView] | None = None  # schedulable nodes, most free first
        self._starts: dict[str, float] = {}  # app holding a reservation -> when it can start
        self._ending: dict[str, list[tuple[float, Resources]]] | None = None  # per node
        self._freed: dict[str, tuple[Resources, list[tuple[float, Resources]]]] = {}
        self._short_failed: dict[Shape, float] = {}  # backfill: the shortest that did not fit
        self._over_failed: set[Shape] = set()  # could not start even on others' reserved room
        self._reserved_failed: set[str] = set()  # held room, and could not start on it
        self._holder_queue: dict[str, str] = {}  # app holding a reservation -> its queue
        self._holds: dict[str, list[tuple[str, Resources]]] = {}  # app -> its containers' room
        self._held: dict[str, list[tuple[str, Resources, tuple[int, ...]]]] = {}  # taken now

    # -- queues and usage ----------------------------------------------------------------------

    def _path(self, queue: str) -> str:
        path = self.path_of.get(queue)
        if path is None:
            path = self.path_of[queue] = queue_path(self.tree, queue)
        return path

    def _charge_running(self, running: Iterable[RunningApp]) -> None:
        """What each queue and user holds: summed per (queue, user) first, then charged up
        the tree once per pair (thousands of running apps, a few dozen pairs)."""
        held: dict[tuple[str, str], list[float]] = {}
        for app in running:
            n, r = len(app.nodes), app.request
            sums = held.get((app.queue, app.user))
            if sums is None:
                sums = held[(app.queue, app.user)] = [0.0, 0.0, 0.0]
            sums[0] += r.cpus * n
            sums[1] += r.memory_mb * n
            sums[2] += r.gpus * n
        for (queue, user), (cpus, memory, gpus) in held.items():
            self._charge(self._path(queue), user, Resources(cpus, int(memory), round(gpus, 9)))

    def limits_of(self, path: str) -> Limits:
        return self.limits.get(path) or Limits(Resources(), self.total)

    def chain(self, path: str) -> list[str]:
        return _chain(self.tree, path)

    def _charge(self, path: str, user: str, r: Resources) -> None:
        for p in self.chain(path):
            self.usage[p] = self.usage[p] + r
        self.user_usage[(path, user)] = self.user_usage[(path, user)] + r
        shares = self.line_shares.get(path)
        if shares:
            shares.pop(user, None)  # its share in its queue's line changed

    def relative_use(self, path: str) -> tuple[float, float, str]:
        """Sort key of queues: used/guaranteed (on the resources it is guaranteed some of),
        then dominant share of the cluster. Cached until the next admission."""
        known = self._relative.get(path)
        if known is not None:
            return known
        used = self.usage[path]
        relative = min(self.used_over_guarantee(path, used), self.quotas.relative(path))
        known = self._relative[path] = (relative, share(used, self.total), path)
        return known

    def used_over_guarantee(self, path: str, used: Resources) -> float:
        """``used`` over ``path``'s guarantee, on the resources it is guaranteed some of (the
        most used of them); inf for a queue guaranteed nothing."""
        return _over_guarantee(self.limits_of(path), used.cpus, used.memory_mb, used.gpus)

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
        the queue is guaranteed some of."""
        if path not in self.tree.by_path:
            return False
        if self.quotas.within_guarantee(head, path):
            return True  # within what it is guaranteed of a GPU model it accepts
        return not self.limits_of(path).over(self.usage[path] + head.total)

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

    def _capped(self, path: str) -> tuple[list[tuple[str, Resources]], bool]:
        """(the queues of ``path``'s chain with their maxima, where a maximum is below the
        cluster's size on some resource; whether a user's cap is): only those can bind (see
        ``_binds``). Once a cycle."""
        known = self._capped_of.get(path)
        if known is None:
            total = self.total

            def below(m: Resources) -> bool:
                return (
                    m.gpus < total.gpus
                    or m.cpus < total.cpus - _EPS
                    or m.memory_mb < total.memory_mb
                )

            maxima = [(p, self.limits_of(p).maximum) for p in self.chain(path)]
            known = ([(p, m) for p, m in maxima if below(m)], below(self.user_cap(path)))
            self._capped_of[path] = known
        return known

    def limit_reason(self, head: AppHead, path: str) -> str | None:
        capped, user_capped = self._capped(path)
        if not capped and not user_capped:
            return None  # no maximum, no user cap below the cluster's size: none binds
        need = head.total
        headroom, cap = self._room(path)
        if need.fits_in(headroom) and (need.fits_in(cap - self.user_usage[(path, head.user)])):
            return None
        for p, maximum in capped:
            if _binds(self.usage[p] + need, maximum, self.total):
                in_use = _say(self.usage[p], maximum)
                return f"queue {p} at its maximum ({in_use} in use, needs {need.describe()})"
        if user_capped:
            held = self.user_usage[(path, head.user)]
            if _binds(held + need, cap, self.total):
                return f"user limit: {head.user} holds {_say(held, cap)} in {path}"
        return None

    def try_place(self, head: AppHead, key: Shape | None = None) -> tuple[str, ...] | str:
        """Node ids, or the reason the gang does not fit now (``key``: its shape, if known)."""
        if key is None:
            key = shape(head)
        known = self.failed_shapes.get(key)
        if known is not None:
            return known
        nodes = self.free.place(head)
        if nodes is None:
            reason = self.free.explain(head) if self.explain else "no room"
            self.failed_shapes[key] = reason
            return reason
        return nodes

    def admit(self, head: AppHead, path: str, nodes: tuple[str, ...]) -> None:
        self._charge(path, head.user, head.total)
        self.quotas.charge(self.chain(path), nodes, head.request.gpus)
        self._rooms.clear()
        self._relative.clear()
        self.decisions[head.app_id] = Admit(head.app_id, nodes, self.free.slots(head))
        # an admission can only shrink free space: failed shapes stay failed this cycle

    def wait(self, head: AppHead, reason: str, estimate: float | None = None) -> None:
        if self.explain:
            self.waits[head.app_id] = (reason, estimate)

    def estimate(self, head: AppHead, key: Shape | None = None) -> float | None:
        """When ``head`` could start if nothing else started first: the earliest time at which
        running apps' max runtimes free enough room. None when no such bound is known.
        (``key``: its shape, if known.)"""
        if not self.explain:
            return None
        if key is None:
            key = shape(head)
        known = self.estimates.get(key, _UNKNOWN)
        if known is not _UNKNOWN:
            return cast("float | None", known)
        if len(self.estimates) >= _MAX_ESTIMATES:
            return None
        ending = self._ends
        if ending is None:  # once a cycle
            ending = self._ends = sorted(
                (a for a in self.snapshot.running if a.ends_by is not None),
                key=lambda a: a.ends_by or 0.0,
            )
        result: float | None = None
        if ending:
            sim = self._copy_free("pack")  # whether it fits, not where: the quick lookup
            for app in ending:
                sim.release(app)
                if sim.place(head) is not None:
                    result = max(app.ends_by or 0.0, self.now)
                    break
        self.estimates[key] = result
        return result

    def _copy_free(self, placement: str | None = None) -> FreeIndex:
        return self.free.copy(placement)

    # -- reservations --------------------------------------------------------------------------

    def reserve(self, lines: dict[str, _Line]) -> None:
        """Step 0: each queue's longest-waiting app (in a ``fifo`` queue: the first in line,
        which holds back the rest), once past its queue's ``reserve_after``, gets room set
        aside on the nodes nearest to holding it, kept from every other app
        (``hold_reserved``) but those of another queue taking its guarantee: that promise
        comes first (``place_over_reservations``)."""
        due: list[tuple[float, int, str, str]] = []
        for path, line in lines.items():
            q, oldest = line.ql.queue, line.ql.oldest
            if q is None or q.reserve_after_s is None or not oldest:
                continue
            since, seq, app_id = oldest[0]
            if q.ordering == "fifo":
                first = line.ql.heads[min(g.keys[0] for g in line.ql.groups.values())[4]]
                if first.waiting_since is None:
                    continue
                since, seq, app_id = first.waiting_since, first.seq, first.app_id
            if self.now - since >= q.reserve_after_s:
                due.append((since, seq, app_id, path))
        for since, _, app_id, path in sorted(due):
            line = lines[path]
            head = line.ql.heads[app_id]
            if self.limit_reason(head, path) is not None:
                continue  # its queue or user is at a limit: room would not help it
            nodes = self._set_aside(head)
            if nodes:
                self._holder_queue[app_id] = path
                self.reserved[app_id] = (
                    f"reserved after waiting {_hours(self.now - since)}: room for it is kept on "
                    f"{', '.join(nodes)} and it starts when the apps running there end"
                )

    def _set_aside(self, head: AppHead) -> list[str]:
        """Plan room for ``head`` on the nodes with the most free (not yet set aside) that a
        container fits in when empty; their names, or [] when it cannot be done."""
        r, promised, free = head.request, self._promised, self.free.free

        def room(n: NodeView) -> Resources:
            return n.total - promised[n.node_id] if n.node_id in promised else n.total

        def most_free(n: NodeView) -> tuple[float, float, str]:
            f, p = free[n.node_id], promised.get(n.node_id)
            if p is not None:
                return (p.gpus - f.gpus, p.cpus - f.cpus, n.name)
            return (-f.gpus, -f.cpus, n.name)

        if self._by_free is None:  # once a cycle: reservations are made before anything moves
            self._by_free = sorted(
                (n for n in self.free.nodes.values() if n.schedulable),
                key=lambda n: (-free[n.node_id].gpus, -free[n.node_id].cpus, n.name),
            )
        picky = bool(head.include_nodes or head.exclude_nodes or head.gpu_types)
        usable = (
            n
            for n in self._by_free
            if r.fits_in(room(n)) and (not picky or (head.allows(n) and head.accepts(n)))
        )
        # each node chosen holds a container at least, and room already promised only moves a
        # node down the order: the best are among the first (containers + promised) usable
        first = list(itertools.islice(usable, head.num_containers + len(promised)))
        nearest = sorted(first, key=most_free)
        plan: list[tuple[str, int]] = []
        left = head.num_containers
        for n in nearest:
            space, k = room(n), 0
            while k < left and r.scaled(k + 1).fits_in(space) and not (head.spread and k):
                k += 1
            if k:
                plan.append((n.node_id, k))
                left -= k
            if not left:
                break
        if left:
            return []
        names, starts = [], [self.now]
        for node_id, k in plan:
            self._promised[node_id] = self._promised[node_id] + r.scaled(k)
            names.append(self.free.nodes[node_id].name)
            starts.append(self._room_by(node_id, self._promised[node_id]))
        self._holds[head.app_id] = [(node_id, r) for node_id, k in plan for _ in range(k)]
        self._starts[head.app_id] = max(starts)
        return names

    def _room_by(self, node_id: str, need: Resources) -> float:
        """When ``need`` will be free on the node, from its running apps' ``max_runtime``:
        now when it is already; ``inf`` when an app that must end first states none."""
        if self._ending is None:
            self._ending = defaultdict(list)
            for app in self.snapshot.running:
                for n in app.nodes:
                    ends = math.inf if app.ends_by is None else app.ends_by
                    self._ending[n].append((ends, app.request))
            for apps in self._ending.values():
                apps.sort(key=lambda pair: pair[0])
        room = self.free.free[node_id]
        if need.fits_in(room):
            return self.now
        # the room after each app ends, summed as far as a call has needed (a node is asked
        # again for each reservation planned on it this cycle)
        known = self._freed.get(node_id)
        if known is None or known[0] is not room:
            known = self._freed[node_id] = (room, [])
        rooms = known[1]
        for ends, after in rooms:
            if need.fits_in(after):
                return ends
        after = rooms[-1][1] if rooms else room
        for ends, request in self._ending.get(node_id, [])[len(rooms) :]:
            after = after + request
            rooms.append((ends, after))
            if need.fits_in(after):
                return ends
        return math.inf

    def place_before_reservations(self, head: AppHead) -> tuple[str, ...] | None:
        """Backfill (Slurm's EASY): ``head``, which states a ``max_runtime``, may use room
        reserved for apps that will not need it before it ends."""
        left = head.remaining_s
        key = shape(head)
        if left is None or self._short_failed.get(key, math.inf) <= left:
            return None
        until = self.now + left
        lent = [a for a, taken in self._held.items() if taken and self._starts[a] >= until]
        if not lent:
            return None
        if not self._could_fit(head, lent):  # the answer placing it would give, sooner
            self._short_failed[key] = min(left, self._short_failed.get(key, math.inf))
            return None
        for app_id in lent:
            for node_id, part, devices in self._held[app_id]:
                self.free.give(node_id, part, devices or None)
        placed = self.free.place(head)
        free = self.free.free
        for app_id in lent:
            taken = []
            for node_id, part, _ in self._held[app_id]:
                part = _clamp(part, free[node_id])
                taken.append((node_id, part, self.free.take(node_id, part, mig=None)))
            self._held[app_id] = taken
        if placed is None:
            self._short_failed[key] = min(left, self._short_failed.get(key, math.inf))
        return placed

    def _could_fit(self, head: AppHead, lent: list[str]) -> bool:
        """False when ``head``'s containers cannot fit even with the room of ``lent`` given
        back: fewer nodes have its GPUs per container free than it has containers (each
        container needs that much on its node; CPU, memory and devices only ask more)."""
        need = head.request.gpus
        if need <= _FIT_SLACK:
            return True
        free, nodes = self.free.free, self.free.nodes
        room = {i: f.gpus for i, f in free.items() if nodes[i].schedulable}
        for app_id in lent:
            for node_id, part, _ in self._held[app_id]:
                room[node_id] += part.gpus
        fits = 0
        for gpus in room.values():
            fits += int((gpus + _FIT_SLACK) // need)
            if fits >= head.num_containers:
                return True
        return False

    def hold_reserved(self) -> None:
        """Before lending idle capacity: take the reserved room (what is still free of it)
        out of the free index, so no borrowing app lands there but the one it is for."""
        free = self.free.free
        for app_id, plan in self._holds.items():
            taken = []
            for node_id, r in plan:  # container by container: each on its own devices
                part = _clamp(r, free[node_id])
                if part.gpus > 0 or part.cpus > 0 or part.memory_mb > 0:
                    taken.append((node_id, part, self.free.take(node_id, part, mig=None)))
            self._held[app_id] = taken

    def place_over_reservations(self, head: AppHead, path: str) -> tuple[str, ...] | None:
        """Place ``head``, of a queue within its guarantee, on room that other queues' apps
        hold (and its own, when it holds some); what is left of theirs stays theirs."""
        others = [a for a, taken in self._held.items() if taken and self._holder_queue[a] != path]
        key = shape(head)
        if not others or key in self._over_failed:
            return None
        held = sum(part.gpus for a in others for _, part, _ in self._held[a])
        if self._free_gpus() + held < head.total.gpus - 1e-9:
            self._over_failed.add(key)
            return None
        own = self._held.pop(head.app_id, [])
        for app_id in [head.app_id, *others]:
            for node_id, part, devices in own if app_id == head.app_id else self._held[app_id]:
                self.free.give(node_id, part, devices or None)
        placed = self.free.place(head)
        if placed is None:
            for node_id, part, devices in own:
                self.free.take(node_id, part, devices or None)
            if own:
                self._held[head.app_id] = own
            else:  # no room of its own: the same would fail again this cycle
                self._over_failed.add(key)
        free = self.free.free
        for app_id in others:
            taken = []
            for node_id, part, _ in self._held[app_id]:
                left = _clamp(part, free[node_id])
                taken.append((node_id, left, self.free.take(node_id, left, mig=None)))
            self._held[app_id] = taken
        return placed

    def place_reserved(self, head: AppHead) -> tuple[str, ...] | str:
        """Place an app that holds a reservation: with its room given back to it when that is
        held; else its Wait reason."""
        if head.app_id in self._reserved_failed:  # free room only shrinks in a cycle
            return self.reserved[head.app_id]
        taken = self._held.pop(head.app_id, [])
        for node_id, part, devices in taken:
            self.free.give(node_id, part, devices or None)
        placed = self.free.place(head)
        if placed is not None:
            return placed
        for node_id, part, devices in taken:
            self.free.take(node_id, part, devices or None)
        self._held[head.app_id] = taken
        if head.app_id in self._holds:  # its room is held now: it failed with all of it
            self._reserved_failed.add(head.app_id)
        return self.reserved[head.app_id]

    def _free_gpus(self) -> float:
        free = self.free.free
        return sum(free[i].gpus for i, n in self.free.nodes.items() if n.schedulable)

    # -- preemption ----------------------------------------------------------------------------

    def preempt_for(self, head: AppHead, path: str) -> str | None:
        """Victims from queues over their guarantee so that ``head``, within its queue's
        guarantee, fits; returns the Wait reason, or None if that cannot be done."""
        if not self.tree.preemption or path not in self.tree.by_path:
            return None
        if self.limits_of(path).over(self.usage[path] + self.claimed[path] + head.total):
            return self._preempt_for_model(head, path)  # a GPU model's guarantee, maybe
        use = self._victim_uses()

        def candidates() -> Iterator[RunningApp]:
            # only the apps of queues borrowing now: use only shrinks while victims are taken,
            # so a queue not over its guarantee when this starts is not over it later on
            for app, q in self._borrowed(path):
                if not self.limits_of(q).over(use[q]):
                    continue  # its queue is no longer borrowing: take nothing more from it
                if self.quotas.protects(app, q):
                    continue  # it runs on GPUs its queue is guaranteed of their model
                yield app

        def reason(victim: RunningApp) -> str:
            vpath = self._path(victim.queue)
            return (
                f"preempted for {head.app_id}: queue {path} is under its guarantee "
                f"({self._guarantee_held(path)}) and {vpath} is over its guarantee "
                f"({self._guarantee_held(vpath)})"
            )

        return self._take_back(
            head, path, lambda: self._would_take(candidates()), -math.inf, reason
        )

    def _guarantee_held(self, path: str) -> str:
        """What a queue holds of its guarantee, as preemption reasons say it."""
        g = self.limits_of(path).guaranteed
        return f"{describe_gpus(self.usage[path].gpus)} of {g.gpus} guaranteed"

    def short_of_guarantee(self, path: str) -> bool:
        """Whether leaf ``path`` holds (with what preemption is freeing for it) fewer GPUs than
        it is guaranteed."""
        if path not in self.tree.by_path:
            return False
        g = self.limits_of(path).guaranteed.gpus
        return g > 0 and (self.usage[path] + self.claimed[path]).gpus < g - _EPS

    def preempt_past_guarantee(self, head: AppHead, path: str) -> str | None:
        """For a queue under its guarantee whose ``head`` needs more than is left of it (it
        would otherwise wait until borrowers end): victims from queues over their guarantee
        that, after losing them, still use more of their guarantee than ``path`` will with
        ``head`` (so no queue ends less served than the one it gave way to, and the two never
        take the room back and forth). The Wait reason, or None."""
        if not self.tree.preemption or not self.tree.preempt_past_guarantee:
            return None
        if not self.short_of_guarantee(path) or head.total.gpus <= 0:
            return None  # at its guarantee already (or not in the tree): it takes none
        after = self.used_over_guarantee(path, self.usage[path] + self.claimed[path] + head.total)

        def reason(victim: RunningApp) -> str:
            vpath = self._path(victim.queue)
            return (
                f"preempted for {head.app_id}: queue {path} is under its guarantee "
                f"({self._guarantee_held(path)}) and {head.app_id} needs more than is left of it; "
                f"{vpath} is further over its guarantee ({self._guarantee_held(vpath)})"
            )

        return self._take_back(
            head, path, lambda: self._lenders_taken(path, after), -math.inf, reason, "past"
        )

    def _lenders(self) -> list[tuple[RunningApp, str, float, Resources]]:
        """The apps of preemptible queues in the order preemption takes them (``_victims``),
        each with what its queue would use of its guarantee without it
        (``used_over_guarantee``; -inf while the queue is not over its guarantee: not
        borrowing, it gives nothing) and the queue's use that says so. Kept between calls:
        ``choose`` marks the queues whose use it changed, and only their apps are worked out
        again."""
        rows, use = self._lending, self._victim_uses()
        if rows is None:
            rows = self._lending = [
                self._lender(app, q, use[q]) for app, q in self._victims() if self._preemptible(q)
            ]
        elif self._lending_stale:
            stale = self._lending_stale
            for i, (app, q, _, _) in enumerate(rows):
                if q in stale:
                    rows[i] = self._lender(app, q, use[q])
            stale.clear()
        return rows

    def _lender(
        self, app: RunningApp, q: str, used: Resources
    ) -> tuple[RunningApp, str, float, Resources]:
        return (app, q, self._without(q, used.cpus, used.memory_mb, used.gpus, app.total), used)

    def _lenders_taken(self, path: str, after: float) -> list[RunningApp]:
        """The victims ``preempt_past_guarantee`` would take one by one if none of their
        prefixes made room (``_would_take``, for its candidates): apps of queues over their
        guarantee that, without them, still use more of it than ``after``, in the order
        preemption takes them, each queue's use falling as its apps are taken. Worked out on
        the amounts (``Resources`` arithmetic, unrolled: the same floats), as this is the
        hottest loop of a saturated replay."""
        protecting, victims = self.quotas.active, self.victims
        left: dict[str, tuple[float, int, float]] = {}  # queue -> its use, once it gave one
        # queue -> the sizes that did not give at its use now (a queue's apps come in few
        # sizes); None once it is no longer over its guarantee (none of its apps gives then:
        # ``_without`` is -inf)
        refused: dict[str, set[tuple[float, int, float]] | None] = {}
        taken: list[RunningApp] = []
        for app, q, without, used in self._lenders():
            # its queue is borrowing at ``used`` (else ``without`` is -inf), where ``without``
            # is what it would use of its guarantee without the app; both only fall as
            # victims are taken
            if q == path or without <= after or app.stopping or app.app_id in victims:
                continue
            if protecting and self.quotas.protects(app, q):
                continue
            t = app.total
            now = left.get(q)
            if now is None:
                cpus, memory, gpus = used.cpus, used.memory_mb, used.gpus
            else:
                no = refused.get(q, ())
                size = (t.cpus, t.memory_mb, t.gpus)
                if no is None or size in no:
                    continue
                cpus, memory, gpus = now
                rest = self._without(q, cpus, memory, gpus, t)
                if rest <= after:
                    if rest == -math.inf:
                        refused[q] = None
                    elif isinstance(no, set):
                        no.add(size)
                    else:
                        refused[q] = {size}
                    continue
            left[q] = (cpus - t.cpus, memory - t.memory_mb, round(gpus - t.gpus, 9))
            refused.pop(q, None)  # its use fell: sizes refused before may give now
            taken.append(app)
        return taken

    def _without(self, q: str, cpus: float, memory: int, gpus: float, total: Resources) -> float:
        """What queue ``q``, using these amounts, would use of its guarantee without
        ``total``: ``used_over_guarantee(q, used - total)``, the difference unrolled (the same
        floats, no ``Resources`` built); -inf when it is not over its guarantee at these
        amounts (not borrowing, it gives nothing)."""
        limits = self.limits_of(q)
        if not limits.over_amounts(cpus, memory, gpus):
            return -math.inf
        rest = (cpus - total.cpus, memory - total.memory_mb, round(gpus - total.gpus, 9))
        return _over_guarantee(limits, *rest)

    def _preempt_for_model(self, head: AppHead, path: str) -> str | None:
        """Victims on GPUs of a model ``head``'s queue is guaranteed (and may hold ``head``
        within), from queues holding more of that model than they are guaranteed of it."""
        models = self.quotas.guaranteed_models(head, path)
        if not models:
            return None
        typed = replace(head, gpu_types=models)

        def candidates() -> Iterator[RunningApp]:
            for app, q in self._victims():
                if q == path or not self._preemptible(q) or app.app_id in self.victims:
                    continue
                if any(self.quotas.on_models(app, (m,)) and self.quotas.over(q, m) for m in models):
                    yield app

        def reason(victim: RunningApp) -> str:
            return (
                f"preempted for {head.app_id}: queue {path} is guaranteed "
                f"{' / '.join(models)} GPUs it does not hold, and "
                f"{self._path(victim.queue)} holds more of them than it is guaranteed"
            )

        return self._take_back(
            typed, path, lambda: self._would_take(candidates()), -math.inf, reason
        )

    def preempt_within(
        self, head: AppHead, path: str, q: Queue | None, promoted: bool
    ) -> str | None:
        """In a ``las`` / ``srtf`` queue: victims among the queue's own running apps of a
        later level, so that ``head`` fits; the Wait reason, or None."""
        if (
            not self.tree.preemption
            or q is None
            or not q.preemptible
            or q.ordering not in ("las", "srtf")
            or promoted  # a promoted app waits for room (or its reservation), it takes none
        ):
            return None
        grace = self.tree.preemption_grace_s
        if q.ordering == "las":
            rank: float = las_level(head.attained_gpu_s, q.levels_gpu_h)
            bar = rank  # a victim's level must be above the head's

            def reason(victim: RunningApp) -> str:
                level = las_level(victim.attained_gpu_s(self.now), q.levels_gpu_h)
                return (
                    f"preempted for {head.app_id} in queue {path} (least attained service): "
                    f"it has had {victim.attained_gpu_s(self.now) / 3600:.1f} GPU-hours "
                    f"(level {level}), {head.app_id} {head.attained_gpu_s / 3600:.1f} "
                    f"(level {int(rank)})"
                )
        else:
            remaining = head.remaining_s
            if remaining is None:
                return None
            rank = remaining
            bar = _SRTF_MARGIN * remaining + grace  # a victim's time left must be above this

            def reason(victim: RunningApp) -> str:
                left = victim.remaining_s(self.now)
                said = "no max_runtime" if left is None else f"{_hours(left)} left"
                return (
                    f"preempted for {head.app_id} in queue {path} (shortest remaining time): "
                    f"it has {said}, {head.app_id} {_hours(remaining)}"
                )

        ranked = self._ranked(path, q)
        if not ranked or ranked[0][0] <= bar:
            return None  # no running app of the queue is far enough behind
        victims = itertools.takewhile(lambda pair: pair[0] > bar, ranked)
        return self._take_back(
            head, path, lambda: self._would_take(a for _, a in victims), rank, reason, "level"
        )

    def _ranked(self, path: str, q: Queue) -> list[tuple[float, RunningApp]]:
        """The queue's running apps with how far behind each is (las: its level; srtf: its
        time left, inf with none), the furthest first, then the youngest. Once a cycle."""
        ranked = self._ranks.get(path)
        if ranked is None:
            now, keyed = self.now, []
            for app in self._running_in(path):
                if q.ordering == "las":
                    behind = float(las_level(app.attained_gpu_s(now), q.levels_gpu_h))
                else:
                    left = app.remaining_s(now)
                    behind = math.inf if left is None else left
                keyed.append((-behind, -app.started_at, -app.seq, app.app_id, app))
            keyed.sort()
            ranked = self._ranks[path] = [(-k[0], k[-1]) for k in keyed]
        return ranked

    def _take_back(
        self,
        head: AppHead,
        path: str,
        take: Callable[[], list[RunningApp]],
        rank: float,
        reason: Callable[[RunningApp], str],
        kind: str = "guarantee",
    ) -> str | None:
        """Room for ``head`` among what is already leaving for ``path``, else victims taken
        from ``take()`` in order, no more than needed. The Wait reason, or None. ``take()``:
        the victims that would be taken one by one if no fewer made room (``_would_take``)."""
        future, counts = self._future(path)
        placed = future.place(head)
        if placed is not None:  # apps already stopping for this queue make room enough
            self.claimed[path] = self.claimed[path] + head.total
            return f"waiting for {counts[0]} stopping app(s) to release their resources"
        tried = (kind, path, shape(head))
        if self.no_victims.get(tried, math.inf) <= rank:
            return None  # a head as deserving found none this cycle
        use = self._victim_uses()
        taken = take()
        if not _could_make_room(head, future, taken):
            self.no_victims[tried] = min(rank, self.no_victims.get(tried, math.inf))
            return None  # not even all of them together would

        def choose(victim: RunningApp, sign: int) -> None:
            vpath = self._path(victim.queue)
            self._borrowing.pop(vpath, None)
            self._lending_stale.add(vpath)
            use[vpath] = use[vpath] - victim.total if sign > 0 else use[vpath] + victim.total
            self._lend(future, victim, sign)

        chosen: list[RunningApp] = []
        for victim in taken:
            chosen.append(victim)
            choose(victim, +1)
            placed = future.place(head)
            if placed is not None:
                break
        else:
            for victim in chosen:
                choose(victim, -1)
            self.no_victims[tried] = min(rank, self.no_victims.get(tried, math.inf))
            return None
        future.unplace(head)
        for victim in list(reversed(chosen)):  # no more than needed
            if len(chosen) < 2:
                break
            choose(victim, -1)
            trial = future.place(head)
            if trial is None:
                choose(victim, +1)
                continue
            future.unplace(head)
            chosen.remove(victim)
        placed = future.place(head)  # the room it will have, no one else's this cycle
        assert placed is not None
        for victim in chosen:
            self.victims[victim.app_id] = path
            self.preempts.append(
                Preempt(
                    app_id=victim.app_id, for_app=head.app_id, for_queue=path, reason=reason(victim)
                )
            )
        counts[0] += len(chosen)
        self.claimed[path] = self.claimed[path] + head.total
        return f"waiting for {len(chosen)} preempted app(s) to release their resources"

    def _would_take(self, candidates: Iterator[RunningApp]) -> list[RunningApp]:
        """The victims ``_take_back`` would take one by one from ``candidates`` if none of
        their prefixes made room: the same apps in the same order (the candidates read only
        what the victims leave their queues, set here as they are taken and put back after),
        found without touching the free index."""
        use = self._victim_uses()
        saved: dict[str, Resources] = {}
        taken: list[RunningApp] = []
        for victim in candidates:
            if victim.stopping or victim.app_id in self.victims:
                continue
            vpath = self._path(victim.queue)
            if vpath not in saved:
                saved[vpath] = use[vpath]
            use[vpath] = use[vpath] - victim.total
            taken.append(victim)
        use.update(saved)
        return taken

    def _preemptible(self, path: str) -> bool:
        q = self.tree.by_path.get(path)
        return q is None or q.preemptible  # apps of a removed queue have no guarantee to keep

    def _victims(self) -> list[tuple[RunningApp, str]]:
        """Running apps (with their queue) in the order preemption takes them: queue most over
        its guarantee first, then lowest priority, then youngest. Sorted once a cycle."""
        if self._victim_order is None:
            pairs = [(a, self._path(a.queue)) for a in self.snapshot.running if not a.stopping]
            rel = {q: self.relative_use(q)[0] for q in {q for _, q in pairs}}
            pairs.sort(key=lambda p: (-rel[p[1]], p[0].priority, -p[0].started_at, -p[0].seq))
            self._victim_order = pairs
        return self._victim_order

    def _borrowed(self, path: str) -> Iterator[tuple[RunningApp, str]]:
        """``_victims()`` of the preemptible queues other than ``path`` that are over their
        guarantee by ``_victim_uses()`` now, in the same order."""
        order = self._victims()
        if self._victim_at is None:
            self._victim_at = defaultdict(list)
            for i, (_, q) in enumerate(order):
                self._victim_at[q].append(i)
        use, borrowing = self._victim_uses(), self._borrowing
        queues = []
        for q in self._victim_at:
            over = borrowing.get(q)
            if over is None:
                over = borrowing[q] = self._preemptible(q) and self.limits_of(q).over(use[q])
            if over and q != path:
                queues.append(q)
        if len(queues) == 1:
            at: Iterable[int] = self._victim_at[queues[0]]
        else:
            at = sorted(i for q in queues for i in self._victim_at[q])
        return (order[i] for i in at)

    def _victim_uses(self) -> dict[str, Resources]:
        """What each leaf queue will hold once the apps already stopping have gone (and, as
        the cycle goes on, the victims chosen in it)."""
        if self._victim_use is None:
            use = {p: self.usage[p] for p in self.usage}
            for app in self.snapshot.running:
                if app.stopping:
                    p = self._path(app.queue)
                    use[p] = use[p] - app.total
            self._victim_use = defaultdict(Resources, use)
        return self._victim_use

    def _running_in(self, path: str) -> list[RunningApp]:
        if self._by_queue is None:
            self._by_queue = defaultdict(list)
            for app in self.snapshot.running:
                if not app.stopping:
                    self._by_queue[self._path(app.queue)].append(app)
        return self._by_queue.get(path, [])

    def _future(self, path: str) -> tuple[FreeIndex, list[int]]:
        """The free index as it will be for ``path`` once what leaves for it has gone: apps
        stopping for it (or for no queue) and the victims chosen for it this cycle; and the
        number of those apps."""
        made = self._futures.get(path)
        if made is None:
            future = self._copy_free("pack")  # whether room will be there, not where
            count = 0
            for app in self.snapshot.running:
                if app.stopping and app.claimed_by in (None, path):
                    self._lend(future, app, +1)
                    count += 1
            made = self._futures[path] = (future, [count])
        return made

    @staticmethod
    def _lend(index: FreeIndex, app: RunningApp, sign: int) -> None:
        """Pretend ``app`` is gone from ``index`` (+1), or undo that (-1)."""
        if sign > 0:
            index.release(app)
        else:
            index.retake(app)

    # -- the cycle -----------------------------------------------------------------------------

    def run(self, backlog: Backlog) -> dict[str, _Line]:
        lines: dict[str, _Line] = {}
        for path, ql in backlog.lines.items():
            if ql.heads and ql.queue is not None and ql.queue.is_leaf:
                lines[path] = _Line(ql, self)
        # 0. reservations for apps that have waited too long
        self.reserve(lines)
        self.hold_reserved()
        # 1-2. first every queue up to its guarantee (preempting for it when that is on), then
        #      idle capacity lent out up to each queue's maximum; the least-served queue first
        #      (when every queue orders by the same rank, las or srtf, lent capacity goes to
        #      the best-ranked app of any queue: the shortest, or least served, first)
        orderings = {line.ql.queue.ordering for line in lines.values() if line.ql.queue}
        by_rank = len(orderings) == 1 and orderings <= {"las", "srtf"}

        def key(path: str, borrowing: bool) -> tuple[object, ...]:
            if borrowing and by_rank:  # but a queue short of its guarantee first
                if self.short_of_guarantee(path):
                    return (0, self.relative_use(path))
                return (1, lines[path].peek(), self.relative_use(path))
            return (self.relative_use(path),)

        for borrowing in (False, True):
            order = [(key(path, borrowing), path) for path, line in lines.items() if line]
            heapq.heapify(order)
            while order:
                _, path = heapq.heappop(order)
                line = lines[path]
                head = line.next()
                while head is not None:  # the same queue as long as it would come first again
                    if not borrowing and not self.within_guarantee(head, path):
                        line.put_back(head)  # its turn comes when capacity is lent out
                        break
                    admitted = self.serve(head, path, line, borrowing)
                    if not admitted and line.fifo:
                        line.blocked_by = head.app_id  # 3. a fifo line stops at its first app
                        break
                    entry = (key(path, borrowing), path)
                    if order and order[0] < entry:  # the entries are distinct (one a queue)
                        heapq.heappush(order, entry)
                        break
                    # else: pushed, it would be popped right away (an app that waits changes
                    # no queue's key; one admitted may not either)
                    if not admitted and borrowing and not by_rank and self._quick(line):
                        head = self._wait_known(line)  # the same key until one is admitted
                    else:
                        head = line.next()
        return lines

    def _quick(self, line: _Line) -> bool:
        """Whether, in this queue, an app lent capacity that is not admitted can only be one
        whose shape is known not to fit: no maximum or user cap that binds, no GPU-model
        quota, no preemption within the queue, no reserved room held."""
        capped, user_capped = self._capped(line.path)
        return not (capped or user_capped or self.quotas.active or line.within or self._held)

    def _wait_known(self, line: _Line) -> AppHead | None:
        """What ``serve`` does for the line's next apps while it is ``_quick`` and lending:
        each app of a shape known not to fit waits for that reason (and its group with it);
        returns the first app that needs more (``serve`` it), or None when none is left."""
        ql, failed, waits, reserved = line.ql, self.failed_shapes, self.waits, self.reserved
        estimates, dropped = self.estimates, line.dropped
        while True:
            head = line.next()
            if head is None or head.app_id in reserved:
                return head
            key = ql.shape_of(head.app_id)
            reason = failed.get(key)
            if reason is None:
                return head
            known = estimates.get(key, _UNKNOWN)
            if known is _UNKNOWN:
                estimate = self.estimate(head, key)
            else:
                estimate = cast("float | None", known)
            why = (reason, estimate)
            if self.explain:
                waits[head.app_id] = why
            dropped[line.last_gid()] = why  # line.drop_group(reason, estimate)

    def serve(self, head: AppHead, path: str, line: _Line, borrowing: bool) -> bool:
        """Admit ``head`` if its queue's maximum, its user's limit and the cluster allow; else
        record why it waits (after trying preemption)."""
        # 4. the queue's maximum and the user's limit: the same for the rest of its group
        limited = self.limit_reason(head, path)
        if limited is not None:
            self.wait(head, limited)
            line.drop_group(limited, None)
            return False
        # ... and the queue's maxima per GPU model: the models it may still land on
        typed = self.quotas.restrict(head, path) if self.quotas.active else head
        if isinstance(typed, str):
            self.wait(head, typed)
            line.drop_group(typed, None)
            return False
        # the whole gang, by best fit (an app holding a reservation gets its room back)
        held = self.reserved.get(head.app_id)
        key = line.ql.shape_of(head.app_id)  # the one tuple of its shape: quick to look up
        if held is not None:
            placed = self.place_reserved(typed)
        else:
            placed = self.try_place(typed, key if typed is head else None)
        if (
            isinstance(placed, str)
            and self._held
            and (
                not borrowing or self.short_of_guarantee(path)  # its guarantee's promise first
            )
        ):
            placed = self.place_over_reservations(typed, path) or placed
        if isinstance(placed, str) and held is None and self._held:
            placed = self.place_before_reservations(typed) or placed
        if isinstance(placed, tuple):
            self.admit(head, path, placed)
            return True
        # 5. preemption: a guarantee back (never for borrowing), or a later level's room
        why = None if borrowing else self.preempt_for(head, path)
        if why is None and borrowing:  # more than is left of its guarantee, maybe
            why = self.preempt_past_guarantee(head, path)
        if why is None and line.within:
            promoted = line.ql.promoted(head.app_id, self.now)
            why = self.preempt_within(head, path, line.ql.queue, promoted)
        if why is not None:
            self.wait(head, why)  # the next app of its group may preempt too
            return False
        estimate = self.estimate(head, key)
        if self.explain:
            self.waits[head.app_id] = (placed if held is None else held, estimate)
        if held is None:  # the rest of its group has no reserved room: none of it fits
            line.drop_group(placed, estimate)
        return False

    def answer(
        self, heads: Sequence[AppHead], backlog: Backlog, lines: dict[str, _Line]
    ) -> list[Decision]:
        """Step 6: one Admit or Wait per head in the caller's order, then the preemptions.
        Positions count only the apps still waiting, in each queue's line order."""
        out: dict[str, Decision] = dict(self.decisions)
        waits = self.waits
        for path, ql in backlog.lines.items():
            line = lines.get(path)
            names = (path, path.removeprefix("root."))
            for position, app_id in enumerate(ql.in_order(self.decisions, self.now), 1):
                known = waits.get(app_id)
                if known is None:
                    known = self._why(app_id, ql, line)
                reason, estimate = known
                if line is not None:
                    asked = ql.heads[app_id].queue
                    if asked not in names:
                        reason += f" (its queue {asked} is not configured: it waits in {path})"
                out[app_id] = Wait(app_id, position, reason, estimate)
        return [out[h.app_id] for h in heads] + list(self.preempts)

    def _why(self, app_id: str, ql: QueueLine, line: _Line | None) -> tuple[str, float | None]:
        known = self.waits.get(app_id)
        if known is not None:
            return known
        if app_id in self.reserved:
            return (self.reserved[app_id], None)
        if line is None:
            if ql.queue is not None:
                return (f"queue {ql.path} has child queues now: held until it is a leaf", None)
            return (
                f"queue {ql.path} is not in the queue configuration ({self.tree.source}): "
                "held until it is configured again",
                None,
            )
        if line.blocked_by is not None:
            return (
                f"waiting behind {line.blocked_by} (first in queue {ql.path}, which is fifo)",
                None,
            )
        dropped = line.dropped.get(line.gid_of(app_id))
        if dropped is not None:
            return dropped
        return ("waiting for its turn in the line", None)  # not reached: no capacity left


# a line's heap entry: (-priority, band, user share, rank, seq, app_id, gid, stream)
_Entry: TypeAlias = tuple[int, int, float, float, int, str, int, int]


class _Line:
    """One queue's line for one cycle: a heap of its groups' next heads, merged in line order
    (see ``ordering``). Reads the queue's ``QueueLine``, never changes it."""

    def __init__(self, ql: QueueLine, cycle: _Cycle) -> None:
        self.ql, self.cycle, self.path = ql, cycle, ql.path
        self.now = cycle.now
        self.fifo = ql.queue is not None and ql.queue.ordering == "fifo"
        q, tree = ql.queue, cycle.tree
        # whether ``preempt_within`` may preempt for its apps (else it answers None)
        self.within = bool(
            tree.preemption and q is not None and q.preemptible and q.ordering in ("las", "srtf")
        )
        self.by_share = by_user_share(ql.queue)
        self.cap = cycle.limits_of(self.path).maximum
        self.heap: list[_Entry] = []
        self.groups: dict[int, Group] = {}
        self.at_promo: dict[int, int] = {}  # gid -> index of its next promoted head
        self.at_key: dict[int, int] = {}  # gid -> index of its next head by key
        self.promoted_count: dict[int, int] = {}
        self.dropped: dict[int, tuple[str, float | None]] = {}
        self.served: set[str] = set()
        self.blocked_by: str | None = None
        # the heap entry of the last head taken: until the next push (_last), and for
        # put_back (_taken)
        self._last: _Entry | None = None
        self._taken: _Entry | None = None
        self._held: AppHead | None = None
        self._held_key: tuple[float, ...] = (math.inf,)
        # user -> dominant share of the queue's maximum; dropped when the user is charged
        self.shares: dict[str, float] = cycle.line_shares.setdefault(self.path, {})
        # each group's first head of each stream (what ``_push`` would push, nothing being
        # served yet), then one heapify: the entries are distinct, so the heap pops the same
        heap, now, heads, by_share = self.heap, self.now, ql.heads, self.by_share
        for group in ql.groups.values():
            gid = group.gid
            self.groups[gid] = group
            if group.promos:  # (a group without: no promoted count nor cursor, read as 0)
                n = _count_promoted(group.promos, now)
                self.promoted_count[gid] = n
                if n:
                    when, seq, app_id = group.promos[0]
                    entry = (-heads[app_id].priority, PROMOTED, 0.0, when, seq, app_id, gid, 0)
                    heap.append(entry)
                    self.at_promo[gid] = 1
            keys = group.keys
            if keys:  # (its cursor: 1 until it moves, read as 1 when it has none)
                prio, band, rank, seq, app_id = keys[0]
                user_share = self._share(group.user) if by_share else 0.0
                heap.append((prio, band, user_share, rank, seq, app_id, gid, 1))
            else:
                self.at_key[gid] = 0
        heapq.heapify(heap)

    def __bool__(self) -> bool:
        return self._held is not None or bool(self.heap)

    def gid_of(self, app_id: str) -> int:
        return self.ql.group_of(app_id).gid

    def _share(self, user: str) -> float:
        known = self.shares.get(user)
        if known is None:
            used = self.cycle.user_usage.get((self.path, user))
            known = self.shares[user] = 0.0 if used is None else share(used, self.cap)
        return known

    def _push(self, gid: int, stream: int) -> None:
        """Push the next head of a group's stream (0: promoted, by promotion time; 1: all, by
        key) that no stream has served yet."""
        group, served = self.groups[gid], self.served
        if stream == 0:
            at, promos = self.at_promo.get(gid, 0), group.promos
            end = self.promoted_count.get(gid, 0)
            while at < end and promos[at][2] in served:
                at += 1
            if at < end:
                when, seq, app_id = promos[at]
                at += 1
                prio = -self.ql.heads[app_id].priority
                heapq.heappush(self.heap, (prio, PROMOTED, 0.0, when, seq, app_id, gid, 0))
            self.at_promo[gid] = at
        else:
            at, keys = self.at_key.get(gid, 1), group.keys
            while at < len(keys) and keys[at][4] in served:
                at += 1
            if at < len(keys):
                prio, band, rank, seq, app_id = keys[at]
                at += 1
                user_share = self._share(group.user) if self.by_share else 0.0
                heapq.heappush(self.heap, (prio, band, user_share, rank, seq, app_id, gid, 1))
            self.at_key[gid] = at

    def put_back(self, head: AppHead) -> None:
        """Return the app just taken: it is the next one again."""
        self._held = head
        self._held_key = (math.inf,) if self._taken is None else self._taken[:5]

    def peek(self) -> tuple[float, ...]:
        """Where the next app stands in the line (priority, band, share, rank, seq); (inf,)
        when none is left. Takes nothing."""
        if self._held is not None:
            return self._held_key
        if self._last is not None:
            gid, stream = self._last[6], self._last[7]
            self._last = None
            if gid not in self.dropped:
                self._push(gid, stream)
        while self.heap:
            prio, band, user_share, rank, seq, app_id, gid, stream = self.heap[0]
            if gid in self.dropped:
                heapq.heappop(self.heap)
            elif app_id in self.served:
                heapq.heappop(self.heap)
                self._push(gid, stream)
            elif (
                stream == 1
                and self.by_share
                and (now_share := self._share(self.groups[gid].user)) > user_share + 1e-12
            ):
                heapq.heapreplace(
                    self.heap, (prio, band, now_share, rank, seq, app_id, gid, stream)
                )
            else:
                return (prio, band, user_share, rank, seq)
        return (math.inf,)

    def next(self) -> AppHead | None:
        if self._held is not None:
            head, self._held = self._held, None
            return head
        last = self._last
        if last is not None:
            self._last = None
            if last[6] not in self.dropped:
                self._push(last[6], last[7])
        heap, dropped, served = self.heap, self.dropped, self.served
        while heap:
            entry = heapq.heappop(heap)
            gid, app_id = entry[6], entry[5]
            if gid in dropped:
                continue
            if app_id in served:  # its other stream took it
                self._push(gid, entry[7])
                continue
            if entry[7] == 1 and self.by_share:
                now_share = self._share(self.groups[gid].user)
                if now_share > entry[2] + 1e-12:  # its user was served since: re-sort
                    prio, band, _, rank, seq, _, _, stream = entry
                    new = (prio, band, now_share, rank, seq, app_id, gid, stream)
                    heapq.heappush(heap, new)
                    continue
            served.add(app_id)
            self._last = self._taken = entry
            return self.ql.heads[app_id]
        return None

    def last_gid(self) -> int:
        """The group of the last app taken (``next`` took one since the last push)."""
        assert self._last is not None
        return self._last[6]

    def drop_group(self, reason: str, estimate: float | None) -> None:
        """The last app taken could not start, nor can the rest of its group this cycle."""
        if self._last is not None:
            self.dropped[self._last[6]] = (reason, estimate)


def _over_guarantee(limits: Limits, cpus: float, memory_mb: float, gpus: float) -> float:
    """A use (its three amounts) over a queue's guarantee, on the resources it is guaranteed
    some of (the most used of them); inf for a queue guaranteed nothing."""
    g = limits.guaranteed
    on_gpus, on_cpus, on_memory = limits.guarded
    worst = -math.inf
    for on, used, guaranteed in (
        (on_gpus, gpus, g.gpus),
        (on_cpus, cpus, g.cpus),
        (on_memory, memory_mb, g.memory_mb),
    ):
        if on:
            ratio = used / guaranteed if guaranteed > 0 else (math.inf if used > _EPS else 0.0)
            if ratio > worst:
                worst = ratio
    return math.inf if worst == -math.inf else worst


def _could_make_room(head: AppHead, future: FreeIndex, victims: Iterable[RunningApp]) -> bool:
    """Whether ``head``'s containers could fit, counting GPUs only, on what is free in
    ``future``'s schedulable nodes and what all of ``victims`` hold there, node by node: False
    means that no choice of them makes room (an upper bound: CPUs, memory, devices and node
    lists are left out). The nodes no victim runs on are counted by their free GPUs
    (``FreeIndex.free_gpu_counts``), not one by one."""
    need = head.request.gpus
    if need <= 0:
        return True
    given: dict[str, float] = {}  # node -> the GPUs the victims hold there
    for app in victims:
        for node_id in app.nodes:
            given[node_id] = given.get(node_id, 0.0) + app.request.gpus
    fits, wanted = 0, head.num_containers
    counted: dict[float, int] = {}  # the victims' nodes, by their free GPUs (counted here)
    nodes, free = future.nodes, future.free
    for node_id, gpus in given.items():
        node = nodes.get(node_id)
        if node is None or not node.schedulable:
            continue
        base = free[node_id].gpus
        key = round(base, 6)
        counted[key] = counted.get(key, 0) + 1
        fits += int((base + gpus) / need + 1e-9)
        if fits >= wanted:
            return True
    for gpus, count in future.free_gpu_counts().items():
        count -= counted.get(gpus, 0)
        if count > 0:
            fits += count * int(gpus / need + 1e-9)
            if fits >= wanted:
                return True
    return False


def _count_promoted(promos: list[tuple[float, int, str]], now: float) -> int:
    lo, hi = 0, len(promos)
    while lo < hi:
        mid = (lo + hi) // 2
        if promos[mid][0] <= now:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _with_workload(snapshot: Snapshot, heads: Iterable[AppHead]) -> Snapshot:
    """``snapshot``, with the workload fragmentation-aware placement keeps room for: the one
    it carries, else the mix of the waiting and running apps."""
    if snapshot.workload or snapshot.placement != "fgd":
        return snapshot
    return replace(snapshot, workload=default_workload(heads, snapshot.running))


@contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic garbage collector paused while a cycle runs. A cycle allocates tens of
    thousands of small objects that live until it returns and that form no reference cycle
    (its working state is freed by reference counting when it returns): collections in the
    middle of it find nothing to free, and a full one walks every object of the process
    (about a fifth of a cycle's time at 10,000 waiting apps). As Mercurial's ``nogc``: left
    as it is when something else turned it off. The switch is process-wide: other threads'
    garbage cycles wait until the cycle returns (a fraction of a second)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def decide(heads: Sequence[AppHead], snapshot: Snapshot) -> list[Decision]:
    """One Admit or Wait per head, in the order of ``heads``, then any Preempts. Pure (but for
    pausing the garbage collector while it runs, see ``_no_gc``)."""
    with _no_gc():
        backlog = Backlog(snapshot.queues, heads)  # raises on a duplicate app_id
        cycle = _Cycle(_with_workload(snapshot, heads), explain=True)
        lines = cycle.run(backlog)
        decisions = cycle.answer(heads, backlog, lines)
        # Freed while the collector is still paused: the collection that re-enabling it may
        # start would otherwise walk the whole working state (about a tenth of a cycle).
        del backlog, cycle, lines
    return decisions


def decide_changes(backlog: Backlog, snapshot: Snapshot) -> list[Admit | Preempt]:
    """The admissions and preemptions ``decide`` would make for the heads in ``backlog``,
    without working out why the others wait. Pure: ``backlog`` is read, not changed. For a
    caller that keeps its waiting heads in a ``Backlog`` between cycles (the simulator), so a
    cycle costs what changes, not what waits."""
    if backlog.tree is not snapshot.queues and backlog.tree != snapshot.queues:
        raise ValueError("the backlog was built for another queue tree than the snapshot's")
    heads = (h for line in backlog.lines.values() for h in line.heads.values())
    with _no_gc():
        cycle = _Cycle(_with_workload(snapshot, heads), explain=False)
        cycle.run(backlog)
        changes: list[Admit | Preempt] = [*cycle.decisions.values(), *cycle.preempts]
        del cycle
    return changes
