"""What the cluster looked like over simulated time, integrated as the clock moves.

Per leaf queue, the GPUs it holds and the number of its apps waiting are step functions of
time; ``advance(t)`` integrates them up to ``t``: GPU-seconds, pending-seconds, seconds with
demand, seconds *starved*, and the means over buckets of ``bucket_s`` for the plots.

The cluster's unallocated GPU share, and the part of it that is fragmented (free but in pieces
or on nodes the trace's jobs cannot use; see ``dlapp.sim.gpu_state``), are step functions too
(``gpu_state``), integrated alike.

A queue is starved from a scheduling cycle that leaves it with apps waiting while it holds
fewer GPUs than its guarantee, until a cycle that does not (``cycle_done``). Judged after the
scheduler has had its say, so the wait for the next cycle itself does not count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Buckets:
    """Per bucket, per queue: GPU-seconds held and app-seconds waiting."""

    gpu_s: list[list[float]]
    pending_s: list[list[float]]
    free_s: list[float] = field(default_factory=list)  # unallocated GPU-seconds
    frag_s: list[float] = field(default_factory=list)  # fragmented GPU-seconds


class Timeline:
    def __init__(
        self,
        queues: Sequence[str],
        guaranteed_gpus: Sequence[float],
        bucket_s: float,
        total_gpus: float = 0.0,
    ) -> None:
        if bucket_s <= 0:
            raise ValueError("bucket_s must be positive")
        self.queues = list(queues)
        self.index = {q: i for i, q in enumerate(self.queues)}
        self.guaranteed = list(guaranteed_gpus)
        self.bucket_s = bucket_s
        n = len(self.queues)
        self.now = 0.0
        self.held: list[float] = [0] * n  # GPUs held now
        self.waiting = [0] * n  # apps waiting now
        self.gpu_s = [0.0] * n
        self.pending_s = [0.0] * n
        self.demand_s = [0.0] * n
        self.starved_s = [0.0] * n
        self.starved = [False] * n
        self.starved_since = [0.0] * n
        self.longest_starved_s = [0.0] * n
        self.peak_waiting = [0] * n
        self.total_held: float = 0
        self.peak_held: float = 0
        self.buckets = Buckets([], [])
        self.unallocated = float(total_gpus)  # GPUs free now
        self.fragmented = 0.0  # of which fragmented
        self.free_gpu_s = 0.0
        self.frag_gpu_s = 0.0

    def gpu_state(self, unallocated: float, fragmented: float) -> None:
        """GPUs free in the cluster now, and how many of them are fragmented."""
        self.unallocated, self.fragmented = unallocated, fragmented

    def held_by(self, queue: str, gpus: float) -> None:
        i = self.index[queue]
        self.held[i] += gpus
        self.total_held += gpus
        if self.total_held > self.peak_held:
            self.peak_held = self.total_held

    def waits(self, queue: str, apps: int) -> None:
        i = self.index[queue]
        self.waiting[i] += apps
        if self.waiting[i] > self.peak_waiting[i]:
            self.peak_waiting[i] = self.waiting[i]

    def cycle_done(self) -> None:
        """A scheduling cycle has been applied: judge which queues it left starved, and how
        long each has been starved on end (the longest such stretch per queue)."""
        for i, waiting in enumerate(self.waiting):
            starved = waiting > 0 and self.held[i] < self.guaranteed[i]
            if starved and not self.starved[i]:
                self.starved_since[i] = self.now
            elif self.starved[i] and not starved:
                self.end_starved(i)
            self.starved[i] = starved

    def end_starved(self, i: int) -> None:
        stretch = self.now - self.starved_since[i]
        if stretch > self.longest_starved_s[i]:
            self.longest_starved_s[i] = stretch

    def close(self) -> None:
        """The replay is over: stretches still open end now."""
        for i, starved in enumerate(self.starved):
            if starved:
                self.end_starved(i)

    def advance(self, to: float) -> None:
        """Integrate the current state from ``now`` up to ``to``."""
        n = len(self.queues)
        while self.now < to:
            b = int(self.now // self.bucket_s)
            end = min(to, (b + 1) * self.bucket_s)
            dt = end - self.now
            while len(self.buckets.gpu_s) <= b:
                self.buckets.gpu_s.append([0.0] * n)
                self.buckets.pending_s.append([0.0] * n)
                self.buckets.free_s.append(0.0)
                self.buckets.frag_s.append(0.0)
            self.free_gpu_s += self.unallocated * dt
            self.frag_gpu_s += self.fragmented * dt
            self.buckets.free_s[b] += self.unallocated * dt
            self.buckets.frag_s[b] += self.fragmented * dt
            row_gpu, row_pending = self.buckets.gpu_s[b], self.buckets.pending_s[b]
            for i in range(n):
                held, waiting = self.held[i], self.waiting[i]
                if held:
                    self.gpu_s[i] += held * dt
                    row_gpu[i] += held * dt
                if waiting:
                    self.pending_s[i] += waiting * dt
                    row_pending[i] += waiting * dt
                    self.demand_s[i] += dt
                    if self.starved[i]:
                        self.starved_s[i] += dt
            self.now = end

    def series(self) -> dict[str, Any]:
        """Means per bucket: ``t_h`` (bucket start, hours), GPUs held and apps waiting per
        queue, and the total GPUs held."""
        b = self.bucket_s
        held = {
            q: [round(row[i] / b, 3) for row in self.buckets.gpu_s]
            for i, q in enumerate(self.queues)
        }
        waiting = {
            q: [round(row[i] / b, 3) for row in self.buckets.pending_s]
            for i, q in enumerate(self.queues)
        }
        return {
            "bucket_s": b,
            "t_h": [round(k * b / 3600, 4) for k in range(len(self.buckets.gpu_s))],
            "gpus_held": [round(sum(row) / b, 3) for row in self.buckets.gpu_s],
            "gpus_unallocated": [round(x / b, 3) for x in self.buckets.free_s],
            "gpus_fragmented": [round(x / b, 3) for x in self.buckets.frag_s],
            "gpus_held_by_queue": held,
            "apps_waiting_by_queue": waiting,
        }
