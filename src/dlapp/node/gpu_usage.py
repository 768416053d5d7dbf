"""GPU utilisation and staging, measured on the node for one container.

    GpuSampler.sample()          the shared work: read, clamp, never raise
      ├── NvmlSampler._read      NVML (``nvidia-ml-py``); no driver or no GPU: no samples
      ├── FileSampler._read      readings from a JSON file (``test-file:<path>``; tests only)
      ├── NoSampler._read        nothing (``none``)
      └── FakeSampler._read      scripted samples, for unit tests

``ContainerMeter`` runs beside one container (the supervisor starts it once the container runs
and stops it when it exits): every ``interval_s`` it samples the container's GPUs, credits each
GPU's utilisation x the time since the last sample (GPU-seconds used), keeps the last reading
and the peak memory, and remembers when one of them was last busy. It also counts the bytes and
seconds of staging in and out. ``report()`` is what the server polls (JSON-able). How it
measures is the server's ``contract.MeterPlan``; the server applies the idle rule to the
reports (``server.accounting.idle_since``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlapp.contract import MeterPlan

logger = logging.getLogger(__name__)

SAMPLERS = ("nvml", "none", "test-file:<path>")
TEST_FILE = "test-file:"
DIRECTIONS = ("in", "out")


@dataclass(frozen=True)
class GpuSample:
    gpu_id: str  # the device index, as CUDA_VISIBLE_DEVICES and the containers' gpu_ids say
    utilisation: float  # percent of the last sample period the GPU was busy, 0..100
    memory_used_mb: int = 0


class GpuSampler(ABC):
    def sample(self) -> list[GpuSample]:
        """One reading of every GPU on this node; none where there is no GPU or the read fails."""
        try:
            found = self._read()
        except Exception as exc:  # a sampler must never take its caller down
            logger.warning("GPU sampling failed: %s", exc)
            return []
        return [
            GpuSample(s.gpu_id, min(max(s.utilisation, 0.0), 100.0), max(s.memory_used_mb, 0))
            for s in found
        ]

    @abstractmethod
    def _read(self) -> list[GpuSample]: ...

    def close(self) -> None:
        return None


class NvmlSampler(GpuSampler):
    """NVML through ``pynvml``. Without the library, a driver or a GPU, it returns nothing."""

    def __init__(self) -> None:
        self._nvml: Any = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as exc:  # no libnvidia-ml.so, no driver: a node without GPUs
            logger.info("NVML unavailable, no GPU utilisation: %s", exc)

    def _read(self) -> list[GpuSample]:
        nvml = self._nvml
        if nvml is None:
            return []
        out = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            rates = nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            out.append(GpuSample(str(i), float(rates.gpu), int(memory.used) // (1024 * 1024)))
        return out

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.nvmlShutdown()
            self._nvml = None


class FileSampler(GpuSampler):
    """Readings from a JSON file, ``{"<gpu id>": <percent>}`` or ``{"<gpu id>": {"utilisation":
    <percent>, "memory_used_mb": <MiB>}}``; no file: no samples. For tests on machines without
    GPUs (``gpu_sampler: test-file:<path>``), never for a real cluster."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> list[GpuSample]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        out = []
        for gpu, value in data.items():
            if isinstance(value, dict):
                out.append(
                    GpuSample(
                        str(gpu), float(value["utilisation"]), int(value.get("memory_used_mb", 0))
                    )
                )
            else:
                out.append(GpuSample(str(gpu), float(value)))
        return out


class NoSampler(GpuSampler):
    def _read(self) -> list[GpuSample]:
        return []


class FakeSampler(GpuSampler):
    """Returns the readings it is given, one list per call (the last one repeats)."""

    def __init__(self, readings: Sequence[Sequence[GpuSample]]) -> None:
        self._readings = [list(r) for r in readings] or [[]]
        self._calls = 0

    def _read(self) -> list[GpuSample]:
        reading = self._readings[min(self._calls, len(self._readings) - 1)]
        self._calls += 1
        return list(reading)


