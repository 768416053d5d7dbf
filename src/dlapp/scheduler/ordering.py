"""The order of a queue's line, and the ``Backlog`` that keeps waiting heads in that order.

A queue's ``ordering`` (queues.yaml) says who is next in its line; priority always comes first:

- ``fifo`` / ``backfill``: then the user with the smallest dominant share of the queue, then
  submission order;
- ``las``, least attained service (Tiresias, NSDI '19): then the job's level, from the
  GPU-hours it has had so far (``levels``, default 1 and 10 GPU-hours: below 1 is level 0, a new
  job's), then user share, then submission order. No duration needs to be known;
- ``srtf``, shortest remaining time first: then what is left of the job's stated
  ``max_runtime`` (jobs that state none come after those that do), then submission order;
- ``las`` and ``srtf`` promote: a job that has waited ``promote_after`` (default 7 days), or
  ``promote_factor`` times its size if that is set (las: the time it has run; srtf: its time
  left), goes ahead of every level, in the order of their promotion, so no job starves behind
  shorter ones. (Each promotion moves a long job ahead of short ones: at saturation it costs
  mean JCT, see docs/benchmarks.md.)

A line is a merge of *groups*: the waiting heads of one user with one shape (request per
container, containers, node lists, spread). Heads of a group are alike to the policy: when one
cannot start, no later one of its group can in the same cycle, so the policy passes over the rest
of a group in one step. That keeps a cycle short with thousands of heads waiting.

A ``Backlog`` holds the heads of every queue in that form. ``decide`` builds one from its heads
each call; a caller that keeps one between cycles (the simulator: ``add`` on arrival, ``remove``
on admission) hands it to ``decide_changes`` and pays only for what changes.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dlapp.scheduler.queues import Queue, QueueTree
from dlapp.scheduler.snapshot import AppHead, Resources

# A head's shape: what decides where, and whether, it fits.
Shape = tuple[Resources, int, tuple[str, ...], tuple[str, ...], bool, tuple[str, ...], str | None]
# (-priority, band, rank, seq, app_id): a head's place in its group, before user shares.
Key = tuple[int, int, float, int, str]

DEFAULT_QUEUE = "root.default"  # where apps of a queue no longer configured are served
PROMOTED = -1  # the band of a head that has waited past promote_after: ahead of every level


def shape(head: AppHead) -> Shape:
    return (
        head.request,
        head.num_containers,
        head.include_nodes,
        head.exclude_nodes,
        head.spread,
        head.gpu_types,  # GPU models it accepts
        head.mig,  # MIG profile
    )


# A head's shape with its request as three numbers: equal exactly when the shapes are, and
# hashed without calling Python code (Resources hash in Python).
Plain = tuple[
    float, int, float, int, tuple[str, ...], tuple[str, ...], bool, tuple[str, ...], str | None
]


def plain_shape(head: AppHead) -> Plain:
    r = head.request
    return (
        r.cpus,
        r.memory_mb,
        r.gpus,
        head.num_containers,
        head.include_nodes,
        head.exclude_nodes,
        head.spread,
        head.gpu_types,
        head.mig,
    )


def las_level(attained_gpu_s: float, levels_gpu_h: tuple[float, ...]) -> int:
    """0 below the first threshold, 1 below the second, ...; thresholds in GPU-hours."""
    return bisect.bisect_right(levels_gpu_h, attained_gpu_s / 3600.0)


def key(head: AppHead, queue: Queue | None) -> Key:
    """Where ``head`` stands in its group's line (promotion aside)."""
    ordering = queue.ordering if queue is not None else "backfill"
    if ordering == "las" and queue is not None:
        band = las_level(head.attained_gpu_s, queue.levels_gpu_h)
        return (-head.priority, band, 0.0, head.seq, head.app_id)
    if ordering == "srtf":
        remaining = head.remaining_s
        if remaining is None:
            return (-head.priority, 1, 0.0, head.seq, head.app_id)
        return (-head.priority, 0, remaining, head.seq, head.app_id)
    return (-head.priority, 0, 0.0, head.seq, head.app_id)


