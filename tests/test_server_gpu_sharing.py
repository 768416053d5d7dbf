"""GPU sharing through the server, in-process over the LocalExecutor (real supervisor, real
process runtime): fractional apps share one declared GPU and are told their share, a
whole-GPU app gets its own, a MIG app sees only its instance's UUID, type selectors are
checked at submit, and the GPU map shows the pieces."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dlapp.config import ServerSettings
from dlapp.contract import gpu_env
from dlapp.data.workspace import pack_workspace
from dlapp.executor import LocalExecutor
from dlapp.runtime.gpus import GpuDevice, discover
from dlapp.scheduler import Resources
from dlapp.server.accounting import Allocation, usage
from dlapp.server.app import create_app
from dlapp.spec import AppSpec
from nvml_replay import ReplayedNvml

from conftest import wait_for
from inprocess import add_user, bearer, wait_finished

H200_MB = 143771
ENV = (
    'echo "gpus=$CUDA_VISIBLE_DEVICES fraction=$DLAPP_GPU_FRACTION '
    'memory=$DLAPP_GPU_MEMORY_MB limit=$DLAPP_GPU_MEMORY_LIMIT"\n'
)


@pytest.fixture
def api(tmp_path: Path, database_url: str) -> Iterator[TestClient]:
    """A node with two whole H200s (devices 1 and 2) and an H200 in MIG mode (device 0: the
    instances NVML reports in tests/nvml/h200_mig.json)."""
    mig_gpu = discover(ReplayedNvml("h200_mig.json"))[0]
    whole = [GpuDevice(i, f"GPU-{i}", "NVIDIA H200", H200_MB) for i in (1, 2)]
    settings = ServerSettings(home=tmp_path / "home", db_url=database_url, schedule_interval_s=0.05)
    executor = LocalExecutor(Resources(8, 16384, 0), gpus=[mig_gpu, *whole])
    app = create_app(settings, lambda s: executor)
    with TestClient(app) as tc:
        tc.headers.update(bearer(add_user(tc, settings.home, "bob")))
        yield tc


def submit(api: TestClient, tmp: Path, script: str, **resources: Any) -> Any:
    ws = tmp / f"ws{time.monotonic_ns()}"
    ws.mkdir()
    (ws / "run.sh").write_text(script)
    data = {"name": "t", "entry": {"script": "run.sh"}, "resources": {"memory": "64M", **resources}}
    tarball = pack_workspace(ws, tmp / f"{ws.name}.tar.gz").path
    return api.post(
        "/api/v1/apps",
        data={"spec": json.dumps(AppSpec.from_dict(data).to_dict())},
        files={"workspace": ("w.tar.gz", tarball.read_bytes(), "application/gzip")},
    )


def env_of(api: TestClient, app_id: str) -> dict[str, str]:
    line = api.get(f"/api/v1/apps/{app_id}/logs", params={"container": 0}).text.strip()
    return dict(part.split("=", 1) for part in line.split(" "))


def test_two_half_gpu_apps_share_one_gpu_and_a_whole_gpu_app_gets_its_own(
    api: TestClient, tmp_path: Path
) -> None:
    script = ENV + "sleep 3\n"
    halves = [submit(api, tmp_path, script, gpus=0.5).json() for _ in range(2)]
    whole = submit(api, tmp_path, script, gpus=1).json()
    ids = [a["id"] for a in (*halves, whole)]

    def all_running() -> bool:
        return all(api.get(f"/api/v1/apps/{i}").json()["state"] == "RUNNING" for i in ids)

    wait_for(all_running, 20, "the three apps running at once")
    # the GPU map while they run: one device with two halves, one held whole
    node = api.get("/api/v1/cluster").json()["nodes"][0]
    assert node["model"] == "H200"
    shared = [g for g in node["gpus"] if len(g["holders"]) == 2]
    assert len(shared) == 1 and [h["share"] for h in shared[0]["holders"]] == [0.5, 0.5]
    assert shared[0]["free"] == 0
    for app_id in ids:
        assert wait_finished(api, app_id, timeout=30)["final_status"] == "SUCCEEDED"
    first, second, solo = (env_of(api, i) for i in ids)

    assert first["gpus"] == second["gpus"] != solo["gpus"]
    assert first["gpus"] in ("1", "2") and solo["gpus"] in ("1", "2")
    assert first["fraction"] == "0.5" and first["memory"] == str(round(H200_MB / 2))
    assert first["limit"] in ("mps", "none")  # which of them: whether this node runs MPS
    assert solo["fraction"] == "1" and solo["memory"] == str(H200_MB) and solo["limit"] == ""


def test_a_mig_app_sees_only_its_instance(api: TestClient, tmp_path: Path) -> None:
    app = submit(api, tmp_path, ENV, gpus={"mig": "1g.18gb", "count": 1}).json()

    assert wait_finished(api, app["id"], timeout=20)["final_status"] == "SUCCEEDED"
    env = env_of(api, app["id"])
    assert env["gpus"] in (
        "MIG-c41d9e2a-6b7f-5083-a1e4-9d2c0b3f5e68",
        "MIG-e93f1a6b-2d4c-5e70-b8a1-3c5d7e9f0a12",
    )
    assert env["memory"] == "16128"


def test_a_mig_profile_the_node_lacks_is_refused_at_submit(api: TestClient, tmp_path: Path) -> None:
    resp = submit(api, tmp_path, "true\n", gpus={"mig": "7g.141gb", "count": 1})

    assert resp.status_code == 422, resp.text
    assert (
        "MIG 7g.141gb instances; no node has any (MIG profiles here: 1g.18gb, 2g.35gb, 3g.71gb)"
        in (resp.text)
    )


def test_a_gpu_type_no_node_has_is_refused_at_submit(api: TestClient, tmp_path: Path) -> None:
    resp = submit(api, tmp_path, "true\n", gpus=1, gpu_type=["A100", "T4"])

    assert resp.status_code == 422, resp.text
    assert "asks for an A100 or a T4; no node has one (GPU models here: H200 (1 node))" in resp.text


def test_an_app_of_the_nodes_model_runs(api: TestClient, tmp_path: Path) -> None:
    app = submit(api, tmp_path, ENV, gpus=1, gpu_type=["h200"]).json()

    assert wait_finished(api, app["id"], timeout=20)["final_status"] == "SUCCEEDED"


def test_gpu_hours_count_a_fraction_as_its_share() -> None:
    half = Allocation("a1", "alice", "root.default", 0.5, start=0.0, end=3600.0)
    whole = Allocation("a2", "bob", "root.default", 1.0, start=0.0, end=3600.0)

    rows = {r.key: r.gpu_hours for r in usage([half, whole], 0.0, 7200.0)}

    assert rows == {"alice": 0.5, "bob": 1.0}


def test_a_fraction_is_enforced_by_mps_where_the_node_runs_it_and_stated_otherwise() -> None:
    with_mps = gpu_env(["3"], 0.25, 35942, mps=True)
    without = gpu_env(["3"], 0.25, 35942, mps=False)
    whole = gpu_env(["0", "1"], 1.0, 143771, mps=True)

    assert with_mps == {
        "CUDA_VISIBLE_DEVICES": "3",
        "DLAPP_GPU_FRACTION": "0.25",
        "DLAPP_GPU_MEMORY_MB": "35942",
        "DLAPP_GPU_MEMORY_LIMIT": "mps",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=35942M",
    }
    assert (
        without["DLAPP_GPU_MEMORY_LIMIT"] == "none"
        and "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT" not in without
    )
    assert "DLAPP_GPU_MEMORY_LIMIT" not in whole and whole["DLAPP_GPU_FRACTION"] == "1"
    assert gpu_env([], 0.0, 0, mps=True) == {"CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize("placement", ["fgd", "first-fit"])
def test_the_servers_placement_setting_chooses_the_device(
    placement: str, tmp_path: Path, database_url: str
) -> None:
    """Device 1 free again, device 2 holding 0.75: a quarter shares device 2 under fgd (device
    1 stays whole for whole-GPU apps), and takes the first device with room under first-fit."""
    devices = [GpuDevice(i, f"GPU-{i}", "NVIDIA H200", H200_MB) for i in (1, 2)]
    settings = ServerSettings(
        home=tmp_path / "home", db_url=database_url, schedule_interval_s=0.05, placement=placement
    )
    executor = LocalExecutor(Resources(8, 16384, 0), gpus=devices)
    with TestClient(create_app(settings, lambda s: executor)) as api:
        api.headers.update(bearer(add_user(api, settings.home, "bob")))

        def running(app_id: str) -> bool:
            return bool(api.get(f"/api/v1/apps/{app_id}").json()["state"] == "RUNNING")

        def told(app_id: str) -> bool:  # its env line is in its log (it runs: a kill is fine)
            return running(app_id) and "gpus=" in api.get(f"/api/v1/apps/{app_id}/logs").text

        half = submit(api, tmp_path, ENV + "sleep 60\n", gpus=0.5).json()["id"]
        wait_for(lambda: told(half), 20, "the half")
        long = submit(api, tmp_path, ENV + "sleep 60\n", gpus=0.75).json()["id"]
        wait_for(lambda: told(long), 20, "the three quarters")
        assert api.post(f"/api/v1/apps/{half}/kill").status_code == 200
        assert wait_finished(api, half, timeout=30)["final_status"] == "KILLED"
        assert (env_of(api, half)["gpus"], env_of(api, long)["gpus"]) == ("1", "2")
        quarter = submit(api, tmp_path, ENV, gpus=0.25).json()["id"]
        assert wait_finished(api, quarter, timeout=30)["final_status"] == "SUCCEEDED"
        assert env_of(api, quarter)["gpus"] == ("2" if placement == "fgd" else "1"), placement
        api.post(f"/api/v1/apps/{long}/kill")


def test_an_unknown_placement_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="placement must be one of fgd, best-fit"):
        ServerSettings(placement="worst-fit")
