"""The ``docker`` runtime: each container of an app is a Docker container on the node.

``docker_run_args`` is pure: the ``docker run`` argv (no shell) from the launch request, the
admin's ``ContainerPolicy`` and a few decided values (``RunOptions``). Golden files in
``tests/golden/`` hold what it returns.

``DockerRuntime`` runs that argv in the foreground under the process runtime's guard (see
``guard.py``), so the container fate-shares with its supervisor:

- the guard leads the process group that holds the ``docker run`` client; if the supervisor
  dies, the guard runs ``docker rm -f NAME`` (its ``--cleanup``) and kills the group;
- signals go to the container through ``docker kill --signal``; SIGKILL also kills the group;
- after the exit, ``docker inspect`` tells whether the kernel killed it for memory
  (``.State.OOMKilled``: exit 137, "out of memory"), then the container is removed;
- containers carry the labels ``dlapp.app``, ``dlapp.index`` and ``dlapp.cluster``; the
  scheduler removes those of apps that are not RUNNING (``remove_orphans``), on start and every
  few cycles, for whatever the rest missed (a guard killed with SIGKILL, a node restart).

Inside, the app sees the workspace at ``policy.workspace_path`` (its working directory), its
checkpoint directory at ``/dlapp/checkpoint`` and the notice file under ``/dlapp/run``; the env
paths say so. With GPUs passed as devices, CUDA numbers them from 0 inside: CUDA_VISIBLE_DEVICES
is ``0..n-1`` and ``DLAPP_GPU_IDS`` keeps the node's IDs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dlapp.credentials import without_secrets
from dlapp.runtime.base import LaunchRequest, Running, Runtime, exit_code_from_returncode
from dlapp.runtime.policy import ContainerPolicy

logger = logging.getLogger(__name__)

GUARD_PATH = Path(__file__).resolve().with_name("guard.py")
CHECKPOINT_PATH = "/dlapp/checkpoint"
RUN_PATH = "/dlapp/run"  # the notice file's directory, read-only
DEFAULT_USER = "1000:1000"  # when the workspace owner is root
LABEL_APP = "dlapp.app"
LABEL_INDEX = "dlapp.index"
LABEL_CLUSTER = "dlapp.cluster"
DOCKER_TIMEOUT_S = 30.0
EXIT_DOCKER_FAILED = 125  # docker run's own failure (bad flag, missing image, ...)

Runner = Callable[..., subprocess.CompletedProcess[str]]


@dataclass(frozen=True)
class RunOptions:
    """What the runner decides besides the request and the policy."""

    user: str  # UID:GID
    interactive: bool = False  # ``-it`` and ``--rm``: the dev shell
    command: tuple[str, ...] | None = None  # instead of the entry script (the dev shell)


def container_name(app_id: str, index: int) -> str:
    return f"dlapp-{app_id}-{index}"


def entry_command(script: str, args: Sequence[str]) -> list[str]:
    """The app's argv inside the container, as the process runtime picks it."""
    if script.endswith(".sh"):
        return ["bash", script, *args]
    if script.endswith(".py"):
        return ["python3", script, *args]
    return [script if "/" in script else f"./{script}", *args]


def container_env(req: LaunchRequest, policy: ContainerPolicy) -> dict[str, str]:
    """The request's env with its node paths and GPU IDs as the container sees them; never a
    dlapp secret."""
    env = without_secrets(req.env)
    env["DLAPP_WORKSPACE"] = policy.workspace_path
    if "DLAPP_CHECKPOINT_DIR" in env:
        env["DLAPP_CHECKPOINT_DIR"] = CHECKPOINT_PATH
    if "DLAPP_NOTICE_FILE" in env:
        env["DLAPP_NOTICE_FILE"] = f"{RUN_PATH}/{Path(req.env['DLAPP_NOTICE_FILE']).name}"
    if policy.gpus != "none":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(req.gpu_ids)))
        env["DLAPP_GPU_IDS"] = ",".join(req.gpu_ids)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("HOME", "/tmp")
    return env


def _bind(source: str | Path, target: str, read_only: bool = False) -> list[str]:
    spec = f"type=bind,source={source},target={target}"
    return ["--mount", spec + (",readonly" if read_only else "")]


def _cpus(cpus: float) -> str:
    return f"{cpus:g}"


