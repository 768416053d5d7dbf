"""GPU discovery through NVML's seam: GPU models, memory, and the MIG instances of a GPU in MIG
mode, from NVML answers written as a real node's NVML gives them (``tests/nvml``)."""

from __future__ import annotations

import json

from dlapp.cli.nodes_join import join_command
from dlapp.runtime.gpus import (
    GpuDevice,
    MigInstance,
    count_gpus,
    discover,
    from_ray_resources,
    ray_resources,
)
from nvml_replay import NVMLError, ReplayedNvml


def test_an_h200_in_mig_mode_reports_its_instances_and_the_other_gpu_is_whole() -> None:
    nvml = ReplayedNvml("h200_mig.json")

    mig_gpu, whole = discover(nvml)

    assert (mig_gpu.model, mig_gpu.memory_mb, mig_gpu.mig_mode) == ("H200", 143771, True)
    assert [(m.profile, m.memory_mb, m.gpu) for m in mig_gpu.mig] == [
        ("3g.71gb", 71424, 0),
        ("2g.35gb", 35584, 0),
        ("1g.18gb", 16128, 0),
        ("1g.18gb", 16128, 0),
    ]
    assert all(m.uuid.startswith("MIG-") for m in mig_gpu.mig)
    assert whole == GpuDevice(
        1, "GPU-a1b2c3d4-e5f6-7a8b-9c0d-e1f2a3b4c5d6", "NVIDIA H200", 143771, (), False
    )
    assert nvml.calls[0] == "nvmlInit" and nvml.calls[-1] == "nvmlShutdown"


def test_mig_profiles_come_from_the_slices_when_the_name_does_not_say() -> None:
    nvml = ReplayedNvml("h200_mig.json")
    for slot in nvml.answers["devices"][0]["mig"]:
        if slot is not None:
            slot["name"] = "NVIDIA H200"  # older drivers name MIG devices like their GPU

    [first, *_] = discover(nvml)[0].mig

    assert first == MigInstance("MIG-0b6c0d8e-91a2-5e3f-8c47-2d9e1f0a3b64", "3g.70gb", 71424, 0)


def test_a_gpu_without_mig_support_is_whole() -> None:
    [t4] = discover(ReplayedNvml("t4.json"))

    assert (t4.model, t4.memory_mb, t4.mig_mode, t4.mig) == ("T4", 15360, False, ())


def test_no_driver_means_no_gpus() -> None:
    class NoDriver(ReplayedNvml):
        def nvmlInit(self) -> None:
            raise NVMLError("NVML_ERROR_DRIVER_NOT_LOADED")

    assert discover(NoDriver("t4.json")) == []
    assert isinstance(count_gpus(), int)  # this machine: whatever NVML (if any) finds


def test_a_node_declares_its_model_memory_and_mig_instances_to_ray() -> None:
    devices = discover(ReplayedNvml("h200_mig.json"))

    gpus, resources = ray_resources(devices)

    assert gpus == 1  # the GPU in MIG mode is handed out by its instances only
    assert resources["dlapp_gpu_model:H200"] == 1 and resources["dlapp_gpu_memory_mb"] == 143771
    mig = sorted(k for k in resources if k.startswith("dlapp_mig:"))
    assert len(mig) == 4 and mig[0].startswith("dlapp_mig:1g.18gb:MIG-")
    model, memory, instances = from_ray_resources({**resources, "GPU": 1.0, "CPU": 8.0})
    assert (model, memory) == ("H200", 143771)
    assert sorted(p for _, p, _ in instances) == ["1g.18gb", "1g.18gb", "2g.35gb", "3g.71gb"]
    cmd = join_command("10.0.0.1:6379", gpus, resources=resources)
    assert "--num-gpus=1" in cmd
    declared = json.loads(next(c for c in cmd if c.startswith("--resources=")).split("=", 1)[1])
    assert declared == resources


def test_a_node_without_dlapps_labels_takes_rays_accelerator_type() -> None:
    assert from_ray_resources({"GPU": 8.0, "accelerator_type:A100": 1.0}) == ("A100", 0, ())
    assert ray_resources([], model=None) == (0, {})
