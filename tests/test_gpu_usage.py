"""GPU utilisation: the NVML sampler without GPUs, and the meter over a fake sampler."""

from __future__ import annotations

import sys
import types

import pytest

from dlapp.gpu_usage import FakeSampler, GpuSample, GpuSampler, NvmlSampler, UtilisationMeter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_nvml_without_a_gpu_gives_no_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_driver() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=no_driver))
    assert NvmlSampler().sample() == []


def test_nvml_on_this_machine_never_raises() -> None:
    sampler = NvmlSampler()  # no GPU here: nothing; on a GPU node: one sample per device
    samples = sampler.sample()
    assert all(0 <= s.utilisation <= 100 for s in samples)
    sampler.close()


def test_a_failing_sampler_gives_no_samples() -> None:
    class Broken(GpuSampler):
        def _read(self) -> list[GpuSample]:
            raise OSError("device fell off the bus")

    assert Broken().sample() == []


def test_the_meter_credits_each_gpu_to_its_holder() -> None:
    clock = Clock()
    busy = [GpuSample("0", 100.0), GpuSample("1", 50.0), GpuSample("2", 80.0)]
    meter = UtilisationMeter(FakeSampler([busy]), clock)
    holders = {"0": "app_a", "1": "app_a", "2": "app_b"}  # GPU 3 free: no one is credited
    meter.tick(holders)  # the first tick only starts the clock
    clock.now += 60
    meter.tick(holders)
    clock.now += 60
    meter.tick({"0": "app_a", "1": "app_a"})
    used = meter.used_gpu_seconds()
    assert used == {"app_a": pytest.approx(2 * 60 * 1.5), "app_b": pytest.approx(60 * 0.8)}


def test_utilisation_is_clamped() -> None:
    sampler = FakeSampler([[GpuSample("0", 140.0, -5), GpuSample("1", -3.0)]])
    assert sampler.sample() == [GpuSample("0", 100.0, 0), GpuSample("1", 0.0)]


def test_apps_idle_for_long_are_flagged() -> None:
    clock = Clock()
    idle = [GpuSample("0", 0.0), GpuSample("1", 1.0)]
    mixed = [GpuSample("0", 0.0), GpuSample("1", 90.0)]
    sampler = FakeSampler([idle, idle, mixed, idle])
    meter = UtilisationMeter(sampler, clock, idle_below=5.0, idle_after_s=600)
    holders = {"0": "lazy", "1": "busy"}
    meter.tick(holders)
    clock.now += 700
    meter.tick(holders)
    assert meter.idle_apps() == ["busy", "lazy"]  # neither used its GPU for 700 s
    clock.now += 100
    meter.tick(holders)
    assert meter.idle_apps() == ["lazy"]  # "busy" worked just now
    clock.now += 100
    meter.tick({"1": "busy"})  # "lazy" ended: forgotten
    assert meter.idle_apps() == []