def docker_run_args(req: LaunchRequest, policy: ContainerPolicy, opts: RunOptions) -> list[str]:
    """The ``docker run`` argv for one container. Pure: no I/O, no clock.

    The policy was checked at submit (``check_container``); the flags here are the fence all
    the same: whatever the request says, no ``--privileged``, all capabilities dropped but the
    allowed ones, no new privileges, the given non-root user.
    """
    if req.image is None:
        raise ValueError("a container needs an image")
    c = req.container
    args = [policy.docker, "run"]
    if opts.interactive:
        args += ["--rm", "--interactive", "--tty"]
    args += ["--name", container_name(req.app_id, req.index)]
    args += ["--label", f"{LABEL_APP}={req.app_id}", "--label", f"{LABEL_INDEX}={req.index}"]
    if policy.cluster_id:
        args += ["--label", f"{LABEL_CLUSTER}={policy.cluster_id}"]
    args += ["--init", "--pull", policy.pull, "--user", opts.user]
    args += ["--cap-drop", "ALL"]
    for cap in c.cap_add if c else ():
        if cap in policy.allowed_caps:
            args += ["--cap-add", cap]
    args += ["--security-opt", "no-new-privileges"]
    network = policy.network if c is None or c.network == "default" else c.network
    if network == "host" and not policy.allow_host_network:
        network = policy.network
    args += ["--network", network]
    args += ["--pids-limit", str(policy.pids_limit)]
    if req.memory_mb is not None:  # no swap beyond the limit: over it is out of memory
        args += ["--memory", f"{req.memory_mb}m", "--memory-swap", f"{req.memory_mb}m"]
    if req.cpus is not None:
        args += ["--cpus", _cpus(req.cpus)]
    if req.gpu_ids and policy.gpus == "nvidia":
        # quoted: docker reads --gpus as CSV, so "device=0,1" must be one field
        args += ["--gpus", f'"device={",".join(req.gpu_ids)}"']
    elif req.gpu_ids and policy.gpus == "cdi":
        for gpu in req.gpu_ids:
            args += ["--device", f"nvidia.com/gpu={gpu}"]
    port = req.env.get("MASTER_PORT")
    if network == "bridge" and port and req.env.get("RANK") == "0" and opts.command is None:
        args += ["--publish", f"{port}:{port}"]  # the gang's rendezvous, on container 0's node
    args += _bind(req.workdir, policy.workspace_path)
    args += ["--workdir", policy.workspace_path]
    if "DLAPP_CHECKPOINT_DIR" in req.env:
        args += _bind(req.env["DLAPP_CHECKPOINT_DIR"], CHECKPOINT_PATH)
    if "DLAPP_NOTICE_FILE" in req.env:
        args += _bind(Path(req.env["DLAPP_NOTICE_FILE"]).parent, RUN_PATH, read_only=True)
    for m in c.mounts if c else ():
        args += _bind(m.host, m.path, m.read_only)
    for key, value in sorted(container_env(req, policy).items()):
        args += ["--env", f"{key}={value}"]
    args.append(req.image)
    args += list(opts.command) if opts.command else entry_command(req.script, req.args)
    return args


# -- talking to docker --------------------------------------------------------------------------


