"""What the benchmarks' reports share: the percentile (the simulator's report's, one for all),
the machine a benchmark ran on, their tables, and a busy thread to measure beside."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dlapp.sim.report import percentile

__all__ = ["busy_thread", "machine", "markdown_table", "percentile", "plain_table", "ratio_text"]


@contextmanager
def busy_thread(on: bool) -> Iterator[None]:
    """One thread spinning in Python while the block runs (when ``on``): as an API's threads
    are under load, never giving up the GIL of their own accord."""
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1

    t = threading.Thread(target=spin, daemon=True)
    if on:
        t.start()
    try:
        yield
    finally:
        stop.set()
        if on:
            t.join()


def machine() -> str:
    """CPUs, memory, Python and load: the line a benchmark's report starts with."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()} CPUs ({cpu or 'unknown'}), {mem:.0f} GiB, "
        f"Python {sys.version.split()[0]}, load {os.getloadavg()[0]:.2f} at start"
    )


def ratio_text(x: float | None) -> str:
    """A ratio as the tables show it: ``1.23x``, ``12.3x``, ``-`` where not measured."""
    return "-" if x is None else f"{x:.1f}x" if x >= 10 else f"{x:.2f}x"


def plain_table(header: list[str], rows: list[list[str]]) -> str:
    """Aligned columns for a terminal. A row shorter than ``header`` (a system not measured, and
    why) is its first cell then the rest as one text, outside the columns."""
    full = [r for r in rows if len(r) == len(header)]
    widths = [max(len(c) for c in col) for col in zip(header, *full, strict=True)]
    widths[0] = max([widths[0]] + [len(r[0]) for r in rows])
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        if len(row) == len(header):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        else:
            lines.append(f"{row[0].ljust(widths[0])}  {' '.join(row[1:])}")
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (as docs/benchmarks.md shows them); short rows padded with empty cells."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for row in rows:
        row = row + [""] * (len(header) - len(row))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
