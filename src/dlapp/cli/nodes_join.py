"""``dlapp node join``: make this machine a GPU node of a dlapp cluster, through Ray.

It wraps ``ray start --address=<head>``: the GPUs come from NVML (or ``--gpus``), with their
model (or ``--gpu-model``), memory and MIG instances declared as Ray resources; dlapp pins
containers by Ray's own ``ray.io/node-id`` label. Ray's token authentication must be set up
on the node (the head's ``~/.ray/auth_token``, or ``RAY_AUTH_TOKEN``), since dlapp refuses an
unauthenticated cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dlapp.runtime.gpus import MIG_RESOURCE, MODEL_RESOURCE, discover, ray_resources


def join_command(
    address: str,
    gpus: int,
    cpus: float | None = None,
    node_ip: str | None = None,
    resources: dict[str, float] | None = None,
) -> list[str]:
    """The ``ray start`` command line that joins ``address`` with ``gpus`` GPUs (and the
    ``resources`` that tell dlapp their model, memory and MIG instances)."""
    ray = str(Path(sys.executable).with_name("ray"))
    cmd = [ray, "start", f"--address={address}", f"--num-gpus={gpus}"]
    if resources:
        cmd.append(f"--resources={json.dumps(resources, sort_keys=True)}")
    if cpus is not None:
        cmd.append(f"--num-cpus={int(cpus)}")
    if node_ip:
        cmd.append(f"--node-ip-address={node_ip}")
    return cmd


def join(
    address: str,
    gpus: int | None,
    cpus: float | None,
    node_ip: str | None,
    model: str | None = None,
) -> int:
    """Join with the GPUs NVML finds (their model, memory and MIG instances), or ``gpus``
    GPUs of ``model``."""
    devices = discover()
    found, resources = ray_resources(devices, model)
    if gpus is not None:
        found = gpus
        resources = {k: v for k, v in resources.items() if not k.startswith(MIG_RESOURCE)}
        if model and not devices:
            resources = {MODEL_RESOURCE + model: 1.0}
    cmd = join_command(address, found, cpus, node_ip, resources)
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, env=dict(os.environ))
