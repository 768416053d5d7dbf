"""``dlapp node join``: make this machine a GPU node of a dlapp cluster, through Ray.

It wraps ``ray start --address=<head>``: the GPUs come from NVML (or ``--gpus``); dlapp pins
containers by Ray's own ``ray.io/node-id`` label. Ray's token authentication must be set up
on the node (the head's ``~/.ray/auth_token``, or ``RAY_AUTH_TOKEN``), since dlapp refuses an
unauthenticated cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def join_command(
    address: str, gpus: int, cpus: float | None = None, node_ip: str | None = None
) -> list[str]:
    """The ``ray start`` command line that joins ``address`` with ``gpus`` GPUs."""
    ray = str(Path(sys.executable).with_name("ray"))
    cmd = [ray, "start", f"--address={address}", f"--num-gpus={gpus}"]
    if cpus is not None:
        cmd.append(f"--num-cpus={int(cpus)}")
    if node_ip:
        cmd.append(f"--node-ip-address={node_ip}")
    return cmd


def join(address: str, gpus: int, cpus: float | None, node_ip: str | None) -> int:
    cmd = join_command(address, gpus, cpus, node_ip)
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, env=dict(os.environ))
