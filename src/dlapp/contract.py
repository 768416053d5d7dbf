"""The contract between the server and the nodes: what the server asks of one container's
supervisor, what comes back, and where the logs are kept.

The server (``server``, ``executor``) and the node (``node.supervisor``) both import this
module and never each other's internals. Plans travel to the node as plain data (dicts of the
settings they carry), so a node needs nothing of the server to read them.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

LINE_PREFIXES = ("staging ", "input ", "output ")  # the progress lines data.staging writes
STREAMS = ("stdout", "stderr")
KILLED_BY_REQUEST = "killed by request"  # diagnostics of a container stopped by dlapp
# diagnostics of a container stopped with a notice, by the notice's reason
STOPPED_WITH_NOTICE = {
    "softkill": "softkilled by request",
    "preempted": "preempted",
    "evicted": "evicted (its node was cordoned)",
    "gang": "stopped with its gang",
}
SHIP_BYTES = 4 * 1024 * 1024  # at most this much of each log stream per shipment
NODE_LOST = "node lost"  # diagnostics prefix of a container lost with its node
NOT_STARTED = "did not start"  # diagnostics prefix of a supervisor not up in start_timeout_s


class ContainerCause(StrEnum):
    """Why a container ended: reported with it and kept with it in the store, so that the
    server decides what becomes of its app from this value, never from the diagnostics' text
    (which is for people)."""

    EXITED = "exited"  # its program ended, with whatever code; or it could not start there
    KILLED = "killed"  # dlapp stopped it (kill, softkill, preemption, eviction, gang)
    NODE_LOST = "node_lost"  # its node went (the raylet died, or Ray declared the node dead)
    NOT_STARTED = "not_started"  # its supervisor was not up within start_timeout_s
    AGENT_LOST = "agent_lost"  # its node's agent died, and the containers it ran with it
    LOST = "lost"  # anything else: its supervisor died, the server restarted, no start


def container_name(app_id: str, index: int) -> str:
    """A container's name in Ray: its supervisor actor's, and its key on its node's agent."""
    return f"dlapp:{app_id}:{index}"


@dataclass(frozen=True)
class ContainerPlan:
    """Everything one supervisor needs, decided by the server."""

    app_id: str
    attempt: int
    index: int
    num_containers: int
    spec: dict[str, Any]  # AppSpec.to_dict()
    workspace_tarball: str  # path in the artifact store
    artifact_root: str
    work_root: str
    checkpoint_root: str = ""  # where checkpoints are kept; empty: <artifact_root>/checkpoints
    max_files: int = 100_000
    max_bytes: int = 4 * 1024**3
    node_name: str = field(default_factory=socket.gethostname)
    node_id: str = ""  # the node chosen for it: its containers' dlapp.node label
    rendezvous: dict[str, str] = field(default_factory=dict)  # MASTER_ADDR, RANK, ... (gangs)
    # an array's member: DLAPP_ARRAY_ID / _INDEX / _SIZE and its sweep's values (arrays.py)
    array_env: dict[str, str] = field(default_factory=dict)
    # data.locations.DataConfig.to_dict(): profiles, file roots, cache. Holds credentials:
    # never shown
    data: dict[str, Any] = field(default_factory=dict, repr=False)
    container: dict[str, Any] = field(default_factory=dict)  # config.ContainerPolicy
    meter: dict[str, Any] = field(default_factory=dict)  # MeterPlan: GPU sampling
    # unix_accounts.AccountPlan.to_dict(): the Unix account the app and the staging of its
    # local data act as; empty: the server's own (the embedded one-person cluster)
    account: dict[str, Any] = field(default_factory=dict)
    # its GPUs as dlapp's GPU-ID manager chose them: device indices of the node, or MIG
    # instance UUIDs (an executor whose engine hands out device IDs itself, as Ray does for
    # whole and fractional GPUs, uses the engine's); the share it holds of each (a fraction
    # of one shared device, or 1.0), and the GPU memory that share is (stated to the app)
    gpu_ids: tuple[str, ...] = ()
    gpu_share: float = 0.0
    gpu_memory_mb: int = 0

    @property
    def actor_name(self) -> str:
        return container_name(self.app_id, self.index)


