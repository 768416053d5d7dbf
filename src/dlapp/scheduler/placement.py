"""Placement: where an app's containers can go, and plain words for why they can't.

``FreeIndex`` is the working view of free resources used while deciding, device by device
(whole GPUs, shared fractions, MIG instances). It chooses each container's node by the
snapshot's placement: ``fgd`` (the default) keeps whole GPUs and whole nodes free for the kinds
of task the workload brings (fragmentation gradient descent, USENIX ATC '23: the node and
device whose expected fragmentation grows least, ties by ``pack``); ``pack`` takes the node
with the fewest free GPUs, then CPUs (a short lookup in buckets); ``best-fit`` and
``first-fit`` are the usual baselines. ``place_gang`` puts all of an app's containers or none.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import NamedTuple

from dlapp.errors import InfeasibleError
from dlapp.scheduler.gpus import (
    GPU_EPS,
    TaskShape,
    Workload,
    describe_models,
    describe_share,
    device_options,
    fits_devices,
    give_devices,
    guess_devices,
    is_fraction,
    mig_counts,
    mig_share,
    pick_devices,
    same_model,
    take_devices,
    task_fragment,
    workload_of,
)
from dlapp.scheduler.snapshot import (
    PLACEMENTS,
    AppHead,
    NodeView,
    Resources,
    RunningApp,
    Snapshot,
    describe_cpus,
    describe_gpus,
    describe_memory,
)

_EPS = 1e-9
_SCAN = 16  # fgd: nodes of one group scored at most, for one container


class _Group(NamedTuple):
    """What nodes that look alike to placement share: GPU model, free devices (sorted), free
    MIG instances, and which kinds of task of the workload their CPUs and memory hold."""

    model: str
    devices: tuple[float, ...]
    mig: tuple[tuple[str, int], ...]
    fits: tuple[bool, ...]


class FreeIndex:
    """Mutable free resources per node, device by device, for one decision cycle (never
    shared).

    ``placement`` chooses each container's node (see ``PLACEMENTS``): ``pack`` looks nodes up
    in buckets by free GPUs; ``fgd`` and ``best-fit`` score groups of nodes that look alike
    (same GPU model, same free devices, same kinds of task that fit), so a choice costs one
    score per group rather than one per node; ``first-fit`` walks nodes by name.
    """

    def __init__(
        self, nodes: Iterable[NodeView], placement: str = "pack", work: Workload = ()
    ) -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"placement {placement!r} is not one of {', '.join(PLACEMENTS)}")
        self.placement = placement
        self.work = work if placement == "fgd" else ()
        self.nodes: dict[str, NodeView] = {}
        self.free: dict[str, Resources] = {}
        self.devices: dict[str, list[float]] = {}
        self.mig: dict[str, dict[str, int]] = {}
        # None: every node's device list and MIG counts belong to this index; else the nodes
        # whose do, the others' being shared with a copy until one of the two changes them
        self._own: set[str] | None = None
        self.placed: dict[str, list[tuple[str, tuple[int, ...]]]] = {}  # app -> its containers
        self._buckets: dict[float, list[tuple[float, str, str]]] = {}
        self._groups: dict[_Group, list[tuple[float, str, str]]] = {}
        self._group_of: dict[str, _Group] = {}
        self._order: list[tuple[str, str]] = []
        self._delta: dict[tuple[object, ...], tuple[float, float]] = {}
        # answers that depend only on their key (and the workload), worked out once: which
        # kinds of task fit free (CPUs, memory), and once a request's (CPUs, memory) is
        # taken; devices' free shares, rounded and sorted; whether a request fits a group
        self._fits_in: dict[tuple[float, int], tuple[bool, ...]] = {}
        self._after: dict[tuple[float, int, float, int], tuple[bool, ...]] = {}
        self._alike: dict[tuple[float, ...], tuple[float, ...]] = {}
        self._group_ok: dict[tuple[object, ...], bool] = {}
        self._scale = (1.0, 1.0)  # best-fit: the largest node's CPUs and GPUs
        # another placement's index: ``pack``'s buckets as of its last ``copy("pack")``, and
        # the free resources then of the schedulable nodes changed since (kept up to date
        # at the next such copy rather than rebuilt: preemption copies it once per queue)
        self._pack_cache: dict[float, list[tuple[float, str, str]]] | None = None
        self._stale: dict[str, Resources] = {}
        for n in nodes:
            self.nodes[n.node_id] = n
            self.free[n.node_id] = n.free
            self.devices[n.node_id] = list(n.devices())
            self.mig[n.node_id] = mig_counts(n.mig_free)
        self._index_all()
        if placement == "best-fit" and self.nodes:
            self._scale = (
                max(max(n.total.cpus for n in self.nodes.values()), 1.0),
                max(max(n.total.gpus for n in self.nodes.values()), 1.0),
            )

    def copy(self, placement: str | None = None) -> FreeIndex:
        """A new index of the free resources as they are now (``placement``: another way to
        choose nodes, the same by default)."""
        other = FreeIndex((), placement or self.placement, self.work)
        other.nodes = dict(self.nodes)
        other.free = dict(self.free)
        # copy on write: both share each node's devices and MIG counts until they change them
        other.devices = dict(self.devices)
        other.mig = dict(self.mig)
        self._own, other._own = set(), set()
        other._scale = self._scale
        if other.placement == self.placement:  # the same lookups: copied, not rebuilt
            other._buckets = {g: list(b) for g, b in self._buckets.items()}
            other._groups = {k: list(g) for k, g in self._groups.items()}
            other._group_of = dict(self._group_of)
            other._order = list(self._order)
            other._delta = self._delta  # scores of alike nodes stay true
            other._fits_in, other._after = self._fits_in, self._after  # the same workload
            other._alike, other._group_ok = self._alike, self._group_ok
            return other
        if other.placement == "pack":
            if self._pack_cache is None:
                other._index_all()
                self._pack_cache = {g: list(b) for g, b in other._buckets.items()}
            else:
                self._refresh_pack(self._pack_cache)
                other._buckets = {g: list(b) for g, b in self._pack_cache.items()}
            self._stale = {}
            return other
        other._index_all()
        if other.placement == "best-fit" and self.placement != "best-fit" and other.nodes:
            other._scale = (
                max(max(n.total.cpus for n in other.nodes.values()), 1.0),
                max(max(n.total.gpus for n in other.nodes.values()), 1.0),
            )
        return other

    def explain(self, head: AppHead) -> str:
        """Why ``head`` does not fit in this index now, in one sentence (``explain_free``)."""
        return explain_free(
            head, [(n, self.free[i]) for i, n in self.nodes.items()], self.devices, self.mig
        )

    def free_gpu_counts(self) -> dict[float, int]:
        """How many schedulable nodes have each amount of free GPUs (rounded to a millionth
        of a GPU): read off ``pack``'s lookup, counted node by node for another placement."""
        if self.placement == "pack":
            return {gpus: len(bucket) for gpus, bucket in self._buckets.items()}
        counts: dict[float, int] = {}
        for node_id, node in self.nodes.items():
            if node.schedulable:
                key = round(self.free[node_id].gpus, 6)
                counts[key] = counts.get(key, 0) + 1
        return counts

    # -- the lookup structures -----------------------------------------------------------------

    def _key(self, node_id: str) -> tuple[float, str, str]:
        return (self.free[node_id].cpus, self.nodes[node_id].name, node_id)

    def _group_key(self, node_id: str) -> _Group:
        free = self.free[node_id]
        room = (free.cpus, free.memory_mb)
        fits = self._fits_in.get(room)
        if fits is None:
            fits = self._fits_in[room] = tuple(
                s.cpus <= free.cpus + _EPS and s.memory_mb <= free.memory_mb for s, _ in self.work
            )
        devices = tuple(self.devices[node_id])
        alike = self._alike.get(devices)
        if alike is None:
            alike = self._alike[devices] = tuple(sorted(round(d, 6) for d in devices))
        mig = self.mig[node_id]
        return _Group(
            self.nodes[node_id].model,
            alike,
            tuple(sorted(mig.items())) if mig else (),
            fits,
        )

    def _index_all(self) -> None:
        """Fill the lookup structures with every schedulable node at once: what ``_insert``
        node by node would make (the same lists, in the same order), each list sorted once."""
        schedulable = [i for i, n in self.nodes.items() if n.schedulable]
        if self.placement == "first-fit":
            self._order = sorted((self.nodes[i].name, i) for i in schedulable)
            return
        free, nodes = self.free, self.nodes
        if self.placement == "pack":
            buckets = self._buckets
            for i in schedulable:
                f = free[i]
                key = round(f.gpus, 6)
                bucket = buckets.get(key)
                if bucket is None:
                    bucket = buckets[key] = []
                bucket.append((f.cpus, nodes[i].name, i))
            for bucket in buckets.values():
                bucket.sort()
            return
        groups, group_of = self._groups, self._group_of
        for i in schedulable:
            alike = group_of[i] = self._group_key(i)
            group = groups.get(alike)
            if group is None:
                group = groups[alike] = []
            group.append((free[i].cpus, nodes[i].name, i))
        for group in groups.values():
            group.sort()

    def _refresh_pack(self, buckets: dict[float, list[tuple[float, str, str]]]) -> None:
        """Bring ``pack`` buckets built earlier up to date: the same lists ``_index_all`` would
        build now (the order of the buckets aside, which ``_pack`` sorts)."""
        for node_id, old in self._stale.items():
            name, new = self.nodes[node_id].name, self.free[node_id]
            gpus = round(old.gpus, 6)
            bucket = buckets[gpus]
            del bucket[bisect.bisect_left(bucket, (old.cpus, name, node_id))]
            if not bucket:
                del buckets[gpus]
            bisect.insort(buckets.setdefault(round(new.gpus, 6), []), (new.cpus, name, node_id))

    def _insert(self, node_id: str) -> None:
        if self.placement == "pack":
            gpus = round(self.free[node_id].gpus, 6)
            bisect.insort(self._buckets.setdefault(gpus, []), self._key(node_id))
        elif self.placement == "first-fit":
            self._order.append((self.nodes[node_id].name, node_id))
        else:
            key = self._group_of[node_id] = self._group_key(node_id)
            bisect.insort(self._groups.setdefault(key, []), self._key(node_id))

    def _remove(self, node_id: str) -> None:
        if self.placement == "pack":
            gpus = round(self.free[node_id].gpus, 6)
            bucket = self._buckets[gpus]
            del bucket[bisect.bisect_left(bucket, self._key(node_id))]
            if not bucket:
                del self._buckets[gpus]
        elif self.placement != "first-fit":
            key = self._group_of.pop(node_id)
            group = self._groups[key]
            del group[bisect.bisect_left(group, self._key(node_id))]
            if not group:
                del self._groups[key]

    def _update(self, node_id: str, r: Resources, change: Callable[[], None]) -> None:
        """Apply ``change`` to the node's devices and add ``r`` to its free resources."""
        schedulable = self.nodes[node_id].schedulable
        indexed = schedulable and self.placement != "first-fit"
        if schedulable and self._pack_cache is not None and node_id not in self._stale:
            self._stale[node_id] = self.free[node_id]
        if indexed:
            self._remove(node_id)
        change()
        self.free[node_id] = self.free[node_id] + r
        if indexed:
            self._insert(node_id)

    # -- taking and giving ---------------------------------------------------------------------

    def _writable(self, node_id: str) -> None:
        """Make the node's device list and MIG counts this index's own before changing them."""
        own = self._own
        if own is not None and node_id not in own:
            self.devices[node_id] = list(self.devices[node_id])
            self.mig[node_id] = dict(self.mig[node_id])
            own.add(node_id)

    def take(
        self,
        node_id: str,
        r: Resources,
        devices: tuple[int, ...] | None = None,
        mig: str | None = None,
    ) -> tuple[int, ...]:
        """Take one container's ``r`` on the node: its MIG instances (``mig``), or the
        ``devices`` given (by default, those ``pick_devices`` chooses). Returns the devices."""
        self._writable(node_id)
        if mig is not None:
            count = round(r.gpus / mig_share(mig))
            counts = self.mig[node_id]
            self._update(node_id, _negative(r), lambda: _add(counts, mig, -count))
            return ()
        free = self.devices[node_id]
        if devices is None and r.gpus >= 1 - GPU_EPS:
            # whole GPUs: what fits_devices, pick_devices and the check below would say, in
            # one pass (the lowest-indexed wholly free devices; none short of a whole GPU)
            need = round(r.gpus)
            chosen = tuple([i for i, d in enumerate(free) if d >= 1 - GPU_EPS][:need])
            if len(chosen) < need:
                return self._take_what_is_free(node_id, r)
            self._update(node_id, _negative(r), lambda: take_devices(free, chosen, r.gpus))
            return chosen
        if devices is None:
            if r.gpus > GPU_EPS and not fits_devices(free, r.gpus):
                return self._take_what_is_free(node_id, r)
            devices = self._pick(node_id, r.gpus) if r.gpus > GPU_EPS else ()
        each = r.gpus if is_fraction(r.gpus) else 1.0
        if any(free[i] < each - GPU_EPS for i in devices):
            raise ValueError(f"devices {devices} of node {node_id} do not hold {r.gpus:g} GPUs")
        chosen = devices
        self._update(node_id, _negative(r), lambda: take_devices(free, chosen, r.gpus))
        return chosen

    def _take_what_is_free(self, node_id: str, r: Resources) -> tuple[int, ...]:
        """Set aside up to ``r``'s GPUs from whatever the devices have free (a reservation of
        room that is partly in use): the freest devices first; the node's free GPU share drops
        by what the devices gave."""
        self._writable(node_id)
        free = self.devices[node_id]
        left = r.gpus
        chosen: list[tuple[int, float]] = []
        for i in sorted(range(len(free)), key=lambda i: (-free[i], i)):
            if left <= GPU_EPS or free[i] <= GPU_EPS:
                break
            part = min(free[i], left)
            chosen.append((i, part))
            left -= part

        def change() -> None:
            for i, part in chosen:
                free[i] = max(0.0, free[i] - part)

        taken = sum(part for _, part in chosen)
        self._update(node_id, Resources(-r.cpus, -r.memory_mb, -taken), change)
        return tuple(i for i, _ in chosen)

    def give(
        self,
        node_id: str,
        r: Resources,
        devices: tuple[int, ...] | None = None,
        mig: str | None = None,
    ) -> None:
        """Give one container's ``r`` back (the devices it held, when known)."""
        self._writable(node_id)
        if mig is not None:
            count = round(r.gpus / mig_share(mig))
            counts = self.mig[node_id]
            self._update(node_id, r, lambda: _add(counts, mig, count))
            return
        free = self.devices[node_id]
        chosen = devices if devices else guess_devices(free, r.gpus)
        self._update(node_id, r, lambda: give_devices(free, chosen, r.gpus))

    def release(self, app: RunningApp) -> None:
        """Pretend ``app`` is gone: its containers' resources are free again."""
        for i, node_id in enumerate(app.nodes):
            if node_id in self.nodes:
                devices = app.devices[i] if i < len(app.devices) else None
                self.give(node_id, app.request, devices, app.mig)

    def retake(self, app: RunningApp) -> None:
        """Undo ``release(app)``."""
        for i, node_id in enumerate(app.nodes):
            if node_id in self.nodes:
                devices = app.devices[i] if i < len(app.devices) else None
                if devices is None and app.mig is None:
                    devices = guess_taken(self.devices[node_id], app.request.gpus)
                self.take(node_id, app.request, devices, app.mig)

    def _pick(self, node_id: str, gpus: float) -> tuple[int, ...]:
        return pick_devices(self.devices[node_id], gpus, self.placement == "first-fit")

    # -- fitting -------------------------------------------------------------------------------

    def fits(self, node_id: str, head: AppHead) -> bool:
        """Whether one container of ``head`` fits on the node now (any node, any state)."""
        req, free = head.request, self.free[node_id]
        if req.cpus > free.cpus + _EPS or req.memory_mb > free.memory_mb:
            return False
        return self._gpus_fit(node_id, head)

    def _gpus_fit(self, node_id: str, head: AppHead) -> bool:
        if head.request.gpus <= GPU_EPS:
            return True
        if not head.accepts(self.nodes[node_id]):
            return False
        if head.mig is not None:
            return self.mig[node_id].get(head.mig, 0) >= head.mig_count
        return fits_devices(self.devices[node_id], head.request.gpus)

    def _usable(self, node_id: str, head: AppHead, avoid: frozenset[str]) -> bool:
        return (
            node_id not in avoid
            and head.request.memory_mb <= self.free[node_id].memory_mb
            and self._gpus_fit(node_id, head)
            and head.allows(self.nodes[node_id])
        )

    def best_fit(self, head: AppHead, avoid: frozenset[str] = frozenset()) -> str | None:
        """The node for one container of ``head`` under this index's placement, or None."""
        if self.placement == "pack":
            return self._pack(head, avoid)
        if self.placement == "first-fit":
            return self._first_fit(head, avoid)
        return self._scored(head, avoid)

    def _pack(self, head: AppHead, avoid: frozenset[str]) -> str | None:
        """The node with the fewest free GPUs that fits one container, then fewest free CPUs,
        then by name: whole GPU nodes stay free for big apps, CPU work goes to CPU nodes."""
        req = head.request
        for gpus in sorted(g for g in self._buckets if g >= req.gpus - GPU_EPS):
            bucket = self._buckets[gpus]
            start = bisect.bisect_left(bucket, (req.cpus - _EPS,))
            for _cpus, _name, node_id in itertools.islice(bucket, start, None):
                if self._usable(node_id, head, avoid):
                    return node_id
        return None

    def _first_fit(self, head: AppHead, avoid: frozenset[str]) -> str | None:
        req = head.request
        for _name, node_id in self._order:
            if (
                self.nodes[node_id].schedulable
                and req.cpus <= self.free[node_id].cpus + _EPS
                and self._usable(node_id, head, avoid)
            ):
                return node_id
        return None

    def _scored(self, head: AppHead, avoid: frozenset[str]) -> str | None:
        """The best node by score. Nodes of a group are alike but for their free CPUs and
        memory: best fit scores the one with the fewest free CPUs that fits; fgd walks up
        from it to the first that keeps room for every kind of task that fits now (the CPUs
        and memory it leaves then strand no GPU), at most ``_SCAN`` nodes a group."""
        req = head.request
        fgd = self.placement == "fgd"
        best: tuple[tuple[object, ...], str] | None = None
        for key, group in self._groups.items():
            if not self._group_fits(key, head):
                continue  # its nodes' GPUs are alike: none of them holds it
            first = bisect.bisect_left(group, (req.cpus - _EPS,))
            scanned = 0
            for _cpus, _name, node_id in itertools.islice(group, first, None):
                if (
                    node_id in avoid
                    or req.memory_mb > self.free[node_id].memory_mb
                    or not head.allows(self.nodes[node_id])
                ):
                    continue
                after = self._after_fits(node_id, head) if fgd else None
                rank = self._rank(key, node_id, head, after)
                if best is None or rank < best[0]:
                    best = (rank, node_id)
                scanned += 1
                if not fgd or scanned >= _SCAN or after == key.fits:
                    break
        return None if best is None else best[1]

    def _group_fits(self, key: _Group, head: AppHead) -> bool:
        """Whether one container of ``head``'s GPUs fits the nodes of group ``key`` (model,
        free devices, free MIG instances)."""
        req = head.request
        if req.gpus <= GPU_EPS:
            return True
        memo = (key, req.gpus, head.gpu_types, head.mig)
        known = self._group_ok.get(memo)
        if known is None:
            known = self._group_ok[memo] = self._gpus_fit_group(key, head)
        return known

    def _gpus_fit_group(self, key: _Group, head: AppHead) -> bool:
        req = head.request
        if head.gpu_types and not same_model(key.model, head.gpu_types):
            return False
        if head.mig is not None:
            return dict(key.mig).get(head.mig, 0) >= head.mig_count
        return fits_devices(key.devices, req.gpus)

    def _after_fits(self, node_id: str, head: AppHead) -> tuple[bool, ...]:
        """Which kinds of task of the workload fit the node's CPUs and memory once one
        container of ``head`` is on it."""
        req, free = head.request, self.free[node_id]
        memo = (free.cpus, free.memory_mb, req.cpus, req.memory_mb)
        known = self._after.get(memo)
        if known is None:
            cpus, memory = free.cpus - req.cpus + _EPS, free.memory_mb - req.memory_mb
            known = self._after[memo] = tuple(
                s.cpus <= cpus and s.memory_mb <= memory for s, _ in self.work
            )
        return known

    def _rank(
        self,
        key: _Group,
        node_id: str,
        head: AppHead,
        after_fits: tuple[bool, ...] | None = None,
    ) -> tuple[object, ...]:
        req, free = head.request, self.free[node_id]
        # ties: fewest free GPUs, then fewest free CPUs, then by name (as pack)
        name_order = (free.gpus, free.cpus, self.nodes[node_id].name, node_id)
        if self.placement == "best-fit":
            cpu_scale, gpu_scale = self._scale
            left = 0.5 * (free.cpus - req.cpus) / cpu_scale + 0.5 * (free.gpus - req.gpus) / (
                gpu_scale
            )
            return (round(left, 9), *name_order)
        return (round(self._fgd(key, node_id, head, after_fits)[0], 9), *name_order)

    def _fgd(
        self,
        key: _Group,
        node_id: str,
        head: AppHead,
        after_fits: tuple[bool, ...] | None = None,
    ) -> tuple[float, float]:
        """(growth of the node's expected fragmentation, the free share of the device a
        fraction goes on; -1 for none) if one container of ``head`` lands on it; cached for
        nodes that look alike (alike nodes hold their devices in any order: the device is
        named by its free share, not its index; ``after_fits``: ``_after_fits``, if known)."""
        req = head.request
        if after_fits is None:
            after_fits = self._after_fits(node_id, head)
        cache_key = (key, after_fits, req.gpus, head.mig)
        known = self._delta.get(cache_key)
        if known is not None:
            return known
        devices = self.devices[node_id]
        model = self.nodes[node_id].model
        before = _frag(devices, key.fits, model, self.work)
        if head.mig is not None or req.gpus <= GPU_EPS:
            after = _frag(devices, after_fits, model, self.work)
            result = (after - before, -1.0)
        elif is_fraction(req.gpus):
            result = (math.inf, -1.0)
            for i in device_options(devices, req.gpus):
                trial = list(devices)
                trial[i] -= req.gpus
                delta = _frag(trial, after_fits, model, self.work) - before
                if delta < result[0] - 1e-9:
                    result = (delta, round(devices[i], 6))
        else:
            trial = list(devices)
            take_devices(trial, pick_devices(trial, req.gpus), req.gpus)
            result = (_frag(trial, after_fits, model, self.work) - before, -1.0)
        self._delta[cache_key] = result
        return result

    def _choose_devices(self, node_id: str, head: AppHead) -> tuple[int, ...] | None:
        """Devices for one container on the node: fgd's choice for a fraction; else None
        (``take`` picks)."""
        req = head.request
        if self.placement != "fgd" or head.mig is not None or not is_fraction(req.gpus):
            return None
        share = self._fgd(self._group_of[node_id], node_id, head)[1]
        for i, d in enumerate(self.devices[node_id]):
            if round(d, 6) == share:
                return (i,)
        return None

    def place(self, head: AppHead) -> tuple[str, ...] | None:
        """Take room for all of ``head``'s containers, or take nothing and return None. The
        devices taken are kept in ``placed[head.app_id]`` (see ``unplace``)."""
        placed: list[tuple[str, tuple[int, ...]]] = []
        for _ in range(head.num_containers):
            avoid = frozenset(n for n, _ in placed) if head.spread else frozenset()
            node_id = self.best_fit(head, avoid)
            if node_id is None:
                for taken, devices in placed:
                    self.give(taken, head.request, devices, head.mig)
                return None
            devices = self.take(
                node_id, head.request, self._choose_devices(node_id, head), head.mig
            )
            placed.append((node_id, devices))
        self.placed[head.app_id] = placed
        return tuple(n for n, _ in placed)

    def unplace(self, head: AppHead) -> None:
        """Give back what the last ``place(head)`` took."""
        for node_id, devices in self.placed.pop(head.app_id, []):
            self.give(node_id, head.request, devices, head.mig)

    def slots(self, head: AppHead) -> tuple[tuple[int, ...], ...]:
        """The devices each container of ``head`` took in its last ``place``."""
        return tuple(devices for _, devices in self.placed.get(head.app_id, []))

    def view(self, node_id: str) -> NodeView:
        """The node as it stands in this index."""
        n = self.nodes[node_id]
        return replace(
            n,
            free=self.free[node_id],
            gpu_free=tuple(self.devices[node_id]),
            mig_free=tuple(sorted(self.mig[node_id].items())),
        )

    def snapshot_nodes(self) -> list[tuple[NodeView, Resources]]:
        """Each node as it stands in this index, with its free resources."""
        return [(self.view(i), self.free[i]) for i in self.nodes]


