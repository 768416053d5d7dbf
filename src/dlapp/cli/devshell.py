"""The dev shell: the spec's image on this machine, interactively, as the cluster would run it.

``dlapp shell SPEC`` builds the same ``docker run`` argv as the docker runtime
(``docker_run_args``), with ``--interactive --tty --rm`` and ``bash`` instead of the entry
script: the workspace bind-mounted read-write at ``/workspace``, the same env (``DLAPP_APP_ID``
is ``shell-<pid>``), limits, network and policy. It runs as you (``shell_user``), so the
workspace is as writable inside as outside. Free GPUs are held for the session by a lock file
per GPU (``<home>/shell-gpus/<id>.lock``, ``flock``): two shells never share a GPU. The spec,
with its workspace path set to ``/workspace``, is mounted at ``/dlapp/spec.yaml`` and named by
``DLAPP_SPEC``. ``dlapp`` inside is the relay's script (``dlapp.cli.relay``): ``dlapp run``
there submits the workspace with the spec through the ``dlapp shell`` process on the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dlapp.cli.relay import RELAY_IN_CONTAINER, RUN_SHIM_IN_CONTAINER, SHIM_IN_CONTAINER
from dlapp.config import ContainerPolicy
from dlapp.errors import InfeasibleError
from dlapp.runtime.base import LaunchRequest
from dlapp.runtime.docker import RunOptions, docker_run_args, resolve_user
from dlapp.spec import AppSpec

SPEC_IN_CONTAINER = "/dlapp/spec.yaml"
SHIM_DIR = str(PurePosixPath(SHIM_IN_CONTAINER).parent)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # docker's


@dataclass(frozen=True)
class ShellFiles:
    """What ``dlapp shell`` mounts besides the workspace."""

    spec: Path  # the spec as the shell sees it (workspace /workspace): /dlapp/spec.yaml, read-only
    relay: Path  # the relay directory (``dlapp.cli.relay``): /dlapp/relay
    shim: Path  # the relay's ``dlapp`` script: /dlapp/bin/dlapp, read-only
    image_path: str = DEFAULT_PATH  # the image's PATH, which /dlapp/bin goes in front of


def shell_user(spec: AppSpec, policy: ContainerPolicy, uid: int, gid: int) -> str:
    """UID:GID the shell runs as: the spec's ``container.user`` (refused as the runtime refuses
    it) or the policy's fixed user; else the caller's own ``uid:gid``, so that the workspace is
    as writable inside as outside and what is made there is theirs. A root caller's shell is
    root, with every capability dropped and no new privileges, as no more than they are."""
    if (spec.container is not None and spec.container.user) or policy.user != "auto":
        nowhere = Path(os.devnull)
        req = LaunchRequest(
            "shell", 0, Path(spec.workspace.path), spec.entry.script, (), {}, nowhere, nowhere,
            container=spec.container,
        )  # fmt: skip
        return resolve_user(req, policy)
    return f"{uid}:{gid}"


def shell_args(
    spec: AppSpec,
    policy: ContainerPolicy,
    files: ShellFiles,
    gpu_ids: tuple[str, ...],
    user: str,
    command: tuple[str, ...] = ("bash",),
    shell_id: str = "shell",
) -> list[str]:
    """The ``docker run -it`` argv of a dev shell run as ``user`` (``shell_user``). Pure."""
    workdir = Path(spec.workspace.path)
    env = {
        **spec.env,
        "DLAPP_APP_ID": shell_id,
        "CONTAINER_INDEX": "0",
        "NUM_CONTAINERS": "1",
        "CUDA_VISIBLE_DEVICES": ",".join(gpu_ids),
        "DLAPP_WORKSPACE": str(workdir),
        "DLAPP_SPEC": SPEC_IN_CONTAINER,
        "DLAPP_RELAY": RELAY_IN_CONTAINER,
        "PATH": f"{SHIM_DIR}:{spec.env.get('PATH') or files.image_path}",  # dlapp: the relay's
    }
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
    argv = docker_run_args(req, policy, RunOptions(user, interactive=True, command=command))
    image_at = argv.index(req.image or "")
    mounts = [
        *_bind(files.spec, SPEC_IN_CONTAINER, read_only=True),
        *_bind(files.relay, RELAY_IN_CONTAINER),
        *_bind(files.shim, SHIM_IN_CONTAINER, read_only=True),
        *_bind(files.shim, RUN_SHIM_IN_CONTAINER, read_only=True),
    ]
    return argv[:image_at] + mounts + argv[image_at:]


def _bind(source: Path, target: str, read_only: bool = False) -> list[str]:
    return ["--mount", f"type=bind,source={source},target={target}" + (",readonly" * read_only)]


def shell_spec(spec: AppSpec, policy: ContainerPolicy) -> AppSpec:
    """The spec as ``dlapp run`` inside the shell reads it: its workspace is the mounted one."""
    ws = spec.workspace.model_copy(update={"path": policy.workspace_path})
    return spec.model_copy(update={"workspace": ws})


@contextlib.contextmanager
def hold_gpus(count: int, total: int, lock_dir: Path) -> Iterator[tuple[str, ...]]:
    """Hold ``count`` of this machine's ``total`` GPUs for as long as the block runs; an
    ``InfeasibleError`` if it has fewer, or fewer are free (held by other shells)."""
    if count == 0:
        yield ()
        return
    if count > total:
        has = f"only {total}" if total else "none"
        raise InfeasibleError(
            f"the shell needs {count} GPU(s) and this machine has {has}; ask for fewer with --gpus"
        )
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


def image_path(image: str | None, docker: str = "docker") -> str:
    """The PATH that ``image`` sets (``docker image inspect``), or docker's default when it sets
    none or cannot be inspected (then ``docker run`` says why)."""
    try:
        done = subprocess.run(
            [docker, "image", "inspect", "--format", "{{range .Config.Env}}{{println .}}{{end}}",
             image or ""],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return DEFAULT_PATH
    found = [v for v in done.stdout.splitlines() if v.startswith("PATH=")]
    return found[0].removeprefix("PATH=") if done.returncode == 0 and found else DEFAULT_PATH
