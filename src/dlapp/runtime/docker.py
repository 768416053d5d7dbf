"""The ``docker`` runtime: each container of an app is a Docker container on the node.

``docker_run_args`` is pure: the ``docker run`` argv (no shell) from the launch request, the
admin's ``ContainerPolicy`` and a few decided values (``RunOptions``). Golden files in
``tests/golden/`` hold what it returns. The same builder makes ``podman run`` argv
(``RunOptions.engine``; the ``podman`` runtime in ``podman.py``), with podman's differences:
``--userns``, GPUs always by CDI name, explicit ``--ulimit`` values.

``DockerRuntime`` runs that argv in the foreground under the process runtime's guard (see
``guard.py``), so the container fate-shares with its supervisor:

- the guard leads the process group that holds the ``docker run`` client; if the supervisor
  dies, the guard runs ``docker rm -f NAME`` (its ``--cleanup``) and kills the group;
- signals go to the container through ``docker kill --signal``; SIGKILL also kills the group;
- after the exit, ``docker inspect`` tells whether the kernel killed it for memory
  (``.State.OOMKilled``: exit 137, "out of memory"), then the container is removed;
- those calls around ``docker run`` (the removal of a container left by an earlier attempt,
  kill, inspect, rm) go to the Engine API over the daemon's unix socket where the CLI's
  endpoint is one (``engine_api.py``: no Go binary started for each), else to the CLI;
- containers carry the labels ``dlapp.app``, ``dlapp.index``, ``dlapp.cluster`` and
  ``dlapp.node`` (the Ray node id); on start and every few cycles each node removes its own
  containers of apps that are not RUNNING and have no live supervisor (``remove_orphans``,
  run on every node by the executor), for whatever the rest missed (a guard killed with
  SIGKILL, a node restart).

What reaches the argv is checked again here, whatever the submit path let through: the image
must be an image reference (never an option such as ``--privileged``), the user numeric, and
an entry script named like an option (``-c.sh``) is passed as ``./-c.sh``. The container's env
never reaches the argv, where ``ps`` shows it to every local account: the runtime writes it to
an env file (``--env-file``, one ``K=V`` a line, mode 0600, in the container's log directory,
which only the node's own user reads) and removes that file once the container exists (the
engine wrote its ID to the ``--cidfile`` beside it) or the engine gave up.

Inside, the app sees the workspace at ``policy.workspace_path`` (its working directory), its
checkpoint directory at ``/dlapp/checkpoint`` and the notice file under ``/dlapp/run``; the env
paths say so. With GPUs passed as devices, CUDA numbers them from 0 inside: CUDA_VISIBLE_DEVICES
is ``0..n-1`` and ``DLAPP_GPU_IDS`` keeps the node's IDs. The policy's ``gpus: auto`` is decided
on the node when a container starts (``node_gpu_policy``): devices where NVML finds GPUs, none
where it finds none (GPUs declared on a machine without any, ``dlapp up --gpus 2``: no device
is requested, and CUDA_VISIBLE_DEVICES keeps the declared IDs).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from dlapp.config import ContainerPolicy, Engine
from dlapp.credentials import without_secrets
from dlapp.errors import Forbidden
from dlapp.runtime.base import (
    LaunchRequest,
    Running,
    Runtime,
    exit_code_from_returncode,
    guard_command,
    make_log_dirs,
    spawn_guarded,
)
from dlapp.runtime.engine_api import EngineAPI, engine_api
from dlapp.runtime.gpus import count_gpus
from dlapp.runtime.policy import user_problem
from dlapp.spec import canonical_user, image_problem
from dlapp.unix_accounts import chown_tree

logger = logging.getLogger(__name__)

CHECKPOINT_PATH = "/dlapp/checkpoint"
RUN_PATH = "/dlapp/run"  # the notice file's directory, read-only
DEFAULT_USER = "1000:1000"  # when the workspace owner is root
LABEL_APP = "dlapp.app"
LABEL_INDEX = "dlapp.index"
LABEL_CLUSTER = "dlapp.cluster"
LABEL_NODE = "dlapp.node"
DOCKER_TIMEOUT_S = 30.0
EXIT_DOCKER_FAILED = 125  # docker run's own failure (bad flag, missing image, ...)
CID_POLL_S = 0.005  # how often the cid file is looked at at first (a stat) ...
CID_POLL_MAX_S = 0.1  # ... and at most, later

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Ulimit = tuple[str, int, int]  # name, soft, hard


@dataclass(frozen=True)
class RunOptions:
    """What the runner decides besides the request and the policy."""

    user: str  # UID:GID
    interactive: bool = False  # ``-it`` and ``--rm``: the dev shell
    command: tuple[str, ...] | None = None  # instead of the entry script (the dev shell)
    engine: Engine = "docker"
    ulimits: tuple[Ulimit, ...] = ()  # ``--ulimit NAME=SOFT:HARD`` (podman: the node's own)
    oci_runtime: str | None = None  # ``--runtime`` (podman: runc where crun cannot run)
    gateway: str | None = None  # the bridge network's gateway here (see ``rendezvous_addr``)
    # the file that holds the container's env (``--env-file``), so that no value is in argv;
    # None: ``--env K=V`` (the dev shell, run by its own user on their own machine)
    env_file: Path | None = None
    # ``--cidfile``: the engine writes the container's ID there once it exists (the runtime
    # then removes the env file); None: no such file
    cid_file: Path | None = None


def container_name(app_id: str, index: int) -> str:
    return f"dlapp-{app_id}-{index}"


def entry_command(script: str, args: Sequence[str]) -> list[str]:
    """The app's argv inside the container, as the process runtime picks it; a script named
    like an option (``-c.sh``) goes as ``./-c.sh``, so that no interpreter reads it as one."""
    path = f"./{script}" if script.startswith(("-", "+")) else script
    if script.endswith(".sh"):
        return ["bash", path, *args]
    if script.endswith(".py"):
        return ["python3", path, *args]
    return [path if "/" in path else f"./{path}", *args]


GpuDevices = Literal["nvidia", "cdi", "none"]


def gpu_devices(policy: ContainerPolicy, engine: Engine = "docker") -> GpuDevices:
    """How assigned GPUs reach a container of ``engine``. Pure: ``auto`` left undecided (see
    ``node_gpu_policy``) reads as ``nvidia``; podman has GPUs by CDI name only."""
    devices: GpuDevices = "nvidia" if policy.gpus == "auto" else policy.gpus
    return "cdi" if engine == "podman" and devices == "nvidia" else devices


def node_gpu_policy(
    policy: ContainerPolicy, gpus_here: Callable[[], int] = count_gpus
) -> ContainerPolicy:
    """``policy`` with ``gpus: auto`` decided for this node: ``nvidia`` where NVML finds GPUs,
    ``none`` where it finds none (the GPUs are declared: no device exists to request)."""
    if policy.gpus != "auto":
        return policy
    return policy.model_copy(update={"gpus": "nvidia" if gpus_here() > 0 else "none"})


def container_env(req: LaunchRequest, policy: ContainerPolicy) -> dict[str, str]:
    """The request's env with its node paths and GPU IDs as the container sees them; never a
    dlapp secret."""
    env = without_secrets(req.env)
    env["DLAPP_WORKSPACE"] = policy.workspace_path
    if "DLAPP_CHECKPOINT_DIR" in env:
        env["DLAPP_CHECKPOINT_DIR"] = CHECKPOINT_PATH
    if "DLAPP_NOTICE_FILE" in env:
        env["DLAPP_NOTICE_FILE"] = f"{RUN_PATH}/{Path(req.env['DLAPP_NOTICE_FILE']).name}"
    if gpu_devices(policy) != "none":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(req.gpu_ids)))
        env["DLAPP_GPU_IDS"] = ",".join(req.gpu_ids)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("HOME", "/tmp")
    return env


def run_env(req: LaunchRequest, policy: ContainerPolicy, opts: RunOptions) -> dict[str, str]:
    """The container's whole env: ``container_env``, with a gang's MASTER_ADDR as containers on
    its network reach it."""
    env = container_env(req, policy)
    network = container_network(req, policy)
    if "MASTER_ADDR" in env and network == "bridge":
        env["MASTER_ADDR"] = rendezvous_addr(req, network, opts.gateway) or env["MASTER_ADDR"]
    return env


def env_file_text(env: Mapping[str, str]) -> str:
    """``env`` as docker and podman read an env file: ``K=V`` a line, the value verbatim (no
    quotes, no expansion). A value with a line break or NUL cannot be written: ValueError."""
    lines = []
    for key, value in sorted(env.items()):
        if not _ENV_NAME.match(key):
            raise ValueError(f"env name {key!r} cannot be written to an env file")
        if any(c in value for c in "\n\r\x00"):
            raise ValueError(f"env {key}: a value with a line break or NUL cannot be passed")
        lines.append(f"{key}={value}\n")
    return "".join(lines)


def env_file_path(req: LaunchRequest) -> Path:
    """Where the container's env file is written: beside its logs, which only the node's own
    user reads."""
    return req.stdout.parent.absolute() / f"{container_name(req.app_id, req.index)}.env"


def cid_file_path(req: LaunchRequest) -> Path:
    """Where the engine writes the container's ID (``--cidfile``): beside its env file."""
    return req.stdout.parent.absolute() / f"{container_name(req.app_id, req.index)}.cid"


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    """Write ``env`` to ``path`` as a new file of mode 0600 (whatever was there, a link
    included, is replaced, never written through)."""
    text = env_file_text(env)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _bind(source: str | Path, target: str, read_only: bool = False) -> list[str]:
    spec = f"type=bind,source={source},target={target}"
    return ["--mount", spec + (",readonly" if read_only else "")]


