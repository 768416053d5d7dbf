"""The ``podman`` runtime: the docker runtime's builder, guard and life cycle, run by podman.

Everything of ``docker.py`` holds (the guard, ``podman kill``, ``.State.OOMKilled``, the
labels and the orphan sweep); the argv comes from the same ``docker_run_args`` with
``engine="podman"``, which differs in three ways:

- ``--userns`` from the policy (``host`` by default: rootful podman, as dlapp's nodes run it;
  ``keep-id`` for a rootless node, where the node's user keeps its UID inside);
- GPUs always by CDI name (``--device nvidia.com/gpu=N``): podman has no ``--gpus``;
- ``--runtime runc`` on a node whose cgroups are hybrid (v1 controllers, a v2 hierarchy beside
  them at ``/sys/fs/cgroup/unified``): crun, podman's default, refuses those ("cgroups in
  hybrid mode not supported"); the policy's ``oci_runtime`` names another one;
- explicit ``--ulimit nofile`` / ``nproc``: the node's own limits (as a docker container gets
  dockerd's). Left alone, rootful podman raises them to its defaults (1048576 open files,
  4194304 processes), which a node whose root lacks CAP_SYS_RESOURCE refuses at start
  ("error setting rlimit type 7: operation not permitted").

``--init`` needs ``catatonit`` on the node (Debian: ``apt-get install podman catatonit``).
"""

from __future__ import annotations

import resource
import shutil
from pathlib import Path

from dlapp.config import Engine
from dlapp.runtime.docker import DockerRuntime, RunOptions, Ulimit

PID_MAX = Path("/proc/sys/kernel/pid_max")
CGROUP = Path("/sys/fs/cgroup")


def cgroups_hybrid(root: Path = CGROUP) -> bool:
    """Whether this node mounts cgroup v1 controllers with a v2 hierarchy beside them."""
    return (root / "unified" / "cgroup.controllers").exists() and (root / "memory").is_dir()


def oci_runtime(setting: str, root: Path = CGROUP) -> str | None:
    """The ``--runtime`` for ``podman run``: ``setting`` unless it is ``auto``; for ``auto``,
    runc on a hybrid node that has it, else none (podman's own default)."""
    if setting != "auto":
        return setting
    return "runc" if cgroups_hybrid(root) and shutil.which("runc") else None


def node_ulimits() -> tuple[Ulimit, ...]:
    """``nofile`` and ``nproc`` as this process has them; ``nproc`` at most the kernel's
    ``pid_max``, which rootful podman holds its own processes to."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)
    try:
        pid_max = int(PID_MAX.read_text())
    except (OSError, ValueError):
        pid_max = 32768
    return (
        ("nofile", *_finite(nofile, 1 << 20)),
        ("nproc", *_finite(nproc, pid_max)),
    )


def _finite(limits: tuple[int, int], cap: int) -> tuple[int, int]:
    """(soft, hard), unlimited (-1) and values over ``cap`` taken as ``cap``."""
    soft, hard = (cap if v == resource.RLIM_INFINITY or v > cap else v for v in limits)
    return min(soft, hard), hard


class PodmanRuntime(DockerRuntime):
    name = "podman"
    engine: Engine = "podman"

    def run_options(self, user: str) -> RunOptions:
        return RunOptions(
            user=user,
            engine="podman",
            ulimits=node_ulimits(),
            oci_runtime=oci_runtime(self.policy.oci_runtime),
        )
