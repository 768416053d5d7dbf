"""The engine and the store are locked away: the embedded cluster's Ray (and the server) listen
on loopback only, and an app's container reaches none of Ray's ports, the API or PostgreSQL on
any of the host's addresses (issue 7).

Listening sockets are read per process (``/proc/<pid>/fd`` matched against ``/proc/net/tcp``
and ``tcp6``) over the whole process tree of the session's server, which
holds the embedded Ray: GCS, raylet, agents and workers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlapp import embedded
from dlapp.client import DlappClient
from dlapp.config import ServerSettings
from dlapp.errors import DlappError
from dlapp.executor import ray_network
from dlapp.executor.ray_network import is_loopback
from dlapp.runtime.docker import DockerRuntime
from dlapp.spec import AppSpec
from docker_support import MINIMAL, require_docker

from conftest import AppFactory, pack, wait_running

Listener = tuple[str, int, str]  # address, port, process name
TCP_LISTEN = "0A"


def _descendants(root: int) -> list[int]:
    """``root`` and every process below it (parents read from ``/proc/<pid>/stat``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def _address(hex_addr: str) -> tuple[str, int]:
    """``0100007F:1F90`` (``/proc/net/tcp``, in 32-bit little-endian words) -> 127.0.0.1, 8080."""
    ip_hex, port_hex = hex_addr.split(":")
    raw = b"".join(bytes.fromhex(ip_hex[i : i + 8])[::-1] for i in range(0, len(ip_hex), 8))
    return str(ipaddress.ip_address(raw)), int(port_hex, 16)


def _listening_inodes() -> dict[str, tuple[str, int]]:
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == TCP_LISTEN:
                found[fields[9]] = _address(fields[1])
    return found


def listeners(root_pid: int) -> list[Listener]:
    """Every listening TCP socket held by ``root_pid`` or its descendants."""
    sockets = _listening_inodes()
    found: list[Listener] = []
    for pid in _descendants(root_pid):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            inode = target[len("socket:[") : -1] if target.startswith("socket:[") else None
            if inode in sockets:
                found.append((*sockets[inode], name))
    return sorted(set(found))


def exposed(found: list[Listener]) -> list[Listener]:
    return [entry for entry in found if not is_loopback(entry[0])]


# -- the checks themselves -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("172.17.0.1", False),
        ("::ffff:10.0.0.7", False),
    ],
)
def test_only_loopback_addresses_count_as_private(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


@pytest.fixture
def wildcard_child() -> Iterator[int]:
    """A child process listening on every interface, as a mis-bound Ray server would."""
    code = (
        "import socket, sys, time\n"
        "s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen()\n"
        "print(s.getsockname()[1], flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    yield port
    proc.kill()
    proc.wait()
    proc.stdout.close()


def test_a_listener_on_every_interface_is_reported(wildcard_child: int) -> None:
    found = exposed(listeners(os.getpid()))
    assert ("0.0.0.0", wildcard_child) in [(a, p) for a, p, _ in found]


# -- settings ----------------------------------------------------------------------------------


def test_the_embedded_cluster_binds_loopback_and_an_external_one_is_left_to_ray() -> None:
    assert ray_network.node_ip(ServerSettings()) == "127.0.0.1"
    assert ray_network.node_ip(ServerSettings(ray_address="10.0.0.1:6379")) is None
    chosen = ServerSettings(ray_address="10.0.0.1:6379", ray_node_ip="10.0.0.7")
    assert ray_network.node_ip(chosen) == "10.0.0.7"


def test_ray_node_ip_must_be_an_address(tmp_path: Path) -> None:
    from dlapp.config import load_server_settings

    with pytest.raises(DlappError, match=r"ray_node_ip: .*'eth0' is not an IP address"):
        load_server_settings(home=tmp_path, env={"DLAPP_RAY_NODE_IP": "eth0"})


def test_loopback_node_is_undone_after_ray_init() -> None:
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    with ray_network.loopback_node("127.0.0.1"):
        assert ray_constants.ENABLE_RAY_CLUSTER is False
    assert before == ray_constants.ENABLE_RAY_CLUSTER
    with ray_network.loopback_node("10.0.0.7"):
        assert before == ray_constants.ENABLE_RAY_CLUSTER


# -- the real embedded cluster -----------------------------------------------------------------


def _server_pid(home: Path) -> int:
    info = embedded.running(home)
    assert info is not None
    return info.pid


@pytest.fixture
def running_app(client: DlappClient, make_app: AppFactory, tmp_path: Path) -> Iterator[str]:
    """An app whose supervisor (a Ray worker, with its own gRPC server) is up."""
    spec_path = make_app("echo up\nsleep 300\n", name="listen")
    spec = AppSpec.from_file(spec_path)
    app_id: str = client.submit(spec, pack(Path(spec.workspace.path), tmp_path))["id"]
    wait_running(client, app_id)
    yield app_id
    client.kill(app_id)
    client.wait(app_id, timeout_s=60)


@pytest.mark.cluster
def test_every_socket_of_the_embedded_cluster_is_on_loopback(
    server_home: Path, running_app: str
) -> None:
    found = listeners(_server_pid(server_home))
    names = {name for _, _, name in found}
    # not vacuous: the GCS, the raylet and the workers were looked at
    assert {"gcs_server", "raylet"} <= names, found
    assert any(name.startswith("ray::") for name in names), found
    assert exposed(found) == [], f"listening beyond loopback: {exposed(found)}"


# -- from inside an app's container ------------------------------------------------------------


def _host_addresses() -> list[str]:
    """The host's IPv4 addresses a container could aim at: the Docker bridge's gateway and the
    machine's others (its own loopback is the container's, not the host's)."""
    done = subprocess.run(
        ["ip", "-json", "-4", "address"], capture_output=True, text=True, check=True
    )
    found = {a["local"] for link in json.loads(done.stdout) for a in link.get("addr_info", [])}
    return sorted(a for a in found if not a.startswith("127."))


def _bridge_gateway() -> str:
    """The host's address on Docker's default bridge, where its apps' containers are."""
    gateway = DockerRuntime().bridge_gateway()
    assert gateway, "docker's default bridge has no IPv4 gateway"
    return gateway


def _probe_script(targets: list[tuple[str, int]]) -> str:
    """A shell program for the minimal image (busybox ``nc``): one line per target, OPEN when
    a connection was made, CLOSED when it was refused or unreachable, and anything else as is."""
    lines = ["probe() {", "  echo | timeout 10 nc -w 3 $1 $2 >/dev/null 2>&1", "  rc=$?"]
    lines += [
        '  if [ $rc = 0 ]; then echo "probe $1:$2 OPEN";',
        '  elif [ $rc = 1 ]; then echo "probe $1:$2 CLOSED";',
        '  else echo "probe $1:$2 rc=$rc"; fi',
        "}",
    ]
    lines += [f"probe {host} {port}" for host, port in targets]
    lines.append("echo probes done")
    return "\n".join(lines) + "\n"


@pytest.fixture
def control_port() -> Iterator[int]:
    """A listener on every interface of the host that answers each connection by closing it:
    the probe must reach it, or its CLOSED answers prove nothing."""
    server = socket.create_server(("0.0.0.0", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                server.accept()[0].close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


@pytest.mark.cluster
def test_an_app_container_reaches_neither_ray_nor_the_api_nor_the_database(
    server_home: Path,
    server_url: str,
    postgres: str,
    client: DlappClient,
    make_app: AppFactory,
    control_port: int,
) -> None:
    require_docker()
    ports = {port for _, port, _ in listeners(_server_pid(server_home))}
    pg_port = int(postgres.rsplit(":", 1)[1].split("/")[0])
    api_port = int(server_url.rsplit(":", 1)[1])
    assert api_port in ports  # the API is in the server's tree; Ray's GCS and raylet too
    ports.add(pg_port)
    hosts = _host_addresses()
    gateway = _bridge_gateway()
    assert gateway in hosts, hosts
    targets = [(h, p) for h in hosts for p in sorted(ports)] + [(gateway, control_port)]
    spec = make_app(
        _probe_script(targets),
        name="probe",
        runtime="docker",
        image=MINIMAL,
        resources={"cpus": 1, "memory": "64M", "gpus": 0},
    )
    s = AppSpec.from_file(spec)
    app_id = client.submit(s, pack(Path(s.workspace.path), spec.parent))["id"]
    done = client.wait(app_id, timeout_s=120 + 3 * len(targets))
    logs = client.logs(app_id)
    assert done["final_status"] == "SUCCEEDED" and "probes done" in logs, (done, logs)
    results = dict(line.split()[1:3] for line in logs.splitlines() if line.startswith("probe "))
    assert results.pop(f"{gateway}:{control_port}") == "OPEN", results
    assert len(results) == len(targets) - 1
    reachable = {t: r for t, r in results.items() if r != "CLOSED"}
    assert reachable == {}, f"reachable from an app's container: {reachable}"