def _cpus(cpus: float) -> str:
    return f"{cpus:g}"


def container_network(req: LaunchRequest, policy: ContainerPolicy) -> str:
    """The network the container joins: the spec's choice where the policy allows it."""
    c = req.container
    network = policy.network if c is None or c.network == "default" else c.network
    if network == "host" and not policy.allow_host_network:
        network = policy.network
    return network


def is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return addr == "localhost"


def needs_gateway(req: LaunchRequest, network: str) -> bool:
    """Whether a gang container on the bridge network has a loopback MASTER_ADDR (a cluster
    on one machine, Ray on 127.0.0.1), which inside a container is the container itself."""
    return (
        network == "bridge"
        and "MASTER_PORT" in req.env
        and is_loopback(req.env.get("MASTER_ADDR", ""))
    )


def rendezvous_addr(req: LaunchRequest, network: str, gateway: str | None) -> str | None:
    """The gang's MASTER_ADDR as containers on ``network`` reach it: the node's address, or,
    where that is loopback, the bridge's gateway (the host as its containers see it), where
    rank 0's port is published. None: not a gang, or nothing to change."""
    if not needs_gateway(req, network) or gateway is None:
        return None
    return gateway


def publish_arg(master_addr: str, port: str) -> str:
    """``--publish`` of a gang's rendezvous port: on the node's address when MASTER_ADDR is
    one (not on every interface of the node), else on all."""
    try:
        ipaddress.ip_address(master_addr)
    except ValueError:
        return f"{port}:{port}"
    host = f"[{master_addr}]" if ":" in master_addr else master_addr
    return f"{host}:{port}:{port}"


