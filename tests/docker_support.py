"""Helpers for the tests that drive a real dockerd (or podman): the minimal image, and label
queries.

Without a docker CLI and a daemon that answers, those tests are skipped, unless
``DLAPP_REQUIRE_DOCKER=1`` (CI sets it: there they must run), which makes that a failure.
The podman tests are skipped only where there is no ``podman`` command (unless
``DLAPP_REQUIRE_PODMAN=1``); a podman that is there but cannot run a container fails them.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dlapp.cli import images
from dlapp.config import ContainerPolicy
from dlapp.runtime.base import LaunchRequest
from dlapp.runtime.docker import docker_problem

MINIMAL = "dlapp/minimal:latest"


def require_docker() -> None:
    """Skip (or fail, under DLAPP_REQUIRE_DOCKER=1) without docker; build the minimal image."""
    problem = docker_problem()
    if problem is not None:
        if os.environ.get("DLAPP_REQUIRE_DOCKER") == "1":
            pytest.fail(f"DLAPP_REQUIRE_DOCKER=1 but docker is not usable: {problem}")
        pytest.skip(f"docker is not usable here: {problem}")
    images.build("minimal")


def require_podman() -> None:
    """Skip without a podman command (fail under DLAPP_REQUIRE_PODMAN=1); else docker's minimal
    image is built and copied into podman's store."""
    if shutil.which("podman") is None:
        if os.environ.get("DLAPP_REQUIRE_PODMAN") == "1":
            pytest.fail("DLAPP_REQUIRE_PODMAN=1 but there is no podman command")
        pytest.skip("no podman command here (Debian: apt-get install podman catatonit)")
    require_docker()  # the image is built by docker, then copied
    images.to_podman(MINIMAL)


def containers(label: str, engine: str = "docker") -> list[str]:
    """Names of all containers, running or not, with ``label`` (``key`` or ``key=value``)."""
    done = subprocess.run(
        [engine, "ps", "--all", "--filter", f"label={label}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


def inspect(name: str, engine: str = "docker") -> dict[str, Any]:
    done = subprocess.run([engine, "inspect", name], capture_output=True, text=True, check=True)
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found[0]


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.1)
    return check()


def launch_request(
    tmp_path: Path, script: str, memory_mb: int = 256, node_id: str | None = None, **env: str
) -> LaunchRequest:
    """A request as the supervisor makes it: ``script`` as ``run.sh`` in a new workspace."""
    app_id = f"application_test_{uuid.uuid4().hex[:12]}"
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "run.sh").write_text(textwrap.dedent(script))
    (tmp_path / "checkpoint").mkdir()
    return LaunchRequest(
        app_id=app_id,
        index=0,
        workdir=ws,
        script="run.sh",
        args=("one", "two words"),
        env={
            "DLAPP_APP_ID": app_id,
            "CONTAINER_INDEX": "0",
            "CUDA_VISIBLE_DEVICES": "1",
            "DLAPP_WORKSPACE": str(ws),
            "DLAPP_CHECKPOINT_DIR": str(tmp_path / "checkpoint"),
            "DLAPP_NOTICE_FILE": str(tmp_path / "notice.json"),
            **env,
        },
        stdout=tmp_path / "logs" / "stdout",
        stderr=tmp_path / "logs" / "stderr",
        image=MINIMAL,
        cpus=0.5,
        memory_mb=memory_mb,
        gpu_ids=("1",),
        node_id=node_id,
    )


PYTHON = "dlapp/python:latest"

# a gang of two: rank 1 connects to MASTER_ADDR:MASTER_PORT, where rank 0 listens
HANDSHAKE = textwrap.dedent(
    """
    import os, socket, time
    addr, port, rank = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), os.environ["RANK"]
    print(f"rank {rank} of {os.environ['WORLD_SIZE']}: master {addr}:{port}", flush=True)
    if rank == "0":
        server = socket.create_server(("0.0.0.0", port))
        server.settimeout(120)
        conn, _ = server.accept()
        conn.sendall(b"hello from rank 0")
        print("rank 0 got:", conn.recv(64).decode(), flush=True)
    else:
        # as torch's TCPStore client does, retry until rank 0 answers: where docker publishes
        # through its userland proxy, a connection is taken (then closed) before rank 0 listens
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = socket.create_connection((addr, port), timeout=5)
                conn.sendall(b"hello from rank 1")
                got = conn.recv(64)
                if got:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("rank 0 never answered")
            time.sleep(0.5)
        print("rank 1 got:", got.decode(), flush=True)
    """
)


# a supervisor of its own: launches the request with the named runtime, then only sleeps
SUPERVISOR = """
import importlib, pickle, sys, time
module, name = sys.argv[2].rsplit(".", 1)
req, policy = pickle.load(open(sys.argv[1], "rb"))
getattr(importlib.import_module(module), name)(policy).launch(req)
print("launched", flush=True)
time.sleep(600)
"""


def check_a_killed_supervisor_leaves_no_container(
    tmp_path: Path, policy: ContainerPolicy, runtime: str, engine: str, up_timeout: float
) -> None:
    """SIGKILL a supervisor (``runtime``: the runtime class, by dotted name) while its
    container runs: no cleanup code of its own runs, yet the container goes."""
    req = launch_request(tmp_path, "echo up; sleep 300\n")
    (tmp_path / "req.pickle").write_bytes(pickle.dumps((req, policy)))
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(tmp_path / "req.pickle"), runtime],
        stdout=subprocess.PIPE,
    )
    try:
        assert supervisor.stdout is not None and supervisor.stdout.readline() == b"launched\n"
        label = f"dlapp.app={req.app_id}"
        assert eventually(lambda: "up" in req.stdout.read_text(), up_timeout)
        assert containers(label, engine) != []
        os.kill(supervisor.pid, signal.SIGKILL)
        assert eventually(lambda: containers(label, engine) == [], timeout=30)
    finally:
        supervisor.kill()
        supervisor.wait()
        if supervisor.stdout is not None:
            supervisor.stdout.close()