def _negative(r: Resources) -> Resources:
    return Resources(-r.cpus, -r.memory_mb, -r.gpus)


def _add(counts: dict[str, int], profile: str, n: int) -> None:
    counts[profile] = counts.get(profile, 0) + n


def guess_taken(devices: Sequence[float], gpus: float) -> tuple[int, ...]:
    """Devices from which ``gpus`` can be taken again (undoing a give whose devices were
    guessed): the wholly free ones first for whole GPUs, the fullest that hold it for a
    fraction."""
    if gpus <= GPU_EPS:
        return ()
    return pick_devices(devices, gpus)


def _frag(devices: Sequence[float], fits: tuple[bool, ...], model: str, work: Workload) -> float:
    """``gpus.fragmentation`` with the CPU and memory check already made per kind of task."""
    left = sum(devices)
    if left <= GPU_EPS:
        return 0.0
    total = 0.0
    for (shape, p), ok in zip(work, fits, strict=True):
        total += p * (task_fragment(devices, left, model, shape) if ok else left)
    return total


def place_gang(head: AppHead, snapshot: Snapshot) -> tuple[str, ...] | None:
    """Node ids for all of ``head``'s containers, or None when they cannot all be placed now.

    Each container lands wholly on one schedulable node that ``head`` may use, chosen by the
    snapshot's placement (see ``FreeIndex``). ``snapshot`` is not changed.
    """
    work = snapshot.workload or default_workload([head], snapshot.running)
    return FreeIndex(snapshot.nodes, snapshot.placement, work).place(head)