def _run(
    docker_argv: list[str], timeout: float = DOCKER_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        docker_argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _quiet(docker_argv: list[str]) -> None:
    """Run a docker command whose failure only matters in the log (e.g. "no such container")."""
    try:
        done = _run(docker_argv)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("%s failed: %s", " ".join(docker_argv[:3]), exc)
        return
    if done.returncode != 0:
        logger.debug("%s: %s", " ".join(docker_argv[:3]), done.stderr.strip())


_availability: dict[str, tuple[float, str | None]] = {}
_AVAILABILITY_TTL_S = 30.0


def docker_problem(docker: str = "docker") -> str | None:
    """Why docker cannot run containers here (no CLI, no daemon), or None; cached 30 s."""
    now = time.monotonic()
    cached = _availability.get(docker)
    if cached is not None and now - cached[0] < _AVAILABILITY_TTL_S:
        return cached[1]
    problem: str | None = None
    if shutil.which(docker) is None:
        problem = f"no {docker!r} command on this machine"
    else:
        try:
            done = _run([docker, "version", "--format", "{{.Server.Version}}"], timeout=15)
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines() or ["no answer"]
                problem = f"the docker daemon does not answer: {lines[-1]}"
        except (OSError, subprocess.SubprocessError) as exc:
            problem = f"the docker daemon does not answer: {exc}"
    _availability[docker] = (now, problem)
    return problem


def resolve_user(req: LaunchRequest, policy: ContainerPolicy) -> str:
    """UID:GID the app runs as: the spec's, else the policy's; ``auto`` is the workspace's
    owner, or DEFAULT_USER when that is root."""
    if req.container is not None and req.container.user:
        return req.container.user
    if policy.user != "auto":
        return policy.user
    st = req.workdir.stat()
    return DEFAULT_USER if st.st_uid == 0 else f"{st.st_uid}:{st.st_gid}"


def give_to(paths: Iterable[Path], user: str) -> None:
    """As root: chown each tree to ``user`` so that the container can write it."""
    uid, _, gid = user.partition(":")
    owner, group = int(uid), int(gid or uid)
    for root in paths:
        if not root.exists():
            continue
        os.lchown(root, owner, group)
        for base, dirs, files in os.walk(root):
            for name in dirs + files:
                os.lchown(os.path.join(base, name), owner, group)


class DockerRunning(Running):
    """The guard that holds ``docker run``; the container is found by its name."""

    def __init__(
        self, popen: subprocess.Popen[bytes], name: str, docker: str, req: LaunchRequest
    ) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.name = name
        self._docker = docker
        self._req = req
        self._note: str | None = None
        self._finished = False
        self._lock = threading.Lock()

    def signal(self, sig: int) -> None:
        _quiet([self._docker, "kill", "--signal", str(int(sig)), self.name])
        if sig == signal.SIGKILL:  # and the client, in case the container was not made yet
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            returncode = self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        code = exit_code_from_returncode(returncode)
        with self._lock:
            if not self._finished:
                self._finished = True
                self._note = self._inspect_and_remove(code)
        return code

    def exit_note(self) -> str | None:
        return self._note

    def _inspect_and_remove(self, code: int) -> str | None:
        note = None
        try:
            done = _run([self._docker, "inspect", "--format", "{{.State.OOMKilled}}", self.name])
            if done.returncode == 0 and done.stdout.strip() == "true":
                limit = self._req.memory_mb
                note = "out of memory (OOM): killed at its memory limit" + (
                    f" of {limit}M" if limit else ""
                )
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("cannot inspect container %s: %s", self.name, exc)
        _quiet([self._docker, "rm", "--force", self.name])
        if note is None and code == EXIT_DOCKER_FAILED:
            note = f"docker could not run the container: {_last_docker_line(self._req.stderr)}"
        return note


def _last_docker_line(stderr: Path) -> str:
    try:
        with stderr.open("rb") as f:
            f.seek(max(0, stderr.stat().st_size - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return "see its stderr"
    found = [line for line in lines if line.startswith(("docker:", "Error"))]
    return found[-1] if found else "see its stderr"


class DockerRuntime(Runtime):
    name = "docker"

    def __init__(self, policy: ContainerPolicy | None = None) -> None:
        self.policy = policy or ContainerPolicy()

    def _launch(self, req: LaunchRequest) -> Running:
        policy = self.policy
        name = container_name(req.app_id, req.index)
        _quiet([policy.docker, "rm", "--force", name])  # one left by an earlier attempt
        user = resolve_user(req, policy)
        if os.geteuid() == 0:
            writable = [req.workdir]
            if "DLAPP_CHECKPOINT_DIR" in req.env:
                writable.append(Path(req.env["DLAPP_CHECKPOINT_DIR"]))
            give_to(writable, user)
        argv = docker_run_args(req, policy, RunOptions(user=user))
        cleanup = json.dumps([policy.docker, "rm", "--force", name])
        cmd = [sys.executable, "-I", str(GUARD_PATH), "--parent", str(os.getpid())]
        cmd += ["--cleanup", cleanup, "--", *argv]
        for log in (req.stdout, req.stderr):
            log.parent.mkdir(parents=True, exist_ok=True)
        with open(req.stdout, "ab") as out, open(req.stderr, "ab") as err:
            popen = subprocess.Popen(
                cmd,
                cwd=req.workdir,
                env=without_secrets(os.environ),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        return DockerRunning(popen, name, policy.docker, req)


# -- orphans ------------------------------------------------------------------------------------


def orphans(listing: Iterable[tuple[str, str]], running: set[str]) -> list[str]:
    """Names of the containers (``(name, app id)`` pairs) whose app is not running. Pure."""
    return [name for name, app_id in listing if app_id not in running]


def list_containers(policy: ContainerPolicy) -> list[tuple[str, str]]:
    """``(name, app id)`` of this cluster's containers on this machine, running or not."""
    argv = [policy.docker, "ps", "--all", "--filter", f"label={LABEL_APP}"]
    if policy.cluster_id:
        argv += ["--filter", f"label={LABEL_CLUSTER}={policy.cluster_id}"]
    argv += ["--format", '{{.Names}}\t{{.Label "' + LABEL_APP + '"}}']
    done = _run(argv)
    if done.returncode != 0:
        raise OSError(done.stderr.strip() or f"docker ps exited {done.returncode}")
    pairs = [line.split("\t", 1) for line in done.stdout.splitlines() if "\t" in line]
    return [(name, app_id) for name, app_id in pairs]


def remove_orphans(policy: ContainerPolicy, running: set[str]) -> list[str]:
    """Remove this cluster's containers whose app is not RUNNING; their names. Quiet (an empty
    list) where docker is missing or its daemon does not answer."""
    if shutil.which(policy.docker) is None:
        return []
    try:
        names = orphans(list_containers(policy), running)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("cannot list containers: %s", exc)
        return []
    for name in names:
        logger.warning("removing orphan container %s", name)
        _quiet([policy.docker, "rm", "--force", name])
    return names