def docker_run_args(req: LaunchRequest, policy: ContainerPolicy, opts: RunOptions) -> list[str]:
    """The ``docker run`` (or ``podman run``: ``opts.engine``) argv for one container. Pure: no
    I/O, no clock.

    The policy was checked at submit (``check_container``); the flags here are the fence all
    the same: whatever the request says, no ``--privileged``, all capabilities dropped but the
    allowed ones, no new privileges, the given non-root user; an image that is no image
    reference (``--privileged``) or a user that is no ``UID[:GID]`` is a ValueError. The env
    goes to ``opts.env_file`` (written by the caller from ``run_env``), not to the argv.
    """
    if not req.image:
        raise ValueError("a container needs an image")
    problem = image_problem(req.image)
    if problem:
        raise ValueError(problem)
    user = canonical_user(opts.user)
    c = req.container
    podman = opts.engine == "podman"
    args = [policy.command(opts.engine), "run"]
    if opts.interactive:
        args += ["--rm", "--interactive", "--tty"]
    args += ["--name", container_name(req.app_id, req.index)]
    args += ["--label", f"{LABEL_APP}={req.app_id}", "--label", f"{LABEL_INDEX}={req.index}"]
    if policy.cluster_id:
        args += ["--label", f"{LABEL_CLUSTER}={policy.cluster_id}"]
    if req.node_id:
        args += ["--label", f"{LABEL_NODE}={req.node_id}"]
    args += ["--init", "--pull", policy.pull, "--user", user]
    if podman:
        args += ["--userns", policy.userns]
    if opts.oci_runtime:
        args += ["--runtime", opts.oci_runtime]
    for name, soft, hard in opts.ulimits:
        args += ["--ulimit", f"{name}={soft}:{hard}"]
    args += ["--cap-drop", "ALL"]
    for cap in c.cap_add if c else ():
        if cap in policy.allowed_caps:
            args += ["--cap-add", cap]
    args += ["--security-opt", "no-new-privileges"]
    network = container_network(req, policy)
    args += ["--network", network]
    args += ["--pids-limit", str(policy.pids_limit)]
    if req.memory_mb is not None:  # no swap beyond the limit: over it is out of memory
        args += ["--memory", f"{req.memory_mb}m", "--memory-swap", f"{req.memory_mb}m"]
    if req.cpus is not None:
        args += ["--cpus", _cpus(req.cpus)]
    gpus = gpu_devices(policy, opts.engine)
    if req.gpu_ids and gpus == "nvidia":
        # quoted: docker reads --gpus as CSV, so "device=0,1" must be one field
        args += ["--gpus", f'"device={",".join(req.gpu_ids)}"']
    elif req.gpu_ids and gpus == "cdi":
        for gpu in req.gpu_ids:
            args += ["--device", f"nvidia.com/gpu={gpu}"]
    port = req.env.get("MASTER_PORT")
    master = rendezvous_addr(req, network, opts.gateway) or req.env.get("MASTER_ADDR", "")
    if network == "bridge" and port and req.env.get("RANK") == "0" and opts.command is None:
        # the gang's rendezvous: container 0's port on its node's address (MASTER_ADDR)
        args += ["--publish", publish_arg(master, port)]
    args += _bind(req.workdir, policy.workspace_path)
    args += ["--workdir", policy.workspace_path]
    if "DLAPP_CHECKPOINT_DIR" in req.env:
        args += _bind(req.env["DLAPP_CHECKPOINT_DIR"], CHECKPOINT_PATH)
    if "DLAPP_NOTICE_FILE" in req.env:
        args += _bind(Path(req.env["DLAPP_NOTICE_FILE"]).parent, RUN_PATH, read_only=True)
    for m in c.mounts if c else ():
        args += _bind(m.host, m.path, m.read_only)
    if opts.cid_file is not None:
        args += ["--cidfile", str(opts.cid_file)]
    if opts.env_file is not None:
        args += ["--env-file", str(opts.env_file)]
    else:
        for key, value in sorted(run_env(req, policy, opts).items()):
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


