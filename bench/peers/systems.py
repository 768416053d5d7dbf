"""The systems bench/launch.py starts the empty app with: dlapp and its peers.

Every system runs the same user program, ``run.sh`` in a one-file workspace, whose first
instruction prints the wall clock (``busybox adjtimex``: seconds and microseconds; the same
busybox applet on the host and in the ``dlapp/minimal`` image). ``Peer.run_once`` takes the
time just before the submit call, calls the system's hook ``_run`` (submit, wait until the
system says the app finished, return the app's stdout and when it was seen finished) and reads
the app's own start stamp back from that stdout. Systems that report completion only when
asked are polled every ``POLL_S`` seconds, the same for all of them.

A system that cannot be set up raises ``Unavailable`` with the reason from ``setup``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POLL_S = 0.05
RUN_TIMEOUT_S = 120.0
SCRIPT = "run.sh"
STAMP_SCRIPT = """#!/bin/sh
# the empty app: its first instruction prints the wall clock (busybox: microseconds)
busybox adjtimex
"""
_STAMP = re.compile(r"time\.tv_sec:\s*(\d+)\s+time\.tv_usec:\s*(\d+)")
_STATUS = re.compile(r"status:\s*(\d+)")
_STA_NANO = 0x2000


class Unavailable(Exception):
    """A system that cannot be measured here; the message says why."""


class BenchError(Exception):
    """A run that went wrong (the app failed, no stamp, a timeout)."""


@dataclass(frozen=True)
class Sample:
    """One run, in seconds after the submit call began."""

    started_s: float  # the user's process ran its first instruction
    finished_s: float  # the submitter saw the app finished


def parse_stamp(text: str) -> float:
    """The wall-clock time (epoch seconds) that ``busybox adjtimex`` printed in ``text``."""
    match = _STAMP.search(text)
    if match is None:
        raise BenchError(f"no 'busybox adjtimex' time stamp in the app's output: {text[:300]!r}")
    # the kernel's clock may be in nanosecond mode (status bit STA_NANO, 0x2000): the field
    # busybox calls tv_usec then holds nanoseconds
    status = _STATUS.search(text)
    nano = status is not None and int(status.group(1)) & _STA_NANO
    return int(match.group(1)) + int(match.group(2)) / (1e9 if nano else 1e6)


def make_workspace(root: Path) -> Path:
    """A workspace holding only the empty app, readable by any user (containers run non-root)."""
    ws = root / "workspace"
    ws.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    os.chmod(ws, 0o755)
    script = ws / SCRIPT
    script.write_text(STAMP_SCRIPT)
    script.chmod(0o755)
    return ws


def poll_until(done: Any, what: str, timeout_s: float = RUN_TIMEOUT_S) -> Any:
    """Call ``done()`` every POLL_S until it returns something true; returns that."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = done()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not finish within {timeout_s:g}s")
        time.sleep(POLL_S)


