"""A gang trains with DistributedDataParallel across 2 containers (gloo on CPUs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dlapp.client import DlappClient
from dlapp.server.scheduling.plans import rendezvous
from dlapp.spec import AppSpec

from conftest import ROOT, pack

pytestmark = pytest.mark.cluster


def test_rendezvous_ranks_nodes_and_local_ranks() -> None:
    env = rendezvous("application_1_0001", 1, ["10.0.0.2", "10.0.0.2", "10.0.0.3"])
    assert [e["RANK"] for e in env] == ["0", "1", "2"]
    assert [e["LOCAL_RANK"] for e in env] == ["0", "1", "0"]
    assert [e["NODE_RANK"] for e in env] == ["0", "0", "1"]
    assert {e["MASTER_ADDR"] for e in env} == {"10.0.0.2"}
    assert {e["WORLD_SIZE"] for e in env} == {"3"}
    assert 29500 <= int(env[0]["MASTER_PORT"]) < 30500
    assert env[0]["MASTER_PORT"] != rendezvous("application_1_0001", 2, ["a"])[0]["MASTER_PORT"]


def test_ddp_example_trains_across_two_containers(client: DlappClient, tmp_path: Path) -> None:
    example = tmp_path / "ddp"
    shutil.copytree(ROOT / "examples" / "ddp", example, ignore=shutil.ignore_patterns("out"))
    spec = AppSpec.from_file(example / "app.yaml")
    app = client.submit(spec, pack(Path(spec.workspace.path), tmp_path))
    done = client.wait(app["id"], timeout_s=240)
    assert done["final_status"] == "SUCCEEDED", (done, client.logs(app["id"], stream="stderr"))
    gpus = [c["gpu_ids"] for c in done["containers"]]
    assert len({g for ids in gpus for g in ids}) == 2  # distinct devices per container
    results = [
        json.loads((example / "out" / "ddp-digits" / f"container-{i}" / "metrics.json").read_text())
        for i in (0, 1)
    ]
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" for r in results)
    assert all(r["weights_in_sync"] for r in results)
    assert results[0]["accuracy"] == pytest.approx(results[1]["accuracy"])
    assert results[0]["accuracy"] > 0.8
    assert "rank 1/2 backend=gloo" in client.logs(app["id"], container=1)