def engine_problem(engine: Engine, command: str) -> str | None:
    """Why ``engine`` cannot run containers here, or None; cached 30 s. Docker: no CLI, or its
    daemon does not answer (the API's ``/_ping`` where the API is at hand, else ``docker
    version``); podman: no CLI, or ``podman info`` fails (no storage, no cgroups)."""
    now = time.monotonic()
    cached = _availability.get(command)
    if cached is not None and now - cached[0] < _AVAILABILITY_TTL_S:
        return cached[1]
    problem: str | None = None
    if engine == "podman":
        probe, failing = [command, "info", "--format", "{{.Host.Arch}}"], "podman does not work"
    else:
        probe = [command, "version", "--format", "{{.Server.Version}}"]
        failing = "the docker daemon does not answer"
    if shutil.which(command) is None:
        problem = f"no {command!r} command on this machine"
    elif engine == "docker" and _pings(engine_api(command)):
        problem = None
    else:
        try:
            done = _run(probe, timeout=15)
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines() or ["no answer"]
                problem = f"{failing}: {lines[-1]}"
        except (OSError, subprocess.SubprocessError) as exc:
            problem = f"{failing}: {exc}"
    _availability[command] = (now, problem)
    return problem


def _pings(api: EngineAPI | None) -> bool:
    try:
        return api is not None and api.ping()
    except OSError:
        return False