def promote_at(head: AppHead, queue: Queue | None) -> float:
    """When ``head`` goes ahead of the levels (``inf``: never): once it has waited
    ``promote_factor`` times its size (las: the time it has run; srtf: its time left), or
    ``promote_after``, whichever comes first. A job that has not run yet in a las queue is
    at the first level already: only ``promote_after`` applies to it."""
    if queue is None or queue.ordering not in ("las", "srtf") or head.waiting_since is None:
        return math.inf
    wait = math.inf if queue.promote_after_s is None else queue.promote_after_s
    size = head.ran_s if queue.ordering == "las" else head.remaining_s
    if queue.promote_factor is not None and size:
        wait = min(wait, queue.promote_factor * size)
    return head.waiting_since + wait


def is_large(head: AppHead) -> bool:
    """More than one GPU: an app that backfill can pass for ever, and that reservations are
    for (a one-GPU app starts at the next GPU that frees, when it is its turn)."""
    return head.total.gpus > 1 + 1e-9


def by_user_share(queue: Queue | None) -> bool:
    """Whether users take turns by dominant share inside the line (not in ``srtf``)."""
    return queue is None or queue.ordering != "srtf"


def queue_path(tree: QueueTree, queue: str) -> str:
    """The leaf an app of ``queue`` is served in: its own (``queue`` is a path, or a name
    under ``root``); when the tree lacks it (removed from the file while apps wait), the tree's
    ``root.default`` leaf if it has one (the app is moved there); else ``queue`` itself, which
    the policy holds."""
    by_path = tree.by_path
    if queue in by_path:
        return queue
    if f"root.{queue}" in by_path:
        return f"root.{queue}"
    fallback = by_path.get(DEFAULT_QUEUE)
    if fallback is not None and fallback.is_leaf:
        return DEFAULT_QUEUE
    return queue


_NO_PROMOS: list[tuple[float, int, str]] = []  # shared, never added to (see Group.promos)


@dataclass(slots=True)
class Group:
    """The waiting heads of one user with one shape, in line order, and by promotion time."""

    gid: int
    user: str
    keys: list[Key] = field(default_factory=list)
    # (promote_at, seq, id); no list of its own until one is added (most have none)
    promos: list[tuple[float, int, str]] = field(default_factory=lambda: _NO_PROMOS)


