"""dlapp's GPU-ID manager: which device of a node each running container holds, and which
devices an admitted app's containers get.

A container's devices are kept in the store with it (``Container.gpu_ids``): device indices of
its node, or MIG instance UUIDs. From them the snapshot ``decide`` reads is built device by
device: a shareable device's free share is 1 minus the shares held on it (a fraction each for
fractional apps, 1 for an app holding it whole), a node's free MIG instances are those no
container holds. A container whose devices are not known yet (its engine, Ray, reports them
when it starts) is counted on the devices it most likely holds, so the node's free share is
never overstated.

An admitted app's containers get the devices ``decide`` chose (``Admit.devices``, indices of
the node's devices) and, for MIG, free instances of their profile.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from dlapp.executor import NodeInfo
from dlapp.scheduler import NodeView, Resources
from dlapp.scheduler.gpus import GPU_EPS, is_fraction, take_devices
from dlapp.spec import AppSpec, mig_share


@dataclass(frozen=True)
class Held:
    """One running container's hold on GPUs."""

    node_id: str
    share: float  # per device: a fraction, or 1 for whole devices; for MIG, the app's share
    gpu_ids: tuple[str, ...]  # device indices, or MIG UUIDs; () not known yet
    mig: str | None = None  # its MIG profile
    count: int = 0  # devices (or MIG instances) it holds


def held(gpus: float, spec: AppSpec, node_id: str, gpu_ids: str) -> Held:
    """The hold of one container of an app of ``gpus`` share per container (its spec's)."""
    ids = tuple(g for g in gpu_ids.split(",") if g)
    r = spec.resources
    if r.mig is not None:
        return Held(node_id, gpus, ids, r.mig, int(r.gpus))
    each = gpus if is_fraction(gpus) else 1.0
    return Held(node_id, each, ids, None, 1 if is_fraction(gpus) else round(gpus))


def node_view(
    node: NodeInfo, holds: Sequence[Held], free: Resources, schedulable: bool
) -> NodeView:
    """The node device by device: each shareable device's free share, its free MIG
    instances. ``free``: its free CPUs and memory (its GPU share is worked out here)."""
    index = {g: i for i, g in enumerate(node.gpu_ids)}
    devices = [1.0] * len(node.gpu_ids)
    mig_total = Counter(profile for _, profile, _ in node.mig)
    mig_uuids = {uuid for uuid, _, _ in node.mig}
    mig_held: Counter[str] = Counter()
    unknown: list[Held] = []
    for h in holds:
        if h.mig is not None:
            known = [g for g in h.gpu_ids if g in mig_uuids]
            mig_held[h.mig] += max(len(known), h.count)
            continue
        places = [index[g] for g in h.gpu_ids if g in index]
        if len(places) < h.count:
            unknown.append(h)
            continue
        for i in places:
            devices[i] = max(0.0, devices[i] - h.share)
    for h in unknown:  # where it most likely is: the fullest devices that could hold it
        gpus = h.share if h.share < 1 else float(h.count)
        take_devices(devices, _likely(devices, gpus), gpus)
    mig_free = {p: max(0, n - mig_held[p]) for p, n in mig_total.items()}
    share = sum(devices) + sum(mig_share(p) * n for p, n in mig_free.items())
    return NodeView(
        node.node_id,
        node.name,
        node.total,
        Resources(max(free.cpus, 0.0), max(free.memory_mb, 0), round(share, 9)),
        schedulable,
        model=node.model,
        gpu_free=tuple(round(d, 9) for d in devices),
        mig_total=tuple(sorted(mig_total.items())),
        mig_free=tuple(sorted(mig_free.items())),
    )


def _likely(devices: list[float], gpus: float) -> tuple[int, ...]:
    """Devices a container of ``gpus`` not yet placed by its engine will take: as the engine
    would (best fit for a fraction, wholly free devices for whole GPUs), else the freest."""
    if is_fraction(gpus):
        room = [(d, i) for i, d in enumerate(devices) if d >= gpus - GPU_EPS]
        if room:
            return (min(room)[1],)
        count = 1
    else:
        count = round(gpus)
        free = [i for i, d in enumerate(devices) if d >= 1 - GPU_EPS][:count]
        if len(free) == count:
            return tuple(free)
    return tuple(sorted(range(len(devices)), key=lambda i: (-devices[i], i))[:count])


def device_indices(node: NodeInfo, gpu_ids: Iterable[str]) -> tuple[int, ...]:
    """The indices of a node's devices named by ``gpu_ids`` (MIG UUIDs: none)."""
    index = {g: i for i, g in enumerate(node.gpu_ids)}
    return tuple(index[g] for g in gpu_ids if g in index)


@dataclass(frozen=True)
class Grant:
    """What one container of an admitted app gets."""

    gpu_ids: tuple[str, ...]
    share: float  # of each device: a fraction, or 1
    memory_mb: int  # the GPU memory its share of each device (or its MIG instance) is


def grants(
    spec: AppSpec,
    nodes: Sequence[NodeInfo],
    devices: Sequence[tuple[int, ...]],
    holds: Mapping[str, Sequence[Held]],
) -> list[Grant]:
    """Per container (the i-th on ``nodes[i]``, on ``devices[i]`` of it as ``decide`` chose):
    its device IDs (MIG: free instances of its profile), its share and memory."""
    r = spec.resources
    out = []
    taken: dict[str, set[str]] = {}
    for i, node in enumerate(nodes):
        if r.gpus <= 0:
            out.append(Grant((), 0.0, 0))
            continue
        if r.mig is not None:
            used = taken.setdefault(
                node.node_id, {g for h in holds.get(node.node_id, ()) for g in h.gpu_ids}
            )
            free = [(u, m) for u, p, m in node.mig if p == r.mig and u not in used]
            chosen = free[: int(r.gpus)]
            used.update(u for u, _ in chosen)
            memory = chosen[0][1] if chosen else 0
            out.append(Grant(tuple(u for u, _ in chosen), 1.0, memory))
            continue
        ids = tuple(node.gpu_ids[k] for k in devices[i]) if i < len(devices) else ()
        share = r.gpus if is_fraction(r.gpus) else 1.0
        out.append(Grant(ids, share, round(node.gpu_memory_mb * share)))
    return out
