"""GPU discovery on this machine: the GPUs NVML finds, their model and memory, and the MIG
instances of GPUs in MIG mode (``dlapp up``, ``dlapp node join``, ``dlapp shell``, the
embedded Ray, a runtime's ``gpus: auto``). No Ray here: the CLI imports it.

``discover(nvml)`` reads NVML through a module-like object: ``pynvml`` by default, or a
stand-in that answers the same calls (the tests replay answers recorded from a real H200 in
MIG mode, ``tests/fixtures/nvml_h200_mig.json``).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlapp.spec import gpu_model

MIB = 1024 * 1024
NVML_DEVICE_MIG_ENABLE = 1
_MIG_NAME_RE = re.compile(r"\bMIG\s+(\d+g\.\d+gb)\b", re.IGNORECASE)


@dataclass(frozen=True)
class MigInstance:
    """One MIG instance: what a container asking for its profile sees (its UUID only)."""

    uuid: str  # MIG-...
    profile: str  # 1g.18gb
    memory_mb: int
    gpu: int  # the index of the GPU it is part of


@dataclass(frozen=True)
class GpuDevice:
    """One GPU: shared by fractions or held whole, unless it is in MIG mode (then only its
    instances are handed out)."""

    index: int
    uuid: str
    name: str  # NVML's: NVIDIA H200
    memory_mb: int
    mig: tuple[MigInstance, ...] = ()
    mig_mode: bool = False

    @property
    def model(self) -> str:
        """The model nodes are labelled with: ``H200``."""
        return gpu_model(self.name)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _mig_instances(nvml: Any, handle: Any, gpu: int) -> tuple[MigInstance, ...]:
    out = []
    for slot in range(int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except nvml.NVMLError:
            continue  # an empty slot
        uuid = _text(nvml.nvmlDeviceGetUUID(mig))
        memory_mb = int(nvml.nvmlDeviceGetMemoryInfo(mig).total) // MIB
        found = _MIG_NAME_RE.search(_text(nvml.nvmlDeviceGetName(mig)))
        if found is not None:
            profile = found.group(1).lower()
        else:  # older drivers name MIG devices like their GPU: read the slices instead
            attrs = nvml.nvmlDeviceGetAttributes(mig)
            profile = f"{attrs.gpuInstanceSliceCount}g.{round(attrs.memorySizeMB / 1024)}gb"
        out.append(MigInstance(uuid, profile, memory_mb, gpu))
    return tuple(out)


def discover(nvml: Any | None = None) -> list[GpuDevice]:
    """The GPUs on this machine; [] where there is no driver (or no NVML library)."""
    if nvml is None:
        try:
            import pynvml
        except ImportError:
            return []
        nvml = pynvml
    try:
        nvml.nvmlInit()
    except Exception:  # no driver: the library raises its own errors
        return []
    try:
        devices = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            try:
                mig_mode = int(nvml.nvmlDeviceGetMigMode(handle)[0]) == NVML_DEVICE_MIG_ENABLE
            except nvml.NVMLError:  # a GPU without MIG
                mig_mode = False
            devices.append(
                GpuDevice(
                    index=index,
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    memory_mb=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // MIB,
                    mig=_mig_instances(nvml, handle, index) if mig_mode else (),
                    mig_mode=mig_mode,
                )
            )
        return devices
    except Exception:
        return []
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


MPS_PIPE_DIRECTORY = Path("/tmp/nvidia-mps")  # nvidia-cuda-mps-control's default


def mps_running(pipe_directory: Path | None = None) -> bool:
    """Whether an NVIDIA MPS control daemon serves this machine: its control pipe exists (in
    ``CUDA_MPS_PIPE_DIRECTORY`` where the node's environment sets it, else the default)."""
    where = pipe_directory or Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", MPS_PIPE_DIRECTORY))
    return (where / "control").exists()


def count_gpus() -> int:
    """GPUs on this machine, through NVML; 0 where there is no driver."""
    return len(discover())


# Ray custom resources by which a node tells the dlapp server what Ray does not: its GPUs'
# model and memory, and each MIG instance (one unit each, so that Ray holds an instance for the
# one container dlapp gives it to)
MODEL_RESOURCE = "dlapp_gpu_model:"  # + model: 1
MEMORY_RESOURCE = "dlapp_gpu_memory_mb"  # MiB of each shareable GPU
MIG_RESOURCE = "dlapp_mig:"  # + profile:uuid: 1


def mig_resource(profile: str, uuid: str) -> str:
    return f"{MIG_RESOURCE}{profile}:{uuid}"


def ray_resources(
    devices: list[GpuDevice], model: str | None = None
) -> tuple[int, dict[str, float]]:
    """(GPUs for Ray's ``num_gpus``: the shareable ones, and the custom resources that carry
    the rest) for a node with ``devices``; ``model`` overrides the model NVML names."""
    whole = [d for d in devices if not d.mig_mode]
    resources: dict[str, float] = {}
    named = model or (whole[0].model if whole else devices[0].model if devices else "")
    if named:
        resources[MODEL_RESOURCE + named] = 1.0
    if whole:
        resources[MEMORY_RESOURCE] = float(min(d.memory_mb for d in whole))
    for d in devices:
        for m in d.mig:
            resources[mig_resource(m.profile, m.uuid)] = 1.0
    return len(whole), resources


def from_ray_resources(
    resources: dict[str, float],
) -> tuple[str, int, tuple[tuple[str, str, int], ...]]:
    """(model, memory MiB of each GPU, MIG instances as (uuid, profile, memory MiB)) from a
    node's Ray resources (``ray_resources``; the model falls back on Ray's own
    ``accelerator_type:``)."""
    model = ""
    for key in resources:
        if key.startswith(MODEL_RESOURCE):
            model = key.removeprefix(MODEL_RESOURCE)
    if not model:
        for key in resources:
            if key.startswith("accelerator_type:"):
                model = key.removeprefix("accelerator_type:")
    mig = []
    for key in sorted(resources):
        if key.startswith(MIG_RESOURCE):
            profile, _, uuid = key.removeprefix(MIG_RESOURCE).partition(":")
            mig.append((uuid, profile, 0))
    return model, int(resources.get(MEMORY_RESOURCE, 0)), tuple(mig)