class QueueLine:
    """One queue's waiting heads: groups, and the heads by when they joined the line."""

    def __init__(self, path: str, queue: Queue | None) -> None:
        self.path, self.queue = path, queue
        self._plain = queue is None or queue.ordering not in ("las", "srtf")  # no levels
        self.heads: dict[str, AppHead] = {}
        self.groups: dict[tuple[str, Plain], Group] = {}  # by (user, plain_shape)
        self.oldest: list[tuple[float, int, str]] = []  # large heads: (waiting_since, seq, id)
        # app -> (gid, key, promote_at): plain values (the garbage collector stops tracking
        # such tuples); gid -> (its key in groups, its shape)
        self._keys: dict[str, tuple[int, Key, float]] = {}
        self._gkeys: dict[int, tuple[tuple[str, Plain], Shape]] = {}
        self._gids = 0

    def __len__(self) -> int:
        return len(self.heads)

    def add(
        self, head: AppHead, sort: bool = True, shapes: dict[Plain, Shape] | None = None
    ) -> None:
        """Add a waiting head (``shapes``: shapes seen, to keep one tuple per shape)."""
        plain = plain_shape(head)
        gkey = (head.user, plain)
        group = self.groups.get(gkey)
        if group is None:
            s = None if shapes is None else shapes.get(plain)
            if s is None:
                s = shape(head)
                if shapes is not None:
                    shapes[plain] = s
            self._gids += 1
            group = self.groups[gkey] = Group(self._gids, head.user, [], _NO_PROMOS)
            self._gkeys[group.gid] = (gkey, s)
        if self._plain:  # what ``key`` and ``promote_at`` say in such a queue
            k, when = (-head.priority, 0, 0.0, head.seq, head.app_id), math.inf
        else:
            k, when = key(head, self.queue), promote_at(head, self.queue)
        self.heads[head.app_id] = head
        self._keys[head.app_id] = (group.gid, k, when)
        if sort:
            bisect.insort(group.keys, k)
            if when != math.inf:
                if group.promos is _NO_PROMOS:
                    group.promos = []
                bisect.insort(group.promos, (when, head.seq, head.app_id))
            if head.waiting_since is not None and is_large(head):
                bisect.insort(self.oldest, (head.waiting_since, head.seq, head.app_id))
        else:
            group.keys.append(k)
            if when != math.inf:
                if group.promos is _NO_PROMOS:
                    group.promos = []
                group.promos.append((when, head.seq, head.app_id))
            if head.waiting_since is not None and is_large(head):
                self.oldest.append((head.waiting_since, head.seq, head.app_id))

    def sort(self) -> None:
        """Put lists filled by ``add(..., sort=False)`` in order."""
        for group in self.groups.values():
            group.keys.sort()
            group.promos.sort()
        self.oldest.sort()

    def remove(self, app_id: str) -> AppHead:
        head = self.heads.pop(app_id)
        gid, k, when = self._keys.pop(app_id)
        gkey = self._gkeys[gid][0]
        group = self.groups[gkey]
        _discard(group.keys, k)
        if when != math.inf:
            _discard(group.promos, (when, head.seq, app_id))
        if head.waiting_since is not None and is_large(head):
            _discard(self.oldest, (head.waiting_since, head.seq, app_id))
        if not group.keys:
            del self.groups[gkey]
            del self._gkeys[gid]
        return head

    def shape_of(self, app_id: str) -> Shape:
        """The head's shape (the tuple its group keeps)."""
        return self._gkeys[self._keys[app_id][0]][1]

    def group_of(self, app_id: str) -> Group:
        return self.groups[self._gkeys[self._keys[app_id][0]][0]]

    def promoted(self, app_id: str, now: float) -> bool:
        return self._keys[app_id][2] <= now

    def in_order(self, skip: Container[str], now: float) -> list[str]:
        """Its heads but those in ``skip``, by ``position_key``."""
        keyed = [
            (k[0], PROMOTED, when, k[3], k[4]) if when <= now else k
            for app_id, (_, k, when) in self._keys.items()
            if app_id not in skip
        ]
        keyed.sort()
        return [k[4] for k in keyed]

    def position_key(self, app_id: str, now: float) -> tuple[int, int, float, int, str]:
        """Its place in the line as ``dlapp status`` counts it (user shares aside)."""
        _, k, when = self._keys[app_id]
        if when <= now:
            return (k[0], PROMOTED, when, k[3], k[4])
        return k


class Backlog:
    """The waiting heads of every queue, kept in line order between cycles.

    Not changed by ``decide``; its owner adds a head when it joins a queue's line and removes
    it when it is admitted (or killed). Queues are found in ``tree`` as the policy finds them
    (a full path, or a name under ``root``); a head of a queue the tree lacks is kept under
    its own name, and the policy holds it.
    """

    def __init__(self, tree: QueueTree, heads: Iterable[AppHead] = ()) -> None:
        self.tree = tree
        self.lines: dict[str, QueueLine] = {}
        self._where: dict[str, QueueLine] = {}
        by_queue: dict[str, QueueLine] = {}
        shapes: dict[Plain, Shape] = {}
        where = self._where
        for h in heads:
            if h.app_id in where:
                raise ValueError("duplicate app_id among heads")
            line = by_queue.get(h.queue)
            if line is None:
                line = by_queue[h.queue] = self._line(h.queue)
            line.add(h, sort=False, shapes=shapes)
            where[h.app_id] = line
        for line in self.lines.values():
            line.sort()

    def path(self, queue: str) -> str:
        return queue_path(self.tree, queue)

    def _line(self, queue: str) -> QueueLine:
        path = self.path(queue)
        line = self.lines.get(path)
        if line is None:
            line = self.lines[path] = QueueLine(path, self.tree.by_path.get(path))
        return line

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, app_id: object) -> bool:
        return app_id in self._where

    def __iter__(self) -> Iterator[AppHead]:
        for line in self.lines.values():
            yield from line.heads.values()

    def add(self, head: AppHead) -> None:
        if head.app_id in self._where:
            raise ValueError(f"{head.app_id} is already waiting")
        line = self._line(head.queue)
        line.add(head)
        self._where[head.app_id] = line

    def remove(self, app_id: str) -> AppHead:
        return self._where.pop(app_id).remove(app_id)


def _discard(items: list[Any], item: Any) -> None:
    i = bisect.bisect_left(items, item)
    if i < len(items) and items[i] == item:
        del items[i]
    else:
        raise KeyError(item)
