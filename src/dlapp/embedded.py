"""The embedded local cluster: a dlapp server with its own single-node Ray, in the background.

``up`` starts ``dlapp server`` detached, with its state under the data directory, and waits
until it answers; ``down`` stops it (the server ends its apps and its Ray cluster on the way
out). ``server.json`` in the data directory says where it listens and, when it serves https
with a certificate of the cluster's own CA (``up(tls=True)``, see ``dlapp.tls``), where that
CA's certificate is: what the CLI trusts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from dlapp import tls
from dlapp.credentials import without_secrets
from dlapp.errors import DlappError, ServerUnavailable

STATE_FILE = "server.json"
_spawned: list[subprocess.Popen[bytes]] = []


@dataclass(frozen=True)
class Running:
    url: str
    pid: int
    ca_file: Path | None = None  # the CA to verify an https server with (None: the system's)


def state_path(home: Path) -> Path:
    return home / STATE_FILE


def write_state(home: Path, url: str, pid: int, ca_file: Path | None = None) -> None:
    home.mkdir(parents=True, exist_ok=True)
    tmp = state_path(home).with_suffix(".tmp")
    state: dict[str, object] = {"url": url, "pid": pid}
    if ca_file is not None:
        state["ca_file"] = str(ca_file)
    tmp.write_text(json.dumps(state))
    os.replace(tmp, state_path(home))


def issuing_ca(home: Path, tls_cert: Path | None) -> Path | None:
    """The embedded CA's certificate when ``tls_cert`` is the one it issued (``up(tls=True)``)."""
    files = tls.paths(home)
    if tls_cert is not None and tls_cert.resolve() == files.cert.resolve() and files.ca.exists():
        return files.ca
    return None


def clear_state(home: Path, pid: int) -> None:
    try:
        if json.loads(state_path(home).read_text()).get("pid") == pid:
            state_path(home).unlink()
    except (OSError, ValueError):
        pass


def _alive(pid: int) -> bool:
    try:  # reap it if it is our own child that already exited
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def healthy(url: str, ca_file: Path | None = None) -> bool:
    try:
        verify = tls.client_context(ca_file) if url.startswith("https:") else True
        return httpx.get(f"{url}/healthz", timeout=2, verify=verify).status_code == 200
    except (httpx.HTTPError, DlappError):
        return False


def running(home: Path) -> Running | None:
    """The embedded server of this data directory, if one is up and answering."""
    try:
        data = json.loads(state_path(home).read_text())
    except (OSError, ValueError):
        return None
    ca = data.get("ca_file")
    info = Running(url=str(data["url"]), pid=int(data["pid"]), ca_file=Path(ca) if ca else None)
    if not _alive(info.pid) or not healthy(info.url, info.ca_file):
        return None
    return info


def up(
    home: Path,
    gpus: int | None = None,
    cpus: float | None = None,
    timeout_s: float = 180.0,
    tls_on: bool = False,
) -> tuple[Running, bool]:
    """Start the embedded cluster unless it runs; returns it and whether it was started now.
    ``tls_on``: serve https with a certificate of the cluster's own CA (made in ``<home>/tls``)."""
    existing = running(home)
    if existing is not None:
        return existing, False
    home.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "dlapp.cli.main", "server", "--home", str(home), "--port", "0"]
    if gpus is not None:
        cmd += ["--gpus", str(gpus)]
    if cpus is not None:
        cmd += ["--cpus", str(cpus)]
    if tls_on:
        files = tls.ensure_embedded(home)
        cmd += ["--tls-cert", str(files.cert), "--tls-key", str(files.key)]
    state_path(home).unlink(missing_ok=True)
    with (home / "server.log").open("ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=without_secrets(os.environ),  # the client's token is not the server's business
        )
    _spawned.append(proc)  # a daemon: it outlives this handle, which must not warn when dropped
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DlappError(
                f"the embedded dlapp server exited with code {proc.returncode}; "
                f"see {home / 'server.log'}"
            )
        info = running(home)
        if info is not None:
            return info, True
        time.sleep(0.3)
    proc.kill()
    raise ServerUnavailable(
        f"the embedded dlapp server did not start in {timeout_s:g}s; see {home / 'server.log'}"
    )


def down(home: Path, timeout_s: float = 60.0) -> bool:
    """Stop the embedded cluster; False when none was running."""
    try:
        pid = int(json.loads(state_path(home).read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return False
    if not _alive(pid):
        state_path(home).unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    state_path(home).unlink(missing_ok=True)
    for proc in [p for p in _spawned if p.pid == pid]:  # started by this process: reap it
        proc.poll()
        _spawned.remove(proc)
    return True