def default_workload(heads: Iterable[AppHead], running: Iterable[RunningApp]) -> Workload:
    """The mix of kinds of task, learned from what waits and what runs now (one count per
    app): what fragmentation-aware placement keeps room for when the caller gives none."""
    # counted by plain tuples, equal when the requests are (and quicker to hash); each kind
    # keeps the amounts of the first of it, in the order they first come
    counts: Counter[tuple[float, int, float, tuple[str, ...], str | None]] = Counter()
    for h in heads:
        r = h.request
        if r.gpus > GPU_EPS:
            counts[(r.cpus, r.memory_mb, r.gpus, h.gpu_types, h.mig)] += 1
    for a in running:
        r = a.request
        if r.gpus > GPU_EPS:
            counts[(r.cpus, r.memory_mb, r.gpus, (), a.mig)] += 1
    kinds: dict[TaskShape, int] = {}  # what ``workload`` counts, one task at a time
    for (cpus, memory_mb, gpus, models, mig), n in counts.items():
        task = TaskShape(cpus, memory_mb, gpus, models, mig)
        kinds[task] = kinds.get(task, 0) + n
    return workload_of(kinds)


def shape_of(head: AppHead) -> TaskShape:
    """The kind of task one container of ``head`` is, for the workload."""
    r = head.request
    return TaskShape(r.cpus, r.memory_mb, r.gpus, head.gpu_types, head.mig)


