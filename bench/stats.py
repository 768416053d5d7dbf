"""What the benchmarks' reports share: the percentile (the simulator's report's, one for all)
and the machine a benchmark ran on."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dlapp.sim.report import percentile

__all__ = ["machine", "percentile"]


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
