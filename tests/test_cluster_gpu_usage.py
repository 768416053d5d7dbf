"""GPU utilisation through Ray: each supervisor actor samples its own GPUs (the ``test-file:``
sampler stands in for NVML), the server asks the actors for their reports without waiting, and
the app shows only the readings of the GPUs Ray assigned to it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dlapp.client import DlappClient
from dlapp.spec import AppSpec

from conftest import GPU_UTILISATION_FILE, AppFactory, pack, wait_for, wait_running

pytestmark = pytest.mark.cluster


@pytest.fixture
def utilisation(server_home: Path) -> Iterator[Path]:
    path = server_home / GPU_UTILISATION_FILE
    yield path
    path.unlink(missing_ok=True)


def test_each_container_reports_the_gpus_ray_gave_it(
    client: DlappClient, make_app: AppFactory, tmp_path: Path, utilisation: Path
) -> None:
    utilisation.write_text(json.dumps({"0": 35, "1": 85}))
    spec = AppSpec.from_file(
        make_app(
            "sleep 60\n",
            name="gpu-use",
            num_containers=2,
            resources={"cpus": 1, "memory": "256M", "gpus": 1},
        )
    )
    app = client.submit(spec, pack(Path(spec.workspace.path), tmp_path))
    try:
        running = wait_running(client, app["id"])
        assigned = {c["index"]: c["gpu_ids"] for c in running["containers"]}

        def reported() -> dict[str, Any] | None:
            usage = client.get(app["id"])["gpu_usage"]
            if usage and len(usage["containers"]) == 2 and usage["samples"] >= 4:
                return dict(usage)
            return None

        usage = wait_for(reported, 60, "both containers' GPU reports")
        readings = {c["index"]: c["gpus"] for c in usage["containers"]}
        expected = {"0": 35.0, "1": 85.0}
        for index, gpu_ids in assigned.items():
            assert list(readings[index]) == gpu_ids  # its own GPU only
            assert readings[index][gpu_ids[0]]["utilisation"] == expected[gpu_ids[0]]
        assert 35.0 < usage["utilisation_mean"] < 85.0  # weighted by each one's time sampled
        assert usage["idle"] is False
    finally:
        client.kill(app["id"])
