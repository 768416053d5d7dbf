"""GPU utilisation on the node: samplers (NVML without a GPU, the test file), the container
meter over a fake sampler, and the idle rule."""

from __future__ import annotations

import json
import sys
import threading
import types
from pathlib import Path

import pytest

from dlapp.contract import MeterPlan
from dlapp.node.gpu_usage import (
    ContainerMeter,
    FakeSampler,
    FileSampler,
    GpuSample,
    GpuSampler,
    NoSampler,
    NvmlSampler,
    make_sampler,
)
from dlapp.server.accounting import idle_since


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


def test_utilisation_is_clamped() -> None:
    sampler = FakeSampler([[GpuSample("0", 140.0, -5), GpuSample("1", -3.0)]])
    assert sampler.sample() == [GpuSample("0", 100.0, 0), GpuSample("1", 0.0)]


def test_the_test_file_sampler_reads_percentages_or_records(tmp_path: Path) -> None:
    path = tmp_path / "util.json"
    sampler = make_sampler(f"test-file:{path}")
    assert isinstance(sampler, FileSampler)
    assert sampler.sample() == []  # no file yet: no GPUs
    path.write_text(json.dumps({"0": 75, "1": {"utilisation": 20, "memory_used_mb": 900}}))
    assert sampler.sample() == [GpuSample("0", 75.0), GpuSample("1", 20.0, 900)]
    path.write_text("{not json")
    assert sampler.sample() == []  # a bad file is a failed read, never an exception


def test_sampler_names_are_checked() -> None:
    assert isinstance(make_sampler("none"), NoSampler)
    with pytest.raises(ValueError, match=r"unknown GPU sampler 'cuda'.*nvml, none, test-file"):
        make_sampler("cuda")
    with pytest.raises(ValueError, match="unknown GPU sampler"):
        make_sampler("test-file:")


def test_the_meter_credits_only_the_containers_gpus_and_keeps_the_peak() -> None:
    clock = Clock()
    readings = [
        [GpuSample("0", 100.0, 1000), GpuSample("1", 50.0, 500), GpuSample("2", 80.0, 9)],
        [GpuSample("0", 20.0, 3000), GpuSample("1", 0.0, 100), GpuSample("2", 80.0, 9)],
    ]
    meter = ContainerMeter(MeterPlan(interval_s=3600), FakeSampler(readings), clock)
    # GPU 2 is another container's: never credited here. A first sample now, the next by hand
    meter.start(["0", "1"])
    clock.now += 60
    meter.tick()  # 60 s at the second reading: 20% + 0%
    meter.stop()  # 0 s more
    report = meter.report()
    assert report["gpu_ids"] == ["0", "1"]
    assert report["samples"] == 3
    assert report["gpu_seconds_used"] == pytest.approx(60 * 0.2)
    assert report["seconds_sampled"] == pytest.approx(60)
    assert report["gpus"] == {
        "0": {"utilisation": 20.0, "memory_used_mb": 3000},
        "1": {"utilisation": 0.0, "memory_used_mb": 100},
    }
    assert report["memory_peak_mb"] == 3100


def test_idle_seconds_count_from_the_last_busy_sample() -> None:
    clock = Clock()
    busy, idle = [GpuSample("0", 90.0)], [GpuSample("0", 1.0)]
    plan = MeterPlan(interval_s=3600, idle_below=5.0)
    meter = ContainerMeter(plan, FakeSampler([busy, idle, idle]), clock)
    assert meter.report()["idle_s"] is None  # nothing sampled yet: not known to be idle
    meter.start(["0"])  # busy
    clock.now += 100
    meter.tick()
    clock.now += 50
    meter.tick()
    assert meter.report()["idle_s"] == pytest.approx(150)
    meter.stop()


def test_a_meter_without_gpus_samples_nothing_but_counts_staging() -> None:
    clock = Clock()
    meter = ContainerMeter(MeterPlan(), FakeSampler([[GpuSample("0", 99.0)]]), clock)
    meter.start([])  # no GPUs: no thread, no samples
    with meter.staging("in") as moved:
        clock.now += 2.0
        moved.bytes = 4_000_000
    meter.stop()
    report = meter.report()
    assert report["samples"] == 0 and report["idle_s"] is None
    assert report["staging"] == {
        "in": {"bytes": 4_000_000, "seconds": 2.0},
        "out": {"bytes": 0, "seconds": 0.0},
    }


def test_the_meter_thread_samples_until_stopped() -> None:
    meter = ContainerMeter(MeterPlan(interval_s=0.01), FakeSampler([[GpuSample("0", 50.0)]]))
    meter.start(["0"])
    deadline = 200
    while meter.report()["samples"] < 3 and deadline:
        threading.Event().wait(0.01)
        deadline -= 1
    meter.stop()
    after = meter.report()["samples"]
    assert after >= 3
    threading.Event().wait(0.05)
    assert meter.report()["samples"] == after  # stopped: no more samples
    assert meter.report()["gpu_seconds_used"] > 0


def test_an_app_is_idle_since_its_last_busy_container() -> None:
    assert idle_since([100.0, 250.0]) == 250.0
    assert idle_since([100.0, None]) is None  # one container not sampled: unknown
    assert idle_since([]) is None
