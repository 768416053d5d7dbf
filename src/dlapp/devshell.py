"""The dev shell: the spec's image on this machine, interactively, as the cluster would run it.

``dlapp shell SPEC`` builds the same ``docker run`` argv as the docker runtime
(``docker_run_args``), with ``--interactive --tty --rm`` and ``bash`` instead of the entry
script: the workspace bind-mounted read-write at ``/workspace``, the same env (``DLAPP_APP_ID``
is ``shell-<pid>``), limits, user and policy. Free GPUs are held for the session by a lock file
per GPU (``<home>/shell-gpus/<id>.lock``, ``flock``): two shells never share a GPU. The spec,
with its workspace path set to ``/workspace``, is mounted at ``/dlapp/spec.yaml`` and named by
``DLAPP_SPEC``, so that ``dlapp run`` inside submits the mounted workspace with that spec.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from dlapp.errors import InfeasibleError
from dlapp.runtime.base import LaunchRequest
from dlapp.runtime.docker import RunOptions, docker_run_args, resolve_user
from dlapp.runtime.policy import ContainerPolicy
from dlapp.spec import AppSpec

SPEC_IN_CONTAINER = "/dlapp/spec.yaml"


def shell_args(
    spec: AppSpec,
    policy: ContainerPolicy,
    spec_file: Path,
    gpu_ids: tuple[str, ...],
    command: tuple[str, ...] = ("bash",),
    shell_id: str = "shell",
) -> list[str]:
    """The ``docker run -it`` argv of a dev shell. ``spec_file``: the spec as the shell sees it
    (workspace ``/workspace``), mounted read-only at ``/dlapp/spec.yaml``."""
    workdir = Path(spec.workspace.path)
    env = {
        **spec.env,
        "DLAPP_APP_ID": shell_id,
        "CONTAINER_INDEX": "0",
        "NUM_CONTAINERS": "1",
        "CUDA_VISIBLE_DEVICES": ",".join(gpu_ids),
        "DLAPP_WORKSPACE": str(workdir),
        "DLAPP_SPEC": SPEC_IN_CONTAINER,
    }
    if os.environ.get("DLAPP_SERVER"):
        env["DLAPP_SERVER"] = os.environ["DLAPP_SERVER"]  # never the token
    req = LaunchRequest(
        app_id=shell_id,
        index=0,
        workdir=workdir,
        script=spec.entry.script,
        args=spec.entry.args,
        env=env,
        stdout=Path(os.devnull),
        stderr=Path(os.devnull),
        image=spec.image,
        cpus=spec.resources.cpus,
        memory_mb=spec.resources.memory_mb,
        gpu_ids=gpu_ids,
        container=spec.container,
    )
    policy = policy.model_copy(update={"cluster_id": None})  # no orphan sweep takes a shell
    argv = docker_run_args(
        req, policy, RunOptions(resolve_user(req, policy), interactive=True, command=command)
    )
    image_at = argv.index(req.image or "")
    mount = ["--mount", f"type=bind,source={spec_file},target={SPEC_IN_CONTAINER},readonly"]
    return argv[:image_at] + mount + argv[image_at:]


def shell_spec(spec: AppSpec, policy: ContainerPolicy) -> AppSpec:
    """The spec as ``dlapp run`` inside the shell reads it: its workspace is the mounted one."""
    ws = spec.workspace.model_copy(update={"path": policy.workspace_path})
    return spec.model_copy(update={"workspace": ws})


@contextlib.contextmanager
def hold_gpus(count: int, total: int, lock_dir: Path) -> Iterator[tuple[str, ...]]:
    """Hold ``count`` of this machine's ``total`` GPUs for as long as the block runs; an
    ``InfeasibleError`` if fewer are free (held by other shells)."""
    if count == 0:
        yield ()
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    held: list[tuple[str, int]] = []
    try:
        for gpu in range(total):
            if len(held) == count:
                break
            fd = os.open(lock_dir / f"{gpu}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            held.append((str(gpu), fd))
        if len(held) < count:
            raise InfeasibleError(
                f"the shell needs {count} GPU(s); {len(held)} of this machine's {total} are free "
                "(other shells hold the rest); ask for fewer with --gpus"
            )
        yield tuple(gpu for gpu, _ in held)
    finally:
        for _, fd in held:
            os.close(fd)
