"""Accounting: GPU-hours allocated (and, where sampled, used) per user or queue; the idle-GPU
rule (``idle_since``) the server applies to the nodes' reports.

Pure: callers hand in each container's hold on GPUs (``Allocation``) with, where its GPUs were
sampled (``dlapp.node.gpu_usage.ContainerMeter``), the GPU-seconds it was measured to use; no store,
no clock. A container holds its app's ``gpus`` (per container) from its start to its end (or
``until`` while it runs); the part inside ``[since, until)`` counts, and so does the same part
of its measured use (spread evenly over its life: samples carry no finer times).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

GroupBy = Literal["user", "queue"]
GROUPS: tuple[GroupBy, ...] = ("user", "queue")


@dataclass(frozen=True)
class Allocation:
    """One container of one attempt, holding ``gpus`` GPUs from ``start`` to ``end``: its
    share of them (a fraction of one shared GPU counts as that fraction of its GPU-hours)."""

    app_id: str
    user: str
    queue: str
    gpus: float
    start: float
    end: float | None  # None: still running
    used_gpu_seconds: float | None = None  # measured over its whole life; None: not sampled
    # the wall seconds its samples covered (from the first to the last); None: as held. Start-
    # up, staging and the wait for the first sample are held but unmeasured: utilisation is
    # over what was measured, not over a gap counted as idle
    sampled_seconds: float | None = None


@dataclass
class UsageRow:
    key: str  # the user or queue
    gpu_hours: float = 0.0
    gpu_hours_used: float | None = None  # None: no utilisation samples for these apps
    gpu_hours_sampled: float = 0.0  # allocated GPU-hours of the containers that were sampled
    apps: set[str] = field(default_factory=set)
    containers: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "key": self.key,
            "gpu_hours": round(self.gpu_hours, 4),
            "gpu_hours_used": None
            if self.gpu_hours_used is None
            else round(self.gpu_hours_used, 4),
            "utilisation": None
            if self.gpu_hours_used is None or self.gpu_hours_sampled <= 0
            else round(100 * self.gpu_hours_used / self.gpu_hours_sampled, 1),
            "apps": len(self.apps),
            "containers": self.containers,
        }


def held_seconds(a: Allocation, since: float, until: float) -> float:
    """Seconds of ``a`` inside ``[since, until)``."""
    end = until if a.end is None else min(a.end, until)
    return max(0.0, end - max(a.start, since))


def usage(
    allocations: Iterable[Allocation],
    since: float,
    until: float,
    by: GroupBy = "user",
) -> list[UsageRow]:
    """GPU-hours allocated (and used, where sampled) per ``by`` inside ``[since, until)``, most
    first; apps that held no GPU in the period are left out. ``utilisation`` is used over
    the GPU time measured, counting only the sampled containers."""
    rows: dict[str, UsageRow] = {}
    for a in allocations:
        seconds = held_seconds(a, since, until)
        if a.gpus <= 0 or seconds <= 0:
            continue
        key = a.user if by == "user" else a.queue
        row = rows.setdefault(key, UsageRow(key))
        row.gpu_hours += a.gpus * seconds / 3600
        row.containers += 1
        row.apps.add(a.app_id)
        if a.used_gpu_seconds is not None:
            life = held_seconds(a, a.start, until if a.end is None else a.end)
            part = 1.0 if life <= 0 else seconds / life
            row.gpu_hours_used = (row.gpu_hours_used or 0.0) + a.used_gpu_seconds * part / 3600
            measured = seconds if a.sampled_seconds is None else a.sampled_seconds * part
            row.gpu_hours_sampled += a.gpus * measured / 3600
    return sorted(rows.values(), key=lambda r: (-r.gpu_hours, r.key))


def idle_since(busy_until: Sequence[float | None]) -> float | None:
    """When an app's GPUs all went idle: the latest of its containers' last-busy times; None
    when a container has not been sampled (so the app is not known to be idle)."""
    if not busy_until or any(t is None for t in busy_until):
        return None
    return max(t for t in busy_until if t is not None)
