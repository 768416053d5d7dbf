"""Shared fixtures: a real dlapp server with an embedded Ray cluster, started once per session.

The server runs as its own process (``dlapp server``, the same code ``dlapp up`` starts), on a
free port, with 4 CPUs and 2 declared GPUs so that queueing and device IDs can be tried on a
machine without GPUs. Its first admin's token is in ``<home>/admin.token``; with it the session
makes two plain users, alice and bob. The ``client`` and the CLI (``use_server``) act as alice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from databases import database_url, engine, postgres, session  # noqa: F401  (fixtures)
from dlapp import embedded
from dlapp.client import DlappClient
from dlapp.credentials import ADMIN_TOKEN_FILE

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_GPUS = 2
CLUSTER_CPUS = 4
GPU_UTILISATION_FILE = "gpu-utilisation.json"  # in the server's home: {"<gpu id>": percent}


_ACCOUNTS_AT_START: set[str] | None = None


def _remove_made_accounts() -> None:
    """Remove the ``dlapp-*`` Unix accounts made since the test session began."""
    import pwd

    global _ACCOUNTS_AT_START
    names = {p.pw_name for p in pwd.getpwall() if p.pw_name.startswith("dlapp-")}
    if _ACCOUNTS_AT_START is None:
        _ACCOUNTS_AT_START = names
    for name in sorted(names - _ACCOUNTS_AT_START):
        subprocess.run(["userdel", "--force", name], capture_output=True, check=False)
        subprocess.run(["groupdel", name], capture_output=True, check=False)


@pytest.fixture(autouse=True)
def _no_unix_accounts_left_behind() -> Iterator[None]:
    """A server under the multi-user rules makes Unix accounts (``dlapp-<user>``, uids from
    its store). Each test starts and ends without those made during the session (one made
    late, by a supervisor still starting after its test, goes at the next test's start), so
    the next test's store can give the same uids to other users, and CI's machine is left as
    it was."""
    if os.geteuid() == 0:
        _remove_made_accounts()
    yield
    if os.geteuid() == 0:
        _remove_made_accounts()


@pytest.fixture
def ray_cluster(request: pytest.FixtureRequest) -> Iterator[str]:
    """The address of a one-node Ray cluster of the test's own; its GPU count is the indirect
    parameter (``@pytest.mark.parametrize("ray_cluster", [2], indirect=True)``), 1 by default."""
    from clusters import ray_head

    with ray_head(gpus=getattr(request, "param", 1)) as cluster:
        yield str(cluster.address)


@pytest.fixture(scope="session")
def server_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("dlapp-home")
    settings = {
        "softkill_grace_s": 4.0,
        "container": {"gpus": "none"},  # declared GPUs: no devices
        # the declared GPUs' utilisation, read by the supervisors from a file the tests write
        "gpu_sampler": f"test-file:{home / GPU_UTILISATION_FILE}",
        "gpu_sample_interval_s": 1.0,
        # the suite's shared server tests the features, its apps as the test's own user; the
        # multi-user rules (apps as their users' Unix accounts) have servers of their own in
        # test_tenant_isolation.py
        "tenancy": "single",
    }
    (home / "server.yaml").write_text(yaml.safe_dump(settings))
    _, started = embedded.up(home, gpus=CLUSTER_GPUS, cpus=CLUSTER_CPUS)
    assert started
    yield home
    embedded.down(home)


@pytest.fixture(scope="session")
def server_url(server_home: Path) -> str:
    info = embedded.running(server_home)
    assert info is not None, (server_home / "server.log").read_text()[-3000:]
    return info.url


@pytest.fixture(scope="session")
def tokens(server_home: Path, server_url: str) -> dict[str, str]:
    """Tokens by user name: ``admin`` (the bootstrap admin), ``alice`` and ``bob``."""
    admin = (server_home / ADMIN_TOKEN_FILE).read_text().strip()
    found = {"admin": admin}
    with DlappClient(server_url, admin) as c:
        for name in ("alice", "bob"):
            found[name] = c.admin_add_user(name)["token"]
    return found


@pytest.fixture
def client(server_url: str, tokens: dict[str, str]) -> Iterator[DlappClient]:
    with DlappClient(server_url, tokens["alice"]) as c:
        yield c


@pytest.fixture
def use_server(
    server_url: str, tokens: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """Point the CLI at the test server, as alice (no client config file is read)."""
    monkeypatch.setenv("DLAPP_SERVER", server_url)
    monkeypatch.setenv("DLAPP_TOKEN", tokens["alice"])
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-client-config"))
    return server_url


AppFactory = Callable[..., Path]


@pytest.fixture
def make_app(tmp_path: Path) -> AppFactory:
    """Write a workspace with ``script`` as run.sh and an app.yaml; returns the spec path."""

    def factory(script: str, name: str = "t", **spec: Any) -> Path:
        ws = tmp_path / f"ws-{name}"
        ws.mkdir(exist_ok=True)
        (ws / "run.sh").write_text(script)
        data: dict[str, Any] = {
            "name": name,
            "entry": {"script": "run.sh"},
            "workspace": {"path": str(ws)},
            "resources": {"cpus": 1, "memory": "256M", "gpus": 0},
        }
        data.update(spec)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return factory


def load_bench(name: str) -> Any:
    """``bench/<name>.py`` as a module (the benchmarks are scripts, not a package); the bench
    folder goes on ``sys.path`` as it does for a script, for its own modules (``stats``)."""
    import importlib.util

    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def pack(path: Path, tmp: Path) -> Path:
    """The workspace tarball the CLI would send."""
    from dlapp.data.workspace import pack_workspace

    return pack_workspace(path, tmp / f"{path.name}.tar.gz").path


def processes_with_env(key: str, value: str) -> list[int]:
    """PIDs whose environment has ``key=value`` (the process table, read from /proc)."""
    needle = f"{key}={value}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: last {value!r}")


def wait_running(client: DlappClient, app_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """Until every container of the app has started (its process exists)."""

    def started() -> dict[str, Any] | None:
        app = client.get(app_id)
        assert app["state"] != "FINISHED", app
        cs = app["containers"]
        if app["state"] == "RUNNING" and cs and all(c["state"] == "RUNNING" for c in cs):
            return app
        return None

    result: dict[str, Any] = wait_for(started, timeout, f"{app_id} to run")
    return result


def evil_tarball(path: Path, kind: str) -> Path:
    """A workspace tarball crafted to escape the workspace."""
    import io

    with tarfile.open(path, "w:gz") as tar:
        good = tarfile.TarInfo("run.sh")
        body = b"echo hi\n"
        good.size = len(body)
        tar.addfile(good, io.BytesIO(body))
        if kind == "dotdot":
            info = tarfile.TarInfo("../../escaped.txt")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"bad"))
        elif kind == "symlink":
            link = tarfile.TarInfo("etc")
            link.type = tarfile.SYMTYPE
            link.linkname = "/etc"
            tar.addfile(link)
    return path


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def start_server(home: Path, ray_address: str) -> tuple[subprocess.Popen[bytes], str]:
    """``dlapp server`` as its own process on ``ray_address``; returns it and its URL."""
    embedded.state_path(home).unlink(missing_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    with (home / "server.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dlapp.cli.main",
                "server",
                "--home",
                str(home),
                "--port",
                "0",
                "--ray-address",
                ray_address,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    info = wait_for(lambda: embedded.running(home), 90, "the server to answer")
    return proc, str(info.url)


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
