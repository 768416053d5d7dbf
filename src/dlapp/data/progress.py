"""Progress of one staging (in or out): counts, the lines the app's events get, and when.

``TransferMeter`` counts files and bytes against the totals known up front. ``add`` returns a
progress line when one is due, at a bounded rate: after each further tenth of the bytes, or
after ``every_s`` seconds without one, never twice within ``min_gap_s``. A staging of any size
thus writes at most about ten lines plus one per ``every_s``::

    staging in: 120/340 files, 1.2/3.4 GiB, 85.0 MiB/s
    staging in done: 340 files, 3.4 GiB in 41.0s, 84.9 MiB/s; cache: 3 hits, ...

The clock is injected; nothing here does I/O.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Progress = Callable[[str], None]
STEP = 0.1  # a line after each further tenth of the bytes
EVERY_S = 15.0  # ... or after this long without one
MIN_GAP_S = 1.0  # ... but never two within this


def size(n: float) -> str:
    """Bytes in binary units, as ``du -h`` would say them: ``1.2 GiB``, ``340 B``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _total(done: float, total: float) -> str:
    """``1.2/3.4 GiB``: both in the total's unit."""
    whole = size(total)
    unit = whole.split()[1]
    scale = 1024 ** ("B", "KiB", "MiB", "GiB", "TiB").index(unit)
    return f"{done / scale:.{0 if unit == 'B' else 1}f}/{whole}"


@dataclass
class TransferMeter:
    direction: str  # "in" | "out"
    files: int
    total: int  # bytes
    clock: Callable[[], float] = time.monotonic
    every_s: float = EVERY_S
    min_gap_s: float = MIN_GAP_S
    files_done: int = 0
    done: int = 0
    retries: int = 0
    started: float = field(init=False)
    _last_at: float = field(init=False)
    _last_done: int = field(init=False, default=0)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.started = self._last_at = self.clock()

    @property
    def label(self) -> str:
        return f"staging {self.direction}"

    def begin(self) -> str:
        return f"{self.label}: {self.files} files, {size(self.total)}"

    def add(self, n: int, files: int = 0) -> str | None:
        """``n`` more bytes (and ``files`` more whole files) moved; the progress line, when
        one is due. Safe to call from several transfer threads."""
        with self._lock:
            self.done += n
            self.files_done += files
            return self._due()

    def retried(self) -> None:
        with self._lock:
            self.retries += 1

    def take_back(self, n: int) -> None:
        """A failed try's bytes: they will be moved again."""
        with self._lock:
            self.done -= n

    def _due(self) -> str | None:
        now = self.clock()
        since = now - self._last_at
        stepped = self.total > 0 and self.done - self._last_done >= STEP * self.total
        if since < self.min_gap_s or not (stepped or since >= self.every_s):
            return None
        self._last_at, self._last_done = now, self.done
        return (
            f"{self.label}: {self.files_done}/{self.files} files, "
            f"{_total(self.done, self.total)}, {self.rate()}"
        )

    def elapsed(self) -> float:
        return max(self.clock() - self.started, 1e-6)

    def rate(self) -> str:
        return f"{size(self.done / self.elapsed())}/s"

    def summary(self, extra: str = "") -> str:
        line = (
            f"{self.label} done: {self.files_done} files, {size(self.done)} in "
            f"{self.elapsed():.1f}s, {self.rate()}"
        )
        if self.retries:
            line += f"; {self.retries} {'retry' if self.retries == 1 else 'retries'}"
        return line + (f"; {extra}" if extra else "")
