"""Apps with ``runtime: docker`` through the in-process server (routes, services, scheduling,
real supervisor, real docker runtime over the LocalExecutor) and a real dockerd."""

from __future__ import annotations

import json
import pwd
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dlapp.config import ContainerPolicy, ServerSettings
from dlapp.data.workspace import pack_workspace
from dlapp.executor import LocalExecutor
from dlapp.runtime.gpus import count_gpus
from dlapp.scheduler import Resources
from dlapp.server.app import create_app
from dlapp.spec import AppSpec
from docker_support import MINIMAL, containers, eventually, require_docker

from inprocess import add_user, bearer, wait_finished


@pytest.fixture
def settings(tmp_path: Path) -> ServerSettings:
    require_docker()
    return ServerSettings(
        home=tmp_path / "home",
        schedule_interval_s=0.05,
        softkill_grace_s=5,
        container=ContainerPolicy(gpus="none"),  # 2 declared GPUs, no devices
    )


@pytest.fixture
def api(settings: ServerSettings) -> Iterator[TestClient]:
    app = create_app(settings, lambda s: LocalExecutor(Resources(4, 8192, 2)))
    with TestClient(app) as tc:
        tc.headers.update(bearer(add_user(tc, settings.home, "bob")))
        yield tc


def _post(api: TestClient, tmp: Path, script: str, **spec: Any) -> Any:
    ws = tmp / f"ws{time.monotonic_ns()}"
    ws.mkdir()
    (ws / "run.sh").write_text(script)
    data = {
        "name": "d",
        "runtime": "docker",
        "image": MINIMAL,
        "entry": {"script": "run.sh"},
        "resources": {"memory": "128M", "cpus": 1},
        **spec,
    }
    tarball = pack_workspace(ws, tmp / f"{ws.name}.tar.gz").path
    return api.post(
        "/api/v1/apps",
        data={"spec": json.dumps(AppSpec.from_dict(data).to_dict())},
        files={"workspace": ("w.tar.gz", tarball.read_bytes(), "application/gzip")},
    )


def _submit(api: TestClient, tmp: Path, script: str, **spec: Any) -> str:
    resp = _post(api, tmp, script, **spec)
    assert resp.status_code == 201, resp.text
    app_id: str = resp.json()["id"]
    return app_id


def _stdout(api: TestClient, app_id: str) -> str:
    return api.get(f"/api/v1/apps/{app_id}/logs", params={"container": 0}).text


def _running(api: TestClient, app_id: str) -> bool:
    return "up" in _stdout(api, app_id)


def test_a_docker_app_succeeds_with_its_gpus_as_non_root(api: TestClient, tmp_path: Path) -> None:
    app_id = _submit(
        api,
        tmp_path,
        f'echo "user=$(id -u) gpus=$CUDA_VISIBLE_DEVICES app=$DLAPP_APP_ID cwd=$(pwd)"\n'
        f"test -e {tmp_path} && echo sees-host\nexit 0\n",
        resources={"gpus": 1, "memory": "128M"},
    )
    app = wait_finished(api, app_id, timeout=60)
    assert app["final_status"] == "SUCCEEDED", app
    gpu_ids = app["containers"][0]["gpu_ids"]
    out = _stdout(api, app_id)
    # two users (the admin, bob): the multi-user rules run it as bob's own account, not root
    uid = pwd.getpwnam("dlapp-bob").pw_uid
    assert uid >= 1000
    assert f"user={uid} gpus={','.join(gpu_ids)} app={app_id} cwd=/workspace" in out
    assert len(gpu_ids) == 1 and "sees-host" not in out
    assert containers(f"dlapp.app={app_id}") == []


def test_declared_gpus_need_no_device_with_the_default_policy(tmp_path: Path) -> None:
    """`dlapp up --gpus 2` on a machine without GPUs, as the README sets it up: the default
    container policy (gpus: auto) requests no device, which docker would refuse ("could not
    select device driver"), and the app sees its declared GPU's ID."""
    require_docker()
    if count_gpus() > 0:
        pytest.skip("this machine has GPUs: this test is of one whose GPUs are only declared")
    settings = ServerSettings(home=tmp_path / "home", schedule_interval_s=0.05)
    assert settings.container.gpus == "auto"
    app = create_app(settings, lambda s: LocalExecutor(Resources(4, 8192, 2)))
    with TestClient(app) as api:
        api.headers.update(bearer(add_user(api, settings.home, "bob")))
        app_id = _submit(
            api, tmp_path, 'echo "gpus=$CUDA_VISIBLE_DEVICES"\n', resources={"gpus": 1}
        )
        done = wait_finished(api, app_id, timeout=60)
        assert done["final_status"] == "SUCCEEDED", done
        (gpu,) = done["containers"][0]["gpu_ids"]
        assert _stdout(api, app_id) == f"gpus={gpu}\n"


@pytest.mark.parametrize("kind", ["kill", "softkill"])
def test_kill_and_softkill_leave_no_container(api: TestClient, tmp_path: Path, kind: str) -> None:
    app_id = _submit(api, tmp_path, "echo up\nwhile :; do sleep 1; done\n")
    assert eventually(lambda: _running(api, app_id), timeout=60)
    assert containers(f"dlapp.app={app_id}") != []
    assert api.post(f"/api/v1/apps/{app_id}/{kind}").status_code == 200
    assert wait_finished(api, app_id, timeout=60)["final_status"] == "KILLED"
    assert eventually(lambda: containers(f"dlapp.app={app_id}") == [])


def test_out_of_memory_is_the_diagnostic(api: TestClient, tmp_path: Path) -> None:
    hog = 'x=$(head -c 300000000 /dev/zero | tr "\\0" x)\necho "${#x}"\n'
    app = wait_finished(api, _submit(api, tmp_path, hog, resources={"memory": "32M"}), timeout=60)
    assert app["final_status"] == "FAILED"
    assert app["containers"][0]["exit_code"] == 137
    assert "out of memory (OOM)" in app["diagnostics"]


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"container": {"privileged": True}}, "privileged containers are never allowed"),
        ({"container": {"mounts": [{"host": "/", "path": "/h"}]}}, "never mounted"),
        ({"container": {"mounts": [{"host": "/etc", "path": "/h"}]}}, "never mounted"),
        (
            {"container": {"mounts": [{"host": "/var/run/docker.sock", "path": "/s"}]}},
            "never mounted",
        ),
        ({"container": {"network": "host"}}, "host network is not allowed"),
        ({"image": "evil/miner"}, "image 'evil/miner' is not allowed"),
    ],
)
def test_a_refused_spec_creates_nothing(
    api: TestClient, settings: ServerSettings, tmp_path: Path, spec: dict[str, Any], message: str
) -> None:
    resp = _post(api, tmp_path, "exit 0\n", **spec)
    assert resp.status_code == 403, resp.text
    assert message in resp.json()["error"]["message"]
    assert api.get("/api/v1/apps").json()["apps"] == []
    time.sleep(0.3)  # a few scheduling cycles
    assert containers(f"dlapp.cluster={settings.container_policy.cluster_id}") == []


def test_the_server_removes_orphans_on_start(settings: ServerSettings) -> None:
    cluster = settings.container_policy.cluster_id
    name = f"dlapp-orphan-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "run", "--detach", "--name", name, "--label", "dlapp.app=application_9_0001",
         "--label", f"dlapp.cluster={cluster}", MINIMAL, "sleep", "300"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        app = create_app(settings, lambda s: LocalExecutor(Resources(4, 8192, 2)))
        with TestClient(app):
            assert eventually(lambda: containers(f"dlapp.cluster={cluster}") == [])
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
