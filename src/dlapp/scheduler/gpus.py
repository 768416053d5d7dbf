"""GPU devices as the scheduler sees them: whole, shared in fractions, or split by MIG; GPU
models; and the fragmentation measure behind fragmentation-aware placement.

A node's GPUs are of two kinds:

- *shareable devices*, one free share each (``1.0`` wholly free, ``0.0`` taken): an app that
  asks for whole GPUs takes devices that are wholly free; an app that asks for a fraction
  (``0.25``) takes that share of one device, which it shares with other fractions only, never
  with an app that holds it whole;
- *MIG instances* (``1g.18gb``, ``3g.71gb``, ...) of GPUs in MIG mode: fixed partitions, taken
  one by one by apps that ask for that profile. An instance counts as its compute slices out of
  7 (the A100 / H100 / H200 layout) of one GPU in quotas and shares.

Fragmentation (Weng et al., "Beware of Fragmentation", USENIX ATC '23): for one kind of task, a
node's free GPU share is *fragmented* when the task cannot use it: all of it when the task
cannot run on the node at all (too few CPUs, memory, GPUs, or the wrong model), else the free
shares of the devices too small for the task. Weighted by how common each kind of task is (the
*workload*), this says how much of the node's free GPU the coming tasks are likely to waste;
placement picks the node and device whose fragmentation grows least.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from dlapp.spec import GPU_MILLI as GPU_MILLI
from dlapp.spec import MIG_SLICES as MIG_SLICES
from dlapp.spec import gpu_model as gpu_model
from dlapp.spec import mig_profile as mig_profile
from dlapp.spec import mig_share as mig_share

GPU_EPS = 1e-6  # GPU shares are sums of fractions (and of sevenths): compare with this slack


def same_model(model: str, wanted: Iterable[str]) -> bool:
    """Whether a node of GPU ``model`` is one of ``wanted`` (case-insensitive)."""
    m = model.casefold()
    return any(m == w.casefold() for w in wanted)


def describe_models(models: Sequence[str]) -> str:
    """``an A100``, ``an A100 or an H100``, ``a T4``: what an app needs, in words."""

    def one(m: str) -> str:
        article = "an" if m[:1].upper() in "AEFHILMNORSX" else "a"
        return f"{article} {m}"

    return " or ".join(one(m) for m in models)


def is_fraction(gpus: float) -> bool:
    """True when ``gpus`` is a share of one device (0 < gpus < 1)."""
    return GPU_EPS < gpus < 1 - GPU_EPS


def whole_count(gpus: float) -> int:
    """Whole GPUs in a request of ``gpus`` (0 for a fraction)."""
    return 0 if is_fraction(gpus) else round(gpus)


def describe_share(share: float) -> str:
    """``0.5``, ``0.25``, ``1``: a GPU share, at most three decimals."""
    if abs(share - round(share)) < GPU_EPS:
        return str(round(share))
    return f"{share:.3f}".rstrip("0").rstrip(".")


def expand_devices(n_devices: int, free_share: float) -> tuple[float, ...]:
    """Free share of each of ``n_devices`` shareable devices when only the total free share is
    known: as many wholly free devices as it holds, then the rest on one device, then taken
    ones. Raises ValueError when ``free_share`` is out of range."""
    if free_share < -GPU_EPS or free_share > n_devices + GPU_EPS:
        raise ValueError(f"{free_share:g} GPUs free on a node with {n_devices} devices")
    whole = min(n_devices, math.floor(free_share + GPU_EPS))
    rest = free_share - whole
    devices = [1.0] * whole
    if rest > GPU_EPS and len(devices) < n_devices:
        devices.append(rest)
    devices.extend([0.0] * (n_devices - len(devices)))
    return tuple(devices)


# -- choosing devices on one node --------------------------------------------------------------


def fits_devices(devices: Sequence[float], gpus: float) -> bool:
    """Whether ``gpus`` (a fraction, or a whole count) fits on these devices now."""
    if gpus <= GPU_EPS:
        return True
    if is_fraction(gpus):
        return any(d >= gpus - GPU_EPS for d in devices)
    need = round(gpus)
    return sum(1 for d in devices if d >= 1 - GPU_EPS) >= need


def device_options(devices: Sequence[float], gpus: float) -> list[int]:
    """For a fraction: the devices it could share, one per distinct free share (the lowest
    index of each), most used first. For whole GPUs: ``[]`` (see ``pick_devices``)."""
    if not is_fraction(gpus):
        return []
    seen: dict[float, int] = {}
    for i, d in enumerate(devices):
        if d >= gpus - GPU_EPS:
            seen.setdefault(round(d, 6), i)
    return [seen[k] for k in sorted(seen)]


def pick_devices(devices: Sequence[float], gpus: float, first_fit: bool = False) -> tuple[int, ...]:
    """Device indices for one container of ``gpus``: a fraction goes on the device with the
    least free share that still holds it (best fit; ``first_fit``: the lowest index that
    holds it); whole GPUs take the lowest-indexed wholly free devices. Raises ValueError when
    they do not fit."""
    if gpus <= GPU_EPS:
        return ()
    if is_fraction(gpus):
        options = device_options(devices, gpus)
        if not options:
            raise ValueError(f"no device has {describe_share(gpus)} of a GPU free")
        return (min(options) if first_fit else options[0],)
    need = round(gpus)
    chosen = tuple(i for i, d in enumerate(devices) if d >= 1 - GPU_EPS)[:need]
    if len(chosen) < need:
        raise ValueError(f"{need} whole GPUs asked, {len(chosen)} wholly free")
    return chosen


def take_devices(devices: list[float], chosen: Sequence[int], gpus: float) -> None:
    """Take ``gpus`` from the ``chosen`` devices (in place)."""
    each = gpus if is_fraction(gpus) else 1.0
    for i in chosen:
        devices[i] = max(0.0, devices[i] - each)


def give_devices(devices: list[float], chosen: Sequence[int], gpus: float) -> None:
    """Give ``gpus`` back to the ``chosen`` devices (in place)."""
    each = gpus if is_fraction(gpus) else 1.0
    for i in chosen:
        devices[i] = min(1.0, devices[i] + each)


def guess_devices(devices: Sequence[float], gpus: float) -> tuple[int, ...]:
    """Where a container of ``gpus`` whose devices are not known most likely sits, to give
    its share back: the devices most used that could have held it."""
    if gpus <= GPU_EPS:
        return ()
    if is_fraction(gpus):
        room = [(d, i) for i, d in enumerate(devices) if d + gpus <= 1 + GPU_EPS]
        return (min(room)[1],) if room else ()
    taken = [i for i, d in enumerate(devices) if d <= GPU_EPS]
    return tuple(taken[: round(gpus)])


# -- the workload and fragmentation ------------------------------------------------------------


@dataclass(frozen=True)
class TaskShape:
    """One kind of container the workload brings: what it asks of one node."""

    cpus: float = 0.0
    memory_mb: int = 0
    gpus: float = 0.0  # a fraction, or whole GPUs
    models: tuple[str, ...] = ()  # GPU models it accepts; empty: any
    mig: str | None = None  # a MIG profile: it never uses shareable devices


Workload = tuple[tuple[TaskShape, float], ...]  # kinds of task and how common each is (sum 1)
MAX_SHAPES = 24  # a workload keeps its most common kinds of task


def workload(shapes: Iterable[TaskShape]) -> Workload:
    """The mix of ``shapes`` (one entry per task): the most common ``MAX_SHAPES`` kinds that
    use shareable GPUs, with how common each is among them. CPU-only and MIG tasks are left
    out: they fragment every node's shareable GPUs alike, so they never change a choice."""
    counts: dict[TaskShape, int] = {}
    for s in shapes:
        counts[s] = counts.get(s, 0) + 1
    return workload_of(counts)