def describe_request(head: AppHead) -> str:
    """One container's request in words: ``1 CPU, 2.0 GiB, 0.5 GPU``, ``..., 1 MIG 1g.18gb
    instance``, with the GPU models it accepts (``on an A100 or an H100``)."""
    r = head.request
    if head.mig is not None:
        n = head.mig_count
        gpus = f"{n} MIG {head.mig} instance{'' if n == 1 else 's'}"
    else:
        gpus = describe_gpus(r.gpus)
    text = f"{describe_cpus(r.cpus)}, {describe_memory(r.memory_mb)}, {gpus}"
    if head.gpu_types and r.gpus > GPU_EPS:
        text += f" on {describe_models(head.gpu_types)}"
    return text


def explain_free(
    head: AppHead,
    nodes: Sequence[tuple[NodeView, Resources]],
    devices: Mapping[str, Sequence[float]] | None = None,
    mig: Mapping[str, Mapping[str, int]] | None = None,
) -> str:
    """Why ``head`` cannot be placed on nodes with these free resources, in one sentence.

    Each node's free devices and MIG instances are read from ``devices`` and ``mig`` (by node
    id) when given, else from the ``NodeView``; the ``Resources`` beside it is its free CPU,
    memory and GPU share."""
    gpus = _Devices(devices, mig)
    if not nodes:
        return "the cluster has no nodes"
    if head.include_nodes or head.exclude_nodes:
        allowed = [(n, f) for n, f in nodes if head.allows(n)]
    else:
        allowed = list(nodes)  # every node (``allows`` says so without lists)
    if not allowed:
        return f"no allowed node ({_lists(head.include_nodes, head.exclude_nodes)})"
    usable = [(n, f) for n, f in allowed if n.schedulable]
    if not usable:
        return "no schedulable node: every allowed node is drained, cordoned or down"
    request = head.request
    needs = f"needs {_containers(head.num_containers)} of {describe_request(head)}"
    if head.gpu_types and request.gpus > GPU_EPS:
        typed = [(n, f) for n, f in usable if head.accepts(n)]
    else:
        typed = usable  # it accepts any node (see ``AppHead.accepts``)
    if not typed:
        return f"{needs}; no schedulable node has one ({_models([n for n, _ in usable])})"
    if head.mig is not None:
        with_profile = [(n, f) for n, f in typed if mig_counts(n.mig_total).get(head.mig)]
        if not with_profile:
            return f"{needs}; no schedulable node has {head.mig} instances"
        typed = with_profile
    # (``_fit_count`` is 0 on a node that has not one container's request free: skipped)
    typed_fit = [(n, f) for n, f in typed if request.fits_in(f)]
    if head.spread:
        holders = sum(1 for n, f in typed_fit if _fit_count(head, n, f, 1, gpus))
        if holders < head.num_containers:
            return (
                f"{needs}, {head.num_containers} containers on different nodes; "
                f"only {holders} node{'' if holders == 1 else 's'} can hold one now"
            )
    fit = sum(_fit_count(head, n, f, head.num_containers, gpus) for n, f in typed_fit)
    if fit > 0:
        return f"{needs} at once; only {fit} fit{'s' if fit == 1 else ''} now"
    where = "any allowed node" if head.include_nodes or head.exclude_nodes else "any node"
    if head.gpu_types and request.gpus > GPU_EPS:
        where = f"any {' or '.join(head.gpu_types)} node"
    short = []
    if request.gpus > GPU_EPS:
        if head.mig is None and not is_fraction(request.gpus):
            # whole GPUs: ``_gpu_room`` counts the wholly free devices (every node here
            # accepts it), counted once for each list of free shares
            counted: dict[tuple[float, ...], int] = {}

            def room_of(n: NodeView) -> float:
                shares = tuple(gpus.devices(n))
                known = counted.get(shares)
                if known is None:
                    known = counted[shares] = sum(1 for d in shares if d >= 1 - GPU_EPS)
                return known

        else:

            def room_of(n: NodeView) -> float:
                return _gpu_room(head, n, gpus)

        node, room = max(
            ((n, room_of(n)) for n, _ in typed),
            key=lambda c: (c[1], -len(c[0].name)),
        )
        if room < _gpu_need(head) - GPU_EPS:
            short.append(f"{_say_gpu_room(head, node, room, gpus)} (node {node.name})")
    for amount, say in _KINDS:
        node, most = _largest(typed, amount)
        if amount(request) > amount(most) + _EPS:
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
    gpu_types: Sequence[str] = (),
    mig: str | None = None,
) -> None:
    """Raise InfeasibleError when no state of this cluster, even empty, could ever hold the app.

    Every node counts as empty and schedulable: a drained node may come back, so only the
    nodes that belong to the cluster should be passed.
    """
    if not nodes:
        raise InfeasibleError("the cluster has no nodes")
    try:
        head = AppHead(
            app_id="feasibility-check",
            user="",
            queue="",
            seq=0,
            request=request,
            num_containers=num_containers,
            include_nodes=tuple(include),
            exclude_nodes=tuple(exclude),
            gpu_types=tuple(gpu_types),
            mig=mig,
        )
    except ValueError as exc:
        raise InfeasibleError(str(exc).removeprefix("feasibility-check: ")) from None
    empty = Snapshot(
        tuple(
            replace(n, free=n.total, gpu_free=None, mig_free=n.mig_total, schedulable=True)
            for n in nodes
        ),
        placement="pack",
    )
    if place_gang(head, empty) is not None:
        return
    allowed = [n for n in empty.nodes if head.allows(n)]
    if not allowed:
        raise InfeasibleError(f"no allowed node ({_lists(head.include_nodes, head.exclude_nodes)})")
    restricted = bool(include or exclude)
    nodes_word = "allowed node" if restricted else "node"
    typed = [n for n in allowed if head.accepts(n)]
    if not typed:
        raise InfeasibleError(
            f"the app asks for {describe_models(head.gpu_types)}; no {nodes_word} "
            f"has one ({_models(allowed)})"
        )
    if mig is not None:
        with_profile = [n for n in typed if mig_counts(n.mig_total).get(mig)]
        if not with_profile:
            profiles = sorted({p for n in typed for p, _ in n.mig_total})
            here = f"MIG profiles here: {', '.join(profiles)}" if profiles else "no GPU in MIG mode"
            raise InfeasibleError(
                f"the app asks for MIG {mig} instances; no {nodes_word} has any ({here})"
            )
        typed = with_profile
    # A single container larger than every allowed node.
    largest = "largest allowed node" if restricted else "largest node"
    if head.gpu_types and request.gpus > GPU_EPS:
        largest = f"largest {' or '.join(head.gpu_types)} node"
    capacity = [(n, n.total) for n in typed]
    too_big = []
    if request.gpus > GPU_EPS:
        node = max(typed, key=lambda n: (_gpu_room(head, n), -len(n.name)))
        room = _gpu_room(head, node)
        if room < _gpu_need(head) - GPU_EPS:
            too_big.append(
                f"a container asks for {_say_need(head)} but the {largest} ({node.name}) "
                f"has {_say_capacity(head, room)}"
            )
    for amount, say in _KINDS:
        node, biggest = _largest(capacity, amount)
        if amount(request) > amount(biggest) + _EPS:
            too_big.append(
                f"a container asks for {say(request)} but the {largest} "
                f"({node.name}) has {say(biggest)}"
            )
    if too_big:
        raise InfeasibleError("; ".join(too_big))
    fit = sum(_fit_count(head, n, n.total, num_containers) for n in typed)
    if fit == 0:
        raise InfeasibleError(
            f"a container asks for {describe_request(head)} but no "
            f"{'allowed ' if restricted else ''}node has all of that at once"
        )
    # The gang as a whole is larger than the (allowed part of the) cluster.
    whole = sum((n.total for n in typed), Resources())
    has = "the allowed nodes have" if restricted else "the cluster has"
    gang = request.scaled(num_containers)
    over = [
        f"{_containers(num_containers)} of {say(request)} need {say(gang)} at once; "
        f"{has} {say(whole)}"
        for amount, say in _ALL_KINDS
        if amount(gang) > amount(whole) + GPU_EPS
    ]
    if over:
        raise InfeasibleError("; ".join(over))
    raise InfeasibleError(
        f"{_containers(num_containers)} of {describe_request(head)} do not fit "
        f"even on the empty cluster: at most {fit} fit at once"
    )


