"""Real storage servers on loopback for the staging tests: sshd (sftp) and moto (s3).

``sshd``: OpenSSH's own server (``apt-get install openssh-server``), with a fresh host key and
an authorized key in a temporary directory, listening on 127.0.0.1 only, for the current user.
``s3_server``: moto's S3-protocol server in a thread. Each gives the ``Profile`` that staging
needs to reach it, as an admin would write it in ``storage_profiles``.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dlapp.data.locations import DataConfig, Profile

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Sshd:
    port: int
    user: str
    key: Path
    root: Path  # a directory the tests may use on the "remote" side

    @property
    def profile(self) -> Profile:
        options = {
            "port": self.port,
            "username": self.user,
            "key_filename": str(self.key),
            "look_for_keys": False,
            "allow_agent": False,
        }
        return Profile("lab-sftp", "sftp", ("sftp://127.0.0.1",), options)

    def url(self, path: Path | str) -> str:
        return f"sftp://127.0.0.1{path}"


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    if not os.path.exists(SSHD):
        if os.environ.get("DLAPP_REQUIRE_SSHD"):  # CI: the sftp tests must run
            pytest.fail(f"{SSHD} is missing (apt-get install -y openssh-server)")
        pytest.skip("needs openssh-server (apt-get install -y openssh-server)")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True
        )
    auth = d / "authorized_keys"
    shutil.copyfile(d / "client_key.pub", auth)
    auth.chmod(0o600)
    port = free_port()
    config = d / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {d / 'host_key'}",
                f"AuthorizedKeysFile {auth}",
                f"PidFile {d / 'sshd.pid'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    log = (d / "sshd.log").open("w")
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(config), "-p", str(port)], stdout=log, stderr=log
    )
    try:
        _wait_listening(port, proc, d / "sshd.log")
        root = d / "remote"
        root.mkdir()
        yield Sshd(port, getpass.getuser(), d / "client_key", root)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    pytest.fail(f"sshd did not listen on {port}: {log.read_text()[-2000:]}")


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    @property
    def profile(self) -> Profile:
        return Profile("lab-s3", "s3", (), self.options)

    @property
    def options(self) -> dict[str, Any]:
        return {
            "key": "testing-key-id",
            "secret": "testing-secret-key",
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": "eu-west-1"},
        }

    def filesystem(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, **self.options)

    def new_bucket(self) -> str:
        name = f"b-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


def config_with(*profiles: Profile, cache_dir: Path | None = None, **kw: Any) -> DataConfig:
    return DataConfig(
        profiles=profiles,
        cache_dir=str(cache_dir) if cache_dir else None,
        cache_max_bytes=kw.pop("cache_max_bytes", 64 * 1024 * 1024 if cache_dir else 0),
        **kw,
    )