def workload_of(counts: Mapping[TaskShape, int]) -> Workload:
    """``workload`` of the shapes counted in ``counts`` (shape -> how many tasks).

    Kinds of task are told apart by their GPUs (the amount and the models they accept): tasks
    asking for the same GPUs with other CPUs or memory are one kind, with the CPUs and memory
    most of them ask for. So a mix of many CPU and memory sizes still keeps every common GPU
    request in view."""
    by_gpus: dict[tuple[float, tuple[str, ...]], dict[tuple[float, int], int]] = {}
    for s, c in counts.items():
        if c > 0 and s.gpus > GPU_EPS and s.mig is None:
            sizes = by_gpus.setdefault((s.gpus, s.models), {})
            sizes[(s.cpus, s.memory_mb)] = sizes.get((s.cpus, s.memory_mb), 0) + c
    kinds = []
    for (gpus, models), sizes in by_gpus.items():
        (cpus, memory), _ = max(sizes.items(), key=lambda kv: (kv[1], -kv[0][0], -kv[0][1]))
        kinds.append((TaskShape(cpus, memory, gpus, models), sum(sizes.values())))
    top = sorted(kinds, key=lambda kv: (-kv[1], kv[0].gpus, kv[0].cpus))[:MAX_SHAPES]
    total = sum(c for _, c in top)
    return tuple((s, c / total) for s, c in top)


def fragmentation(
    devices: Sequence[float],
    cpus: float,
    memory_mb: int,
    model: str,
    work: Workload,
) -> float:
    """The share of these free devices the workload is expected to leave unused (GPUs)."""
    left = sum(devices)
    if left <= GPU_EPS or not work:
        return 0.0
    expected = 0.0
    for shape, p in work:
        if shape.cpus > cpus + 1e-9 or shape.memory_mb > memory_mb:
            expected += p * left  # the task cannot run here: every free piece is lost to it
        else:
            expected += p * task_fragment(devices, left, model, shape)
    return expected


def task_fragment(devices: Sequence[float], left: float, model: str, shape: TaskShape) -> float:
    """The free GPU share (of ``left`` on these devices) that one task of ``shape`` cannot
    use, given that the node has the CPUs and memory it needs."""
    if shape.models and not same_model(model, shape.models):
        return left
    if is_fraction(shape.gpus):
        need, count = shape.gpus, 1
    else:
        need, count = 1.0, round(shape.gpus)
    usable = 0
    small = 0.0
    for d in devices:
        if d >= need - GPU_EPS:
            usable += 1
        else:
            small += d
    return small if usable >= count else left


def mig_counts(pairs: Iterable[tuple[str, int]]) -> dict[str, int]:
    """``(("1g.18gb", 3), ...)`` as a dict, adding up repeats."""
    out: dict[str, int] = {}
    for profile, n in pairs:
        out[profile] = out.get(profile, 0) + n
    return out


def mig_total_share(counts: Mapping[str, int]) -> float:
    """The GPU share of these MIG instances."""
    return sum(mig_share(p) * n for p, n in counts.items())