# CPU and memory, each with how to read it and how to say an amount of it; GPUs are counted
# device by device (``_gpu_room``), except for a whole gang against the whole cluster.
_KINDS: tuple[tuple[Callable[[Resources], float], Callable[[Resources], str]], ...] = (
    (lambda r: r.cpus, lambda r: describe_cpus(r.cpus)),
    (lambda r: r.memory_mb, lambda r: describe_memory(r.memory_mb)),
)
_ALL_KINDS: tuple[tuple[Callable[[Resources], float], Callable[[Resources], str]], ...] = (
    (lambda r: r.gpus, lambda r: describe_gpus(r.gpus)),
    *_KINDS,
)


def _gpu_need(head: AppHead) -> float:
    """One container's GPU need in the units ``_gpu_room`` counts."""
    if head.mig is not None:
        return head.mig_count
    gpus = head.request.gpus
    return gpus if is_fraction(gpus) else round(gpus)


class _Devices:
    """Free devices and MIG instances of nodes: from maps by node id, else their views."""

    def __init__(
        self,
        devices: Mapping[str, Sequence[float]] | None = None,
        mig: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        self._devices, self._mig = devices, mig

    def devices(self, node: NodeView) -> Sequence[float]:
        if self._devices is not None and node.node_id in self._devices:
            return self._devices[node.node_id]
        return node.devices()

    def mig(self, node: NodeView) -> Mapping[str, int]:
        if self._mig is not None and node.node_id in self._mig:
            return self._mig[node.node_id]
        return mig_counts(node.mig_free)


def _gpu_room(head: AppHead, node: NodeView, gpus: _Devices | None = None) -> float:
    """What the node has free for one container of ``head``: instances of its MIG profile,
    the largest free share of one device (a fraction), or wholly free devices."""
    gpus = gpus or _Devices()
    if not head.accepts(node):
        return 0.0
    if head.mig is not None:
        return gpus.mig(node).get(head.mig, 0)
    devices = gpus.devices(node)
    if is_fraction(head.request.gpus):
        return max(devices, default=0.0)
    return sum(1 for d in devices if d >= 1 - GPU_EPS)


def _say_need(head: AppHead) -> str:
    if head.mig is not None:
        n = head.mig_count
        return f"{n} MIG {head.mig} instance{'' if n == 1 else 's'}"
    return describe_gpus(head.request.gpus)


def _say_capacity(head: AppHead, room: float) -> str:
    if head.mig is not None:
        n = round(room)
        return f"{n} {head.mig} instance{'' if n == 1 else 's'}"
    if is_fraction(head.request.gpus):
        return "no GPU" if room <= GPU_EPS else describe_gpus(round(room))
    return describe_gpus(room)


def _say_gpu_room(head: AppHead, node: NodeView, room: float, gpus: _Devices) -> str:
    """What the node has free for ``head``'s GPUs, speaking of shared pieces."""
    if head.mig is not None:
        n = round(room)
        return f"{n} free {head.mig} instance{'' if n == 1 else 's'}"
    if is_fraction(head.request.gpus):
        return f"{describe_share(room)} GPU free on one device"
    whole = round(room)
    pieces = sum(d for d in gpus.devices(node) if d < 1 - GPU_EPS)
    if pieces <= GPU_EPS:
        return describe_gpus(whole)
    return (
        f"{whole} whole GPU{'' if whole == 1 else 's'} and {describe_share(pieces)} GPU "
        "in pieces of shared devices"
    )


def _models(nodes: Sequence[NodeView]) -> str:
    """``GPU models here: A100 (2 nodes), T4 (4 nodes)``, or that the nodes have no GPU."""
    counts: dict[str, int] = {}
    for n in nodes:
        if n.total.gpus > GPU_EPS:
            model = n.model or "unknown model"
            counts[model] = counts.get(model, 0) + 1
    if not counts:
        return "no node has a GPU"
    return "GPU models here: " + ", ".join(
        f"{m} ({c} node{'' if c == 1 else 's'})" for m, c in sorted(counts.items())
    )


def _fit_count(
    head: AppHead, node: NodeView, free: Resources, limit: int, gpus: _Devices | None = None
) -> int:
    """How many containers of ``head`` fit on the node with ``free`` resources (its devices
    as ``gpus`` says), counting no further than ``limit``."""
    if not head.accepts(node):
        return 0
    request = head.request
    if limit < 1 or not request.fits_in(free):
        return 0  # not one container: no need to copy its devices
    gpus = gpus or _Devices()
    devices = list(gpus.devices(node))
    mig = dict(gpus.mig(node))
    count = 0
    while count < limit and request.fits_in(free):
        if head.mig is not None:
            if mig.get(head.mig, 0) < head.mig_count:
                break
            mig[head.mig] -= head.mig_count
        elif request.gpus > GPU_EPS:
            if not fits_devices(devices, request.gpus):
                break
            take_devices(devices, pick_devices(devices, request.gpus), request.gpus)
        free = free - request
        count += 1
    return count


def _largest(
    candidates: Sequence[tuple[NodeView, Resources]], amount: Callable[[Resources], float]
) -> tuple[NodeView, Resources]:
    """The (node, resources) pair with the most of ``amount``; ties go to the first by name
    (then id): ``min`` by (-amount, name, node_id), with the amounts read once each."""
    amounts = [amount(r) for _, r in candidates]
    most = max(amounts)
    return min(
        (c for c, a in zip(candidates, amounts, strict=True) if a == most),
        key=lambda c: (c[0].name, c[0].node_id),
    )


def _containers(n: int) -> str:
    return f"{n} container" + ("" if n == 1 else "s")


def _lists(include: tuple[str, ...], exclude: tuple[str, ...]) -> str:
    parts = []
    if include:
        parts.append(f"include: [{', '.join(include)}]")
    if exclude:
        parts.append(f"exclude: [{', '.join(exclude)}]")
    return ", ".join(parts) or "no node in the cluster"
