"""GPU sharing on the real cluster (the session's server: embedded Ray, 2 declared GPUs): the
Ray executor's path of issue 18, beside the in-process one of test_server_gpu_sharing."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlapp.client import DlappClient
from dlapp.spec import AppSpec

from conftest import CLUSTER_GPUS, AppFactory, pack, wait_for, wait_running

pytestmark = pytest.mark.cluster

ENV = 'echo "gpus=$CUDA_VISIBLE_DEVICES fraction=$DLAPP_GPU_FRACTION"\nsleep 300\n'


def _submit(client: DlappClient, make_app: AppFactory, tmp: Path, name: str, gpus: float) -> str:
    spec = AppSpec.from_file(
        make_app(ENV, name=name, resources={"cpus": 0.5, "memory": "128M", "gpus": gpus})
    )
    app_id: str = client.submit(spec, pack(Path(spec.workspace.path), tmp))["id"]
    return app_id


def test_two_half_gpu_apps_share_a_device_and_a_whole_gpu_app_gets_the_other(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    assert CLUSTER_GPUS == 2
    halves = [_submit(client, make_app, tmp_path, f"half{i}", 0.5) for i in range(2)]
    whole = _submit(client, make_app, tmp_path, "whole", 1)
    try:
        apps = {a: wait_running(client, a) for a in [*halves, whole]}
        devices = {a: app["containers"][0]["gpu_ids"] for a, app in apps.items()}
        # both halves on the one device, the whole app alone on the other
        assert devices[halves[0]] == devices[halves[1]] and len(devices[halves[0]]) == 1
        assert len(devices[whole]) == 1 and devices[whole] != devices[halves[0]]
        for a in halves:
            line = wait_for(lambda a=a: "gpus=" in client.logs(a) and client.logs(a), 60, a)
            assert f"gpus={devices[a][0]} fraction=0.5" in line, line
        line = wait_for(lambda: "gpus=" in client.logs(whole) and client.logs(whole), 60, whole)
        assert f"gpus={devices[whole][0]} fraction=1" in line, line
        # the cluster is full: a third half has no device with half of it free
        third = _submit(client, make_app, tmp_path, "half2", 0.5)
        try:
            waiting = wait_for(
                lambda: "GPU" in ((a := client.get(third)).get("pending_reason") or "") and a,
                30,
                "the third half's reason",
            )
            assert waiting["state"] == "ACCEPTED", waiting
            assert "0.5 GPU" in waiting["pending_reason"], waiting["pending_reason"]
            assert "0 GPU free on one device" in waiting["pending_reason"]
        finally:
            client.kill(third)
    finally:
        for a in [*halves, whole]:
            client.kill(a)
    for a in [*halves, whole]:
        assert client.wait(a, timeout_s=60)["final_status"] == "KILLED"