def check_sampler(name: str) -> str:
    """``name`` if it names a sampler, else ValueError listing the ones there are."""
    if name in ("nvml", "none") or (name.startswith(TEST_FILE) and len(name) > len(TEST_FILE)):
        return name
    raise ValueError(f"unknown GPU sampler {name!r}; use one of {', '.join(SAMPLERS)}")


def make_sampler(name: str) -> GpuSampler:
    """The sampler ``name`` (see ``SAMPLERS``) selects."""
    check_sampler(name)
    if name == "nvml":
        return NvmlSampler()
    if name == "none":
        return NoSampler()
    return FileSampler(Path(name.removeprefix(TEST_FILE)))


class _Moved:
    bytes = 0


class ContainerMeter:
    """Measures one container: its GPUs while it runs, and its staging (see the module doc)."""

    def __init__(
        self,
        plan: MeterPlan,
        sampler: GpuSampler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = plan
        self.clock = clock
        self._sampler = sampler
        self._gpu_ids: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: float | None = None
        self._started: float | None = None
        self._busy_at: float | None = None
        self._used = 0.0  # GPU-seconds
        self._sampled_s = 0.0
        self._samples = 0
        self._now: dict[str, GpuSample] = {}
        self._peak_mb = 0
        self._staging = {d: {"bytes": 0, "seconds": 0.0} for d in DIRECTIONS}

    # -- GPUs -----------------------------------------------------------------------------------

    def start(self, gpu_ids: Sequence[str]) -> None:
        """Sample ``gpu_ids`` every ``interval_s`` in a thread, from now until ``stop``."""
        self._gpu_ids = tuple(str(g) for g in gpu_ids)
        if not self._gpu_ids:
            return
        if self._sampler is None:
            self._sampler = make_sampler(self.plan.sampler)
        self.tick()
        self._thread = threading.Thread(target=self._run, name="dlapp-gpu-meter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.plan.interval_s):
            self.tick()

    def stop(self) -> None:
        """A last sample, then no more."""
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=10)
        self.tick()
        if self._sampler is not None:
            self._sampler.close()

    def tick(self) -> None:
        """Sample now; credit the period since the last sample to the GPUs' utilisation."""
        assert self._sampler is not None
        samples = [s for s in self._sampler.sample() if s.gpu_id in self._gpu_ids]
        with self._lock:
            now = self.clock()
            if self._started is None:
                self._started = self._busy_at = now
            dt = 0.0 if self._last is None else max(now - self._last, 0.0)
            self._last = now
            if not samples:
                return
            self._samples += 1
            self._sampled_s += dt
            for s in samples:
                self._used += dt * s.utilisation / 100
                self._now[s.gpu_id] = s
                if s.utilisation >= self.plan.idle_below:
                    self._busy_at = now
            self._peak_mb = max(self._peak_mb, sum(s.memory_used_mb for s in samples))

    # -- staging --------------------------------------------------------------------------------

    @contextmanager
    def staging(self, direction: str) -> Iterator[_Moved]:
        """Time a stage in or out; the caller sets ``.bytes`` on what it gets."""
        moved = _Moved()
        t0 = self.clock()
        try:
            yield moved
        finally:
            with self._lock:
                self._staging[direction]["bytes"] += moved.bytes
                self._staging[direction]["seconds"] += self.clock() - t0

    # -- the report -----------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """What the server stores: GPU-seconds used over the seconds sampled, the last reading
        per GPU, peak memory, seconds since a GPU was last busy (None before any sample), and
        staging bytes and seconds per direction."""
        with self._lock:
            now = self._last if self._last is not None else self.clock()
            return {
                "gpu_ids": list(self._gpu_ids),
                "samples": self._samples,
                "gpu_seconds_used": round(self._used, 3),
                "seconds_sampled": round(self._sampled_s, 3),
                "gpus": {
                    g: {"utilisation": s.utilisation, "memory_used_mb": s.memory_used_mb}
                    for g, s in sorted(self._now.items())
                },
                "memory_peak_mb": self._peak_mb,
                "idle_s": None
                if not self._samples or self._busy_at is None
                else round(now - self._busy_at, 3),
                "staging": {d: dict(v) for d, v in self._staging.items()},
            }
