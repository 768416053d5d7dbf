"""GPU utilisation: sampled through NVML on a node, integrated into GPU-seconds used per app.

    GpuSampler.sample()          the shared work: read, clamp, never raise
      ├── NvmlSampler._read      NVML (``nvidia-ml-py``); no driver or no GPU: no samples
      └── FakeSampler._read      scripted samples, for tests

``UtilisationMeter.tick(holdings)`` takes one sample of every GPU on the node and credits each
GPU's utilisation x the time since the last tick to the app holding it (``holdings``: GPU id ->
app id, as ``/api/v1/cluster`` shows them). It also says which apps have left all their GPUs
idle (under ``idle_below`` percent) for at least ``idle_after_s``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


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


class FakeSampler(GpuSampler):
    """Returns the readings it is given, one list per call (the last one repeats)."""

    def __init__(self, readings: Sequence[Sequence[GpuSample]]) -> None:
        self._readings = [list(r) for r in readings] or [[]]
        self._calls = 0

    def _read(self) -> list[GpuSample]:
        reading = self._readings[min(self._calls, len(self._readings) - 1)]
        self._calls += 1
        return list(reading)


class UtilisationMeter:
    def __init__(
        self,
        sampler: GpuSampler,
        clock: Callable[[], float],
        idle_below: float = 5.0,
        idle_after_s: float = 3600.0,
    ) -> None:
        self.sampler = sampler
        self.clock = clock
        self.idle_below = idle_below
        self.idle_after_s = idle_after_s
        self._last: float | None = None
        self._used: dict[str, float] = {}  # app id -> GPU-seconds used
        self._busy_at: dict[str, float] = {}  # app id -> last time one of its GPUs was busy

    def tick(self, holdings: Mapping[str, str]) -> list[GpuSample]:
        """Sample now; credit the period since the last tick to the holders. Returns the samples."""
        now = self.clock()
        dt = 0.0 if self._last is None else max(now - self._last, 0.0)
        self._last = now
        samples = self.sampler.sample()
        for s in samples:
            app = holdings.get(s.gpu_id)
            if app is None:
                continue
            self._used[app] = self._used.get(app, 0.0) + dt * s.utilisation / 100
            self._busy_at.setdefault(app, now)  # first seen: count idleness from now
            if s.utilisation >= self.idle_below:
                self._busy_at[app] = now
        for app in set(self._busy_at) - set(holdings.values()):  # gone: forget
            del self._busy_at[app]
        return samples

    def used_gpu_seconds(self) -> dict[str, float]:
        return dict(self._used)

    def idle_apps(self) -> list[str]:
        """Apps whose GPUs have all been idle for at least ``idle_after_s``."""
        now = self.clock() if self._last is None else self._last
        return sorted(a for a, t in self._busy_at.items() if now - t >= self.idle_after_s)