def _run(cmd: list[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, **kwargs)
    if proc.returncode != 0:
        raise BenchError(f"{what} exited with {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return proc


class Peer(ABC):
    """One way to start the empty app. ``run_once`` times it; ``_run`` is the system's part."""

    name: str = ""
    describe: str = ""

    def setup(self) -> None:
        """Check the system is there (raise Unavailable with the reason) and get ready."""
        return None

    def close(self) -> None:
        """Release what setup took."""
        return None

    def run_once(self) -> Sample:
        t0 = time.time()
        stdout, finished = self._run()
        started = parse_stamp(stdout)
        if not t0 <= started <= finished:
            raise BenchError(
                f"{self.name}: the app's stamp {started:.6f} is not between the submit "
                f"({t0:.6f}) and the finish ({finished:.6f}); is the clock shared?"
            )
        return Sample(started - t0, finished - t0)

    @abstractmethod
    def _run(self) -> tuple[str, float]:
        """Submit the empty app, wait until it finished; its stdout and the time seen finished."""


# -- baselines ------------------------------------------------------------------------------------


class BareSpawn(Peer):
    name = "spawn"
    describe = "bare process spawn: subprocess.run(['bash', 'run.sh'])"

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace

    def setup(self) -> None:
        if shutil.which("busybox") is None:
            raise Unavailable("busybox is not installed (apt-get install busybox-static)")

    def _run(self) -> tuple[str, float]:
        proc = _run(["bash", SCRIPT], "bash run.sh", cwd=self.workspace)
        return proc.stdout, time.time()


class DockerRun(Peer):
    name = "docker-run"

    def __init__(self, workspace: Path, image: str) -> None:
        self.workspace = workspace
        self.image = image
        self.describe = f"bare `docker run --rm` of {image}"

    def setup(self) -> None:
        if shutil.which("docker") is None:
            raise Unavailable("the docker CLI is not installed")
        if subprocess.run(["docker", "version"], capture_output=True).returncode != 0:
            raise Unavailable("dockerd does not answer (`docker version` failed)")
        if subprocess.run(
            ["docker", "image", "inspect", self.image], capture_output=True
        ).returncode:
            raise Unavailable(f"image {self.image} is missing (dlapp images build ...)")

    def _run(self) -> tuple[str, float]:
        cmd = ["docker", "run", "--rm", "-v", f"{self.workspace}:/workspace:ro"]
        cmd += ["-w", "/workspace", self.image, "bash", SCRIPT]
        proc = _run(cmd, "docker run")
        return proc.stdout, time.time()


# -- Ray Jobs -------------------------------------------------------------------------------------


class RayJobs(Peer):
    """Ray's Jobs API on the Ray cluster dlapp runs on; the token comes from Ray's own loader
    (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``, as Ray documents)."""

    name = "ray-jobs"
    describe = "Ray Jobs API: JobSubmissionClient.submit_job(entrypoint_num_gpus=1)"

    def __init__(self, workspace: Path, dashboard_url: str) -> None:
        self.workspace = workspace
        self.url = dashboard_url
        self.client: Any = None

    def setup(self) -> None:
        import httpx
        from ray.job_submission import JobSubmissionClient

        try:
            anonymous = httpx.get(f"{self.url}/api/jobs/", timeout=10).status_code
        except httpx.HTTPError as exc:
            raise Unavailable(f"the Ray dashboard at {self.url} does not answer: {exc}") from None
        if anonymous not in (401, 403):
            raise Unavailable(
                f"the Ray job server answers without a token ({anonymous}): token "
                "authentication is off, and this benchmark does not run on such a cluster"
            )
        self.client = JobSubmissionClient(self.url)
        self._wait_for_agent()

    def _wait_for_agent(self, timeout_s: float = 120.0) -> None:
        """The job server refuses jobs ("No available agent") until the head's dashboard
        agent is up, some seconds after the cluster; a first job tells when it is."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                job_id = self.client.submit_job(entrypoint="true")
                break
            except RuntimeError as exc:
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise Unavailable(f"the Ray job server refuses jobs: {exc}") from None
                time.sleep(0.5)
        poll_until(lambda: self.client.get_job_status(job_id).is_terminal(), job_id)

    def _run(self) -> tuple[str, float]:
        from ray.job_submission import JobStatus

        job_id = self.client.submit_job(
            entrypoint=f"bash {SCRIPT}",
            runtime_env={"working_dir": str(self.workspace)},
            entrypoint_num_gpus=1,
        )
        status = poll_until(
            lambda: (s := self.client.get_job_status(job_id)).is_terminal() and s, job_id
        )
        finished = time.time()
        if status != JobStatus.SUCCEEDED:
            raise BenchError(f"Ray job {job_id} ended {status}: {self.client.get_job_info(job_id)}")
        return str(self.client.get_job_logs(job_id)), finished


# -- Slurm ----------------------------------------------------------------------------------------

SLURM_TERMINAL = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
    "DEADLINE", "PREEMPTED",
}  # fmt: skip


def slurm_state(scontrol_line: str) -> str:
    """The JobState of one ``scontrol show job -o`` line."""
    match = re.search(r"\bJobState=(\S+)", scontrol_line)
    if match is None:
        raise BenchError(f"no JobState in scontrol's answer: {scontrol_line[:200]!r}")
    return match.group(1)


class Slurm(Peer):
    name = "slurm"
    describe = "Slurm: sbatch --gres=gpu:1 on a local slurmctld + slurmd"

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.out = Path(tempfile.mkdtemp(prefix="dlapp-bench-slurm-"))

    def setup(self) -> None:
        hint = "set it up with `sudo bench/peers/slurm.sh`"
        if shutil.which("sbatch") is None:
            raise Unavailable(f"Slurm is not installed; {hint}")
        info = subprocess.run(["sinfo", "-h", "-o", "%t %G"], capture_output=True, text=True)
        states = info.stdout.split()
        if info.returncode != 0:
            raise Unavailable(f"slurmctld does not answer ({info.stderr.strip()}); {hint}")
        if not any(s in ("idle", "mix") for s in states[::2]) or "gpu" not in info.stdout:
            raise Unavailable(
                f"no idle Slurm node with GPUs (sinfo: {info.stdout.strip()}); {hint}"
            )

    def close(self) -> None:
        shutil.rmtree(self.out, ignore_errors=True)

    def _run(self) -> tuple[str, float]:
        cmd = ["sbatch", "--parsable", "--gres=gpu:1", "--job-name=dlapp-bench"]
        cmd += [f"--chdir={self.workspace}", f"--output={self.out}/%j.out", SCRIPT]
        job_id = _run(cmd, "sbatch", cwd=self.workspace).stdout.strip().split(";")[0]

        def done() -> str | None:
            line = _run(["scontrol", "show", "job", "-o", job_id], "scontrol").stdout
            state = slurm_state(line)
            return state if state in SLURM_TERMINAL else None

        state = poll_until(done, f"Slurm job {job_id}")
        finished = time.time()
        if state != "COMPLETED":
            raise BenchError(f"Slurm job {job_id} ended {state}")
        return (self.out / f"{job_id}.out").read_text(), finished


# -- dlapp ----------------------------------------------------------------------------------------


class Dlapp(Peer):
    """dlapp through its HTTP SDK, as ``dlapp launch`` does it: pack the workspace, submit,
    then poll the app until FINISHED and read container 0's stdout."""

    def __init__(
        self, url: str, token: str, workspace: Path, runtime: str, image: str, name: str = ""
    ) -> None:
        from dlapp.spec import AppSpec

        self.url, self.token, self.workspace = url, token, workspace
        self.name = name or f"dlapp-{runtime}"
        self.describe = f"dlapp, {runtime} runtime" + (f" ({image})" if runtime == "docker" else "")
        data: dict[str, Any] = {
            "name": f"bench-{runtime}",
            "runtime": runtime,
            "entry": {"script": SCRIPT},
            "workspace": {"path": str(workspace)},
            "resources": {"cpus": 1, "memory": "256M", "gpus": 1},
        }
        if runtime == "docker":
            data["image"] = image
        self.spec = AppSpec.from_dict(data)
        self.tmp = Path(tempfile.mkdtemp(prefix="dlapp-bench-pack-"))
        self.client: Any = None

    def setup(self) -> None:
        from dlapp.client import DlappClient

        self.client = DlappClient(self.url, self.token)
        self.client.health()

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _run(self) -> tuple[str, float]:
        from dlapp.data.workspace import pack_workspace

        tarball = pack_workspace(self.workspace, self.tmp / "ws.tar.gz").path
        app_id = self.client.submit(self.spec, tarball)["id"]
        app = poll_until(
            lambda: (a := self.client.get(app_id))["state"] == "FINISHED" and a, app_id
        )
        finished = time.time()
        if app["final_status"] != "SUCCEEDED":
            raise BenchError(f"{app_id} ended {app['final_status']}: {app['diagnostics']}")
        return str(self.client.logs(app_id)), finished


# -- the cluster dlapp and Ray Jobs share ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_token_auth() -> None:
    """Turn Ray's token authentication on for the cluster this process starts, its children
    (the dlapp server) and its clients (JobSubmissionClient), the way Ray documents it:
    ``RAY_AUTH_MODE=token`` in the environment of every process and a token in
    ``~/.ray/auth_token`` (made by ``ray get-auth-token --generate`` when there is none) or
    ``RAY_AUTH_TOKEN``. A cluster started by ``ray.cluster_utils`` has it off otherwise. Call
    it before the first ``import ray``: Ray reads the mode when it loads its configuration."""
    mode = os.environ.get("RAY_AUTH_MODE", "").lower()
    if mode not in ("", "token"):
        raise Unavailable(f"RAY_AUTH_MODE={mode}: dlapp refuses to run on an unauthenticated Ray")
    os.environ["RAY_AUTH_MODE"] = "token"
    if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
        ray_cli = Path(sys.executable).with_name("ray")
        gen = subprocess.run(
            [str(ray_cli), "get-auth-token", "--generate"], capture_output=True, text=True
        )  # prints the token: kept out of our output
        if gen.returncode != 0:
            raise Unavailable(
                f"no Ray auth token: `ray get-auth-token --generate` failed: {gen.stderr[-300:]}"
            )


@dataclass
class SharedCluster:
    """A single-node Ray cluster with its dashboard (the Jobs API lives there) and a dlapp
    server on it (``dlapp server --ray-address``, as on a real cluster). The embedded cluster
    of ``dlapp up`` starts Ray without the dashboard, so it cannot serve the Jobs API."""

    home: Path
    cpus: int = 4
    gpus: int = 2
    start_path: str = "agent"  # the server's start_path: "actor" for the path before agents
    dashboard: bool = True  # the Jobs API's home; a cluster for dlapp alone goes without
    settings: dict[str, Any] = field(default_factory=dict)  # more server settings (server.yaml)
    ray: Any = None
    server: subprocess.Popen[bytes] | None = None
    url: str = ""
    token: str = ""
    dashboard_url: str = ""

    def start(self, timeout_s: float = 180.0) -> None:
        from ray.cluster_utils import Cluster

        from dlapp import embedded
        from dlapp.credentials import ADMIN_TOKEN_FILE, without_secrets

        require_token_auth()
        self.ray = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": self.cpus,
                "num_gpus": self.gpus,
                "include_dashboard": self.dashboard,
                "object_store_memory": 256 * 1024 * 1024,
                **(
                    {
                        "dashboard_port": free_port(),
                        # not Ray's fixed default (52365): any other Ray on the machine holds
                        # it, and the job server then waits forever ("No available agent")
                        "dashboard_agent_listen_port": free_port(),
                    }
                    if self.dashboard
                    else {}
                ),
            },
        )
        if self.dashboard:
            self.dashboard_url = "http://" + self.ray.head_node.address_info["webui_url"]
        self.home.mkdir(parents=True, exist_ok=True)
        settings = {
            "container": {"gpus": "none"},
            "submit_rate_per_min": 0,
            "start_path": self.start_path,
            **self.settings,
        }
        (self.home / "server.yaml").write_text(json.dumps(settings))  # JSON is YAML
        cmd = [sys.executable, "-m", "dlapp.cli.main", "server", "--home", str(self.home)]
        cmd += ["--port", "0", "--ray-address", self.ray.address]
        with (self.home / "server.log").open("ab") as log:
            self.server = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=without_secrets(os.environ),
            )
        deadline = time.monotonic() + timeout_s
        while (info := embedded.running(self.home)) is None:
            if self.server.poll() is not None or time.monotonic() > deadline:
                tail = (self.home / "server.log").read_text()[-1500:]
                raise Unavailable(f"the dlapp server did not start: {tail}")
            time.sleep(0.3)
        self.url = info.url
        self.token = (self.home / ADMIN_TOKEN_FILE).read_text().strip()

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        if self.ray is not None:
            self.ray.shutdown()