@dataclass(frozen=True)
class ContainerResult:
    exit_code: int | None
    diagnostics: str
    log_location: str | None
    end_time: float
    killed: bool = False
    usage: dict[str, Any] | None = None  # node.gpu_usage.ContainerMeter.report(), at the end
    notes: tuple[tuple[float, str], ...] = ()  # (time, line) since start: staging out, stops
    cause: ContainerCause = ContainerCause.EXITED
    # where a failed app's outputs were saved (``<url>.failed-<app id>``, save_on_failure)
    failed_outputs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Shipment:
    """What a supervisor sends the server now and then while its container stages and runs
    (``Supervisor.ship``): its logs' new bytes, which the server appends to the kept logs (so
    a node lost mid-run keeps what was written), and its notes since the last report (staging
    progress, live)."""

    logs: dict[str, tuple[int, bytes]]  # stream -> (offset, the bytes from there)
    notes: tuple[tuple[float, str], ...] = ()


def stop_diagnostics(notice: Mapping[str, Any] | None) -> str:
    """What a container that dlapp stopped says: its notice's reason (softkill, preemption,
    eviction), else ``KILLED_BY_REQUEST``."""
    if notice is None:
        return KILLED_BY_REQUEST
    reason = str(notice.get("reason", ""))
    said = STOPPED_WITH_NOTICE.get(reason, f"stopped ({reason})" if reason else KILLED_BY_REQUEST)
    detail = str(notice.get("detail") or "")
    if not detail or detail.startswith(said):  # "preempted for <app>: ..." says it already
        return detail or said
    return f"{said}: {detail}"


def notice_contents(notice: Mapping[str, Any]) -> dict[str, Any]:
    """The notice file's contents: the notice, with its deadline (a UNIX time, after which
    SIGKILL comes) also as ISO 8601 in UTC (``deadline_iso``)."""
    out = dict(notice)
    deadline = out.get("deadline")
    if isinstance(deadline, int | float):
        out["deadline_iso"] = datetime.fromtimestamp(deadline, UTC).isoformat(
            timespec="milliseconds"
        )
    return out


@dataclass(frozen=True)
class MeterPlan:
    """How a container is measured; chosen by the server (``gpu_sampler`` and friends)."""

    sampler: str = "nvml"
    interval_s: float = 10.0
    idle_below: float = 5.0  # percent: a GPU under this is idle

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MeterPlan:
        return cls(**data)


def gpu_env(gpu_ids: Sequence[str], share: float, memory_mb: int, mps: bool) -> dict[str, str]:
    """The GPU part of a container's environment: the devices it sees, and, when it holds a
    fraction of one shared device, its share and that share's memory, stated always
    (``DLAPP_GPU_FRACTION``, ``DLAPP_GPU_MEMORY_MB``) and enforced where the node runs NVIDIA
    MPS (``mps``: its memory pinned with ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``, its compute with
    ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``). ``DLAPP_GPU_MEMORY_LIMIT`` says which: ``mps``, or
    ``none`` (the app keeps to its share itself, e.g. with PyTorch's
    ``torch.cuda.set_per_process_memory_fraction``)."""
    env = {"CUDA_VISIBLE_DEVICES": ",".join(gpu_ids)}
    if not gpu_ids or share <= 0:
        return env
    env["DLAPP_GPU_FRACTION"] = f"{share:g}"
    if memory_mb > 0:
        env["DLAPP_GPU_MEMORY_MB"] = str(memory_mb)
    if share < 1:
        env["DLAPP_GPU_MEMORY_LIMIT"] = "mps" if mps else "none"
        if mps:
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] = str(max(1, round(share * 100)))
            if memory_mb > 0:  # the device as the container numbers it: its only one
                env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] = f"0={memory_mb}M"
    return env


def log_dir(artifact_root: str, app_id: str, attempt: int, index: int) -> Path:
    """Where a container's finished logs are kept in the artifact store (one file per stream)."""
    return Path(artifact_root) / "logs" / app_id / str(attempt) / str(index)