def docker_problem(docker: str = "docker") -> str | None:
    """Why docker cannot run containers here (no CLI, no daemon), or None; cached 30 s."""
    return engine_problem("docker", docker)


def resolve_user(req: LaunchRequest, policy: ContainerPolicy) -> str:
    """UID:GID the app runs as: the spec's, else the policy's; ``auto`` is the workspace's
    owner, or DEFAULT_USER when that is root. A spec's user the policy refuses (root by any
    spelling, a name: a spec stored before the submit checks read it as numbers) is
    ``Forbidden`` here too."""
    if req.container is not None and req.container.user:
        problem = user_problem(req.container.user, policy)
        if problem:
            raise Forbidden(f"container policy: {problem}")
        return canonical_user(req.container.user)
    if policy.user != "auto":
        return policy.user
    st = req.workdir.stat()
    return DEFAULT_USER if st.st_uid == 0 else f"{st.st_uid}:{st.st_gid}"


def give_to(paths: Iterable[Path], user: str) -> None:
    """As root: chown each tree to ``user`` so that the container can write it."""
    uid, _, gid = user.partition(":")
    for root in paths:
        chown_tree(root, int(uid), int(gid or uid))


class DockerRunning(Running):
    """The guard that holds ``docker run``; the container is found by its name. ``api``: the
    engine's API where it is at hand (``engine_api``), for the calls around the run."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        name: str,
        docker: str,
        req: LaunchRequest,
        env_file: Path | None = None,
        cid_file: Path | None = None,
        api: EngineAPI | None = None,
    ) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.name = name
        self._docker = docker
        self._req = req
        self._env_file = env_file
        self._cid_file = cid_file
        self._api = api
        self._note: str | None = None
        self._finished = False
        self._lock = threading.Lock()
        if env_file is not None:
            threading.Thread(
                target=self._remove_env_file_once_created, name=f"env-file {name}", daemon=True
            ).start()

    def _remove_env_file_once_created(self) -> None:
        """The engine reads the env file before it creates the container: remove it as soon as
        the container exists (the engine wrote its ID to the cid file), or the ``run`` client
        has exited (started or failed). A stat a few milliseconds, no engine call."""
        pause = CID_POLL_S
        while self._popen.poll() is None and not self._created():
            time.sleep(pause)
            pause = min(pause * 1.5, CID_POLL_MAX_S)
        self._remove_env_file()

    def _created(self) -> bool:
        """Whether the cid file holds the container's ID (docker makes it empty, before the
        container; podman and docker write the ID once it exists)."""
        if self._cid_file is None:
            return self._exists()
        try:
            return self._cid_file.stat().st_size > 0
        except OSError:
            return False

    def _exists(self) -> bool:
        """Whether the container exists, asked of the engine (no cid file to read)."""
        try:
            if self._api is not None:
                return self._api.inspect(self.name) is not None
            argv = [self._docker, "container", "inspect", "--format", "{{.Id}}", self.name]
            return _run(argv).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False

    def _remove_env_file(self) -> None:
        if self._env_file is not None:
            self._env_file.unlink(missing_ok=True)

    def signal(self, sig: int) -> None:
        _kill(self._api, self._docker, self.name, sig)
        if sig == signal.SIGKILL:  # and the client, in case the container was not made yet
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            returncode = self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        code = exit_code_from_returncode(returncode)
        self._remove_env_file()
        with self._lock:
            if not self._finished:
                self._finished = True
                self._note = self._inspect_and_remove(code)
                if self._cid_file is not None:
                    self._cid_file.unlink(missing_ok=True)
        return code

    def exit_note(self) -> str | None:
        return self._note

    def _oom_killed(self) -> bool:
        if self._api is not None:
            with contextlib.suppress(OSError, ValueError):
                found = self._api.inspect(self.name)
                return found is not None and found.get("State", {}).get("OOMKilled") is True
        done = _run([self._docker, "inspect", "--format", "{{.State.OOMKilled}}", self.name])
        return done.returncode == 0 and done.stdout.strip() == "true"

    def _inspect_and_remove(self, code: int) -> str | None:
        note = None
        try:
            if self._oom_killed():
                limit = self._req.memory_mb
                note = "out of memory (OOM): killed at its memory limit" + (
                    f" of {limit}M" if limit else ""
                )
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("cannot inspect container %s: %s", self.name, exc)
        _remove(self._api, self._docker, self.name)
        if note is None and code == EXIT_DOCKER_FAILED:
            note = f"docker could not run the container: {_last_docker_line(self._req.stderr)}"
        return note


def _remove(api: EngineAPI | None, docker: str, name: str) -> None:
    """``docker rm --force NAME``, through the API where it is at hand; quiet."""
    if api is not None:
        try:
            api.remove(name)
            return
        except OSError as exc:
            logger.debug("docker API: cannot remove %s (%s); trying the CLI", name, exc)
    _quiet([docker, "rm", "--force", name])


def _kill(api: EngineAPI | None, docker: str, name: str, sig: int) -> None:
    """``docker kill --signal SIG NAME``, through the API where it is at hand; quiet."""
    if api is not None:
        try:
            api.kill(name, int(sig))
            return
        except OSError as exc:
            logger.debug("docker API: cannot signal %s (%s); trying the CLI", name, exc)
    _quiet([docker, "kill", "--signal", str(int(sig)), name])


def _last_docker_line(stderr: Path) -> str:
    try:
        with stderr.open("rb") as f:
            f.seek(max(0, stderr.stat().st_size - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return "see its stderr"
    found = [line for line in lines if line.startswith(("docker:", "Error"))]
    return found[-1] if found else "see its stderr"


def gateway_of(configs: str) -> str | None:
    """The first IPv4 gateway in ``network inspect``'s ``Gateway|Subnet`` words. A network
    whose config names no gateway (docker 20.10's default bridge) has its subnet's first
    address, which the engine gives the bridge."""
    for word in configs.split():
        gateway, _, subnet = word.partition("|")
        with contextlib.suppress(ValueError):
            if gateway and ipaddress.ip_address(gateway).version == 4:
                return gateway
            if not gateway and subnet:
                net = ipaddress.ip_network(subnet, strict=False)
                if net.version == 4 and net.num_addresses > 2:
                    return str(net.network_address + 1)
    return None


class DockerRuntime(Runtime):
    name = "docker"
    engine: Engine = "docker"

    def __init__(self, policy: ContainerPolicy | None = None) -> None:
        self.policy = policy or ContainerPolicy()

    def run_options(self, user: str) -> RunOptions:
        """What this engine's runner decides for a container run as ``user``."""
        return RunOptions(user=user, engine=self.engine)

    def bridge_gateway(self) -> str | None:
        """The default bridge network's gateway address on this node, or None."""
        command = self.policy.command(self.engine)
        network = "podman" if self.engine == "podman" else "bridge"
        fmt = (
            "{{range .Subnets}}{{.Gateway}}|{{.Subnet}} {{end}}"
            if self.engine == "podman"
            else "{{range .IPAM.Config}}{{.Gateway}}|{{.Subnet}} {{end}}"
        )
        try:
            found = _run([command, "network", "inspect", network, "--format", fmt])
        except (OSError, subprocess.SubprocessError):
            return None
        return gateway_of(found.stdout)

    def _launch(self, req: LaunchRequest) -> Running:
        policy = node_gpu_policy(self.policy) if req.gpu_ids else self.policy
        command = policy.command(self.engine)
        name = container_name(req.app_id, req.index)
        api = engine_api(command) if self.engine == "docker" else None
        _remove(api, command, name)  # one left by an earlier attempt
        user = resolve_user(req, policy)
        if os.geteuid() == 0:
            writable = [req.workdir]
            if "DLAPP_CHECKPOINT_DIR" in req.env:
                writable.append(Path(req.env["DLAPP_CHECKPOINT_DIR"]))
            give_to(writable, user)
        opts = self.run_options(user)
        if needs_gateway(req, container_network(req, policy)):
            opts = replace(opts, gateway=self.bridge_gateway())
        env_file, cid_file = env_file_path(req), cid_file_path(req)
        opts = replace(opts, env_file=env_file, cid_file=cid_file)
        argv = docker_run_args(req, policy, opts)
        make_log_dirs(req)
        cid_file.unlink(missing_ok=True)  # the engine refuses to write over one
        write_env_file(env_file, run_env(req, policy, opts))
        cleanup = json.dumps([command, "rm", "--force", name])
        cmd = guard_command(argv, os.getpid(), cleanup=cleanup)
        try:
            popen = spawn_guarded(cmd, req, without_secrets(os.environ))
        except BaseException:
            env_file.unlink(missing_ok=True)
            raise
        return DockerRunning(popen, name, command, req, env_file, cid_file, api)


# -- orphans ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Labelled:
    """One of this cluster's containers, by its labels."""

    name: str
    app_id: str
    index: int


def orphans(listing: Iterable[Labelled], running: set[str]) -> list[Labelled]:
    """The containers whose app is not running. Pure."""
    return [c for c in listing if c.app_id not in running]


def _label_format(engine: Engine, key: str) -> str:
    # docker's ps renders labels through .Label; podman's through its map .Labels
    return f'{{{{index .Labels "{key}"}}}}' if engine == "podman" else f'{{{{.Label "{key}"}}}}'


def list_containers(
    policy: ContainerPolicy, engine: Engine = "docker", node_id: str | None = None
) -> list[Labelled]:
    """This cluster's containers on this machine, running or not; only those labelled with
    ``node_id`` when given (several Ray nodes may share one engine)."""
    argv = [policy.command(engine), "ps", "--all", "--filter", f"label={LABEL_APP}"]
    if policy.cluster_id:
        argv += ["--filter", f"label={LABEL_CLUSTER}={policy.cluster_id}"]
    if node_id:
        argv += ["--filter", f"label={LABEL_NODE}={node_id}"]
    fields = ["{{.Names}}", _label_format(engine, LABEL_APP), _label_format(engine, LABEL_INDEX)]
    argv += ["--format", "\t".join(fields)]
    done = _run(argv)
    if done.returncode != 0:
        raise OSError(done.stderr.strip() or f"{engine} ps exited {done.returncode}")
    found = []
    for line in done.stdout.splitlines():
        name, app_id, index = ([*line.split("\t"), "", ""])[:3]
        if name and app_id:
            found.append(Labelled(name, app_id, int(index) if index.isdigit() else -1))
    return found


def remove_orphans(
    policy: ContainerPolicy,
    running: set[str],
    engine: Engine = "docker",
    node_id: str | None = None,
    supervised: Callable[[Labelled], bool] | None = None,
) -> list[str]:
    """Remove this cluster's containers (of ``node_id`` only, when given) whose app is not
    RUNNING, unless ``supervised`` says a live supervisor holds it (an app admitted after
    ``running`` was read); their names. Quiet (an empty list) where the engine is missing or
    does not answer."""
    command = policy.command(engine)
    if shutil.which(command) is None:
        return []
    try:
        found = orphans(list_containers(policy, engine, node_id), running)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("cannot list %s containers: %s", engine, exc)
        return []
    names = []
    for c in found:
        if supervised is not None and supervised(c):
            continue
        logger.warning("removing orphan container %s", c.name)
        _quiet([command, "rm", "--force", c.name])
        names.append(c.name)
    return names
