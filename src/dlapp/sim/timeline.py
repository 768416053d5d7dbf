"""What the cluster looked like over simulated time, integrated as the clock moves.

Per leaf queue, the GPUs it holds and the number of its apps waiting are step functions of
time; ``advance(t)`` integrates them up to ``t``: GPU-seconds, pending-seconds, seconds with
demand, seconds *starved*, and the means over buckets of ``bucket_s`` for the plots.

A queue is starved from a scheduling cycle that leaves it with apps waiting while it holds
fewer GPUs than its guarantee, until a cycle that does not (``cycle_done``). Judged after the
scheduler has had its say, so the wait for the next cycle itself does not count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Buckets:
    """Per bucket, per queue: GPU-seconds held and app-seconds waiting."""

    gpu_s: list[list[float]]
    pending_s: list[list[float]]


class Timeline:
    def __init__(
        self, queues: Sequence[str], guaranteed_gpus: Sequence[int], bucket_s: float
    ) -> None:
        if bucket_s <= 0:
            raise ValueError("bucket_s must be positive")
        self.queues = list(queues)
        self.index = {q: i for i, q in enumerate(self.queues)}
        self.guaranteed = list(guaranteed_gpus)
        self.bucket_s = bucket_s
        n = len(self.queues)
        self.now = 0.0
        self.held = [0] * n  # GPUs held now
        self.waiting = [0] * n  # apps waiting now
        self.gpu_s = [0.0] * n
        self.pending_s = [0.0] * n
        self.demand_s = [0.0] * n
        self.starved_s = [0.0] * n
        self.starved = [False] * n
        self.peak_waiting = [0] * n
        self.total_held = 0
        self.peak_held = 0
        self.buckets = Buckets([], [])

    def held_by(self, queue: str, gpus: int) -> None:
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
        """A scheduling cycle has been applied: judge which queues it left starved."""
        for i, waiting in enumerate(self.waiting):
            self.starved[i] = waiting > 0 and self.held[i] < self.guaranteed[i]

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
            "gpus_held_by_queue": held,
            "apps_waiting_by_queue": waiting,
        }
