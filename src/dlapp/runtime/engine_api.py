"""A tiny Docker Engine API client: the daemon's unix socket, standard library only.

The docker runtime runs ``docker run`` itself through the CLI (under the guard, which holds the
client so that the container fate-shares with its supervisor), but its small calls around it
(remove a container left by an earlier attempt, inspect the exited container for
``.State.OOMKilled``, remove it, signal it, is the daemon up) go straight to the API where the
CLI's endpoint is a local unix socket: one HTTP request (well under a millisecond) instead of a
Go binary started for each (15-25 ms of CPU, more on a busy node). Same daemon, same calls, no
new dependency.

``engine_api(command)`` is the client for that docker command, or None where the CLI's
endpoint is not a unix socket (``DOCKER_HOST=tcp://...``, ``ssh://``, a remote context) or
cannot be told (a CLI without ``docker context``, a wrapper script): the callers then use the
CLI as before. A call that cannot reach the socket raises ``OSError``; callers fall back to the
CLI for it.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import threading
from typing import Any
from urllib.parse import quote, urlencode

DEFAULT_SOCKET = "/var/run/docker.sock"
TIMEOUT_S = 30.0
RESOLVE_TIMEOUT_S = 15.0


class EngineAPIError(OSError):
    """The daemon answered with an error status the caller did not expect."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"docker API {status}: {message}")
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class EngineAPI:
    """The Engine API of the daemon at the unix socket ``path``; one connection a call."""

    def __init__(self, path: str, timeout: float = TIMEOUT_S) -> None:
        self.path = path
        self.timeout = timeout

    def request(
        self, method: str, path: str, query: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """(status, body) of one request; OSError where the socket cannot be reached."""
        url = path + ("?" + urlencode(query) if query else "")
        conn = _UnixConnection(self.path, self.timeout)
        try:
            conn.request(method, url)
            answer = conn.getresponse()
            return answer.status, answer.read()
        except http.client.HTTPException as exc:
            raise OSError(f"docker API {method} {path}: {exc}") from exc
        finally:
            conn.close()

    def ping(self) -> bool:
        status, _ = self.request("GET", "/_ping")
        return status == 200

    def inspect(self, name: str) -> dict[str, Any] | None:
        """The container's ``inspect`` document, or None where there is no such container."""
        status, body = self.request("GET", f"/containers/{_ref(name)}/json")
        if status == 404:
            return None
        if status != 200:
            raise EngineAPIError(status, _message(body))
        found: dict[str, Any] = json.loads(body)
        return found

    def remove(self, name: str) -> bool:
        """``docker rm --force``: True when it was removed, False when there was none."""
        status, body = self.request("DELETE", f"/containers/{_ref(name)}", {"force": "1"})
        if status == 404:
            return False
        if status not in (200, 204):
            raise EngineAPIError(status, _message(body))
        return True

    def kill(self, name: str, sig: int) -> None:
        """``docker kill --signal``; quiet where the container is gone or no longer runs."""
        status, body = self.request("POST", f"/containers/{_ref(name)}/kill", {"signal": str(sig)})
        if status not in (204, 404, 409):
            raise EngineAPIError(status, _message(body))


def _ref(name: str) -> str:
    return quote(name, safe="")


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body).get("message", "")) or body.decode(errors="replace")
    except (ValueError, AttributeError):
        return body.decode(errors="replace").strip()


def unix_socket(host: str) -> str | None:
    """The socket path of a ``unix://`` endpoint, else None (tcp, ssh, npipe, ...)."""
    if host.startswith("unix://"):
        path = host.removeprefix("unix://")
        return path if path.startswith("/") else None
    return None


_clients: dict[tuple[str, str, str], EngineAPI | None] = {}
_clients_lock = threading.Lock()


def engine_api(command: str = "docker") -> EngineAPI | None:
    """The API client for the daemon the CLI ``command`` talks to, or None (use the CLI).

    ``DOCKER_HOST`` when set decides; else the CLI's current context, asked once a process
    (``docker context inspect``) and kept."""
    env_host = os.environ.get("DOCKER_HOST", "")
    key = (command, env_host, os.environ.get("DOCKER_CONTEXT", ""))
    with _clients_lock:
        if key in _clients:
            return _clients[key]
        path = unix_socket(env_host) if env_host else _context_socket(command)
        client = EngineAPI(path) if path is not None else None
        _clients[key] = client
        return client


def _context_socket(command: str) -> str | None:
    try:
        done = subprocess.run(
            [command, "context", "inspect", "--format", "{{.Endpoints.docker.Host}}"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=RESOLVE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    lines = done.stdout.strip().splitlines()
    return unix_socket(lines[0].strip()) if len(lines) == 1 else None
