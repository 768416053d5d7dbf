"""The ``process`` runtime: the app runs as plain processes on the node, under a guard.

The runtime starts ``guard.py`` (see its docstring) in a new session, so the guard leads a new
process group: the container's process group. The guard starts the app in that group, mirrors
its exit code, kills what the app leaves behind, and kills the whole group if the supervisor
dies. The runtime signals the container with ``killpg``.

With an account (a multi-user server: ``LaunchRequest.account``), the guard stays the node's
and starts the app as that account, with no supplementary groups, umask 077, and a clean
environment: the account's login variables, a fresh HOME, and the request's variables; none of
the node's (no Ray, no dlapp server variables). The account reaches its own workspace and
whatever the node lets every account read; not the server's data, not other users' apps.
Without one (the embedded one-person cluster), the app runs as the node's own user with its
environment less dlapp's secrets.

No other isolation: the devices named in CUDA_VISIBLE_DEVICES are a convention, not a fence,
and an app that leaves the process group (``setsid``) escapes the guard; the container runtimes
(docker, podman) close those holes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys

from dlapp.credentials import without_secrets
from dlapp.errors import WorkspaceError
from dlapp.runtime.base import (
    LaunchRequest,
    Running,
    Runtime,
    exit_code_from_returncode,
    guard_command,
    make_log_dirs,
    spawn_guarded,
)

logger = logging.getLogger(__name__)


def app_command(req: LaunchRequest) -> list[str]:
    """The app's argv: ``bash`` for ``.sh``, this interpreter for ``.py``, else the script. A
    script named like an option (``-c.sh``, ``+O.sh``) goes as ``./-c.sh``, so that neither
    interpreter reads it as one."""
    script = req.script
    path = os.path.join(".", script) if script.startswith(("-", "+")) else script
    if script.endswith(".sh"):
        return ["bash", path, *req.args]
    if script.endswith(".py"):
        return [sys.executable, path, *req.args]
    if not os.access(req.workdir / script, os.X_OK):
        raise WorkspaceError(
            f"entry script {script!r} is not executable; make it executable or name it *.sh or *.py"
        )
    return [os.path.join(".", script), *req.args]


def app_env(req: LaunchRequest) -> dict[str, str]:
    """The node's environment (less dlapp's secrets), or with an account a clean login
    environment of its own; then the request's, with this interpreter first on PATH."""
    if req.account is not None:
        env = req.account.env(req.home or req.workdir)
        for name in ("LANG", "LC_ALL", "TZ"):  # how text and time read, nothing of the node's
            if name in os.environ:
                env[name] = os.environ[name]
    else:
        env = without_secrets(os.environ)
    env.update(req.env)
    bindir = os.path.dirname(sys.executable)
    path = env.get("PATH", "")
    env["PATH"] = f"{bindir}{os.pathsep}{path}" if path else bindir
    env.setdefault("PYTHONUNBUFFERED", "1")  # live logs from Python apps
    return env


class ProcessRunning(Running):
    """The guard's Popen; its PID is also the container's process group ID."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
            os.killpg(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            returncode = self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return exit_code_from_returncode(returncode)


class ProcessRuntime(Runtime):
    name = "process"

    def _launch(self, req: LaunchRequest) -> Running:
        if req.image is not None:
            logger.warning("%s: the process runtime ignores image %r", req.name, req.image)
        account = req.account  # with one, the guard starts the app as it
        user = None if account is None else f"{account.uid}:{account.gid}"
        cmd = guard_command(app_command(req), parent=os.getpid(), user=user)
        env = app_env(req)
        make_log_dirs(req)
        return ProcessRunning(spawn_guarded(cmd, req, env))
