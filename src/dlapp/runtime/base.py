"""The container runtime layer: start one container of an app, signal it, wait for it.

``Runtime.launch`` is the public method: it checks the request (the entry script must be a file
inside the workspace), logs, times, and calls the one abstract hook ``_launch``. A runtime hands
back a ``Running`` handle; ``Running.stop`` holds the shared SIGTERM -> grace -> SIGKILL logic.

Exit codes follow the shell's convention: a container killed by signal N exits ``128 + N``.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dlapp.errors import WorkspaceError

if TYPE_CHECKING:
    from dlapp.spec import ContainerOptions
    from dlapp.unix_accounts import Account

logger = logging.getLogger(__name__)

GUARD_PATH = Path(__file__).resolve().with_name("guard.py")


@dataclass(frozen=True)
class LaunchRequest:
    """Everything a runtime needs to start one container of an app."""

    app_id: str
    index: int  # container index within the app
    workdir: Path  # the extracted workspace; the process's cwd
    script: str  # entry script, relative to workdir
    args: tuple[str, ...]  # argv after the script, never passed through a shell
    env: Mapping[str, str]  # extra env: DLAPP_APP_ID, CONTAINER_INDEX, CUDA_VISIBLE_DEVICES, ...
    stdout: Path  # log files, opened for append by the runtime
    stderr: Path
    image: str | None = None
    # what a container runtime also needs (the process runtime ignores them)
    cpus: float | None = None
    memory_mb: int | None = None
    gpu_ids: tuple[str, ...] = ()  # the node's device IDs assigned to this container
    container: ContainerOptions | None = None  # the spec's ``container`` section
    node_id: str | None = None  # the Ray node it runs on: label dlapp.node, for its node's sweep
    # the Unix account the app runs as (a multi-user server); None: the node's own. ``home`` is
    # its fresh HOME (the process runtime; a container has its image's)
    account: Account | None = None
    home: Path | None = None

    @property
    def name(self) -> str:
        """``<app_id>:<index>``, as the supervisor actor is named."""
        return f"{self.app_id}:{self.index}"


def exit_code_from_returncode(returncode: int) -> int:
    """A Popen-style return code (``-N`` when killed by signal N) as a shell prints it."""
    return 128 - returncode if returncode < 0 else returncode


class Running(ABC):
    """A handle on one started container."""

    pid: int

    @abstractmethod
    def signal(self, sig: int) -> None:
        """Send ``sig`` to the container's whole process tree; no error if it is already gone."""

    @abstractmethod
    def wait(self, timeout: float | None = None) -> int | None:
        """The container's exit code (``128 + N`` if killed by signal N); None on timeout."""

    def exit_note(self) -> str | None:
        """After the exit: what the runtime knows of its cause (e.g. "out of memory"), if any."""
        return None

    def stop(self, grace: float, on_term: Callable[[], None] | None = None) -> int:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL; return the exit code.

        ``grace <= 0`` sends SIGKILL at once. ``on_term`` is called right after SIGTERM was sent
        (e.g. to record that the app was asked to checkpoint).
        """
        if grace > 0:
            self.signal(signal.SIGTERM)
            if on_term is not None:
                on_term()
            code = self.wait(grace)
            if code is not None:
                return code
            logger.info(
                "pid %d still running %.1fs after SIGTERM; sending SIGKILL", self.pid, grace
            )
        self.signal(signal.SIGKILL)
        code = self.wait(None)
        if code is None:  # wait(None) blocks until the exit; a None here is a broken runtime
            raise RuntimeError(f"runtime returned no exit code for pid {self.pid}")
        return code


class Runtime(ABC):
    """Starts containers. Subclasses implement ``_launch``; callers use ``launch``."""

    name: str

    def launch(self, req: LaunchRequest) -> Running:
        check_entry_script(req.workdir, req.script)
        started = time.monotonic()
        running = self._launch(req)
        logger.info(
            "launched %s with runtime %s: pid %d, script %s, %d args (%.3fs)",
            req.name,
            self.name,
            running.pid,
            req.script,
            len(req.args),
            time.monotonic() - started,
        )
        return running

    @abstractmethod
    def _launch(self, req: LaunchRequest) -> Running:
        """Start the container described by an already checked request."""


def check_entry_script(workdir: Path, script: str) -> Path:
    """The resolved entry script; WorkspaceError unless it is a regular file inside workdir."""
    if not workdir.is_dir():
        raise WorkspaceError(f"workspace directory {str(workdir)!r} does not exist")
    if not script or Path(script).is_absolute():
        raise WorkspaceError(
            f"entry script {script!r} must be a path relative to the workspace, "
            "e.g. 'train.py' or 'bin/run.sh'"
        )
    root = workdir.resolve()
    path = (root / script).resolve()
    if not path.is_relative_to(root):
        raise WorkspaceError(f"entry script {script!r} points outside the workspace")
    if not path.is_file():
        raise WorkspaceError(f"entry script {script!r} not found in the workspace")
    return path


def guard_command(
    cmd: Sequence[str], parent: int, *, user: str | None = None, cleanup: str | None = None
) -> list[str]:
    """The guard's argv (``runtime/guard.py``): it leads the container's process group, ends it
    when ``parent`` dies, starts ``cmd`` (as ``UID:GID`` ``user``) and runs ``cleanup`` (a JSON
    argv) once it is over."""
    # -I: the guard's own imports never come from the workspace (its cwd) or PYTHONPATH; -S:
    # nor from site-packages (no ``site`` at all: the standard library alone, a faster start).
    argv = [sys.executable, "-I", "-S", str(GUARD_PATH), "--parent", str(parent)]
    if user is not None:
        argv += ["--user", user]
    if cleanup is not None:
        argv += ["--cleanup", cleanup]
    return [*argv, "--", *cmd]


def make_log_dirs(req: LaunchRequest) -> None:
    for log in (req.stdout, req.stderr):
        log.parent.mkdir(parents=True, exist_ok=True)


def spawn_guarded(
    argv: Sequence[str], req: LaunchRequest, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Start the guard's ``argv`` in the workspace, in a session of its own (its PID is the
    container's process group), with stdout and stderr appended to the request's log files."""
    with open(req.stdout, "ab") as out, open(req.stderr, "ab") as err:
        return subprocess.Popen(
            argv,
            cwd=req.workdir,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
