"""``dlapp node join`` on a second Ray node: a gang that needs two nodes is refused by a one-node
cluster; ``dlapp node join HEAD`` (``ray start --address``, as an admin runs it on a GPU
machine) adds a node, the server sees it, and the gang runs across both nodes.

The joined node's processes are found by an environment variable that only they carry, and
ended by their ids: ``ray stop`` would end every Ray process on the machine."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dlapp.cli import main as cli
from dlapp.config import ServerSettings
from dlapp.server.app import create_app

from clusters import FAST_HEALTH_CHECKS, ray_head
from conftest import processes_with_env, wait_for
from inprocess import admin_token, bearer, submit

pytestmark = pytest.mark.cluster
MARK = "DLAPP_TEST_JOINED_NODE"


@pytest.fixture
def joined_marker(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A value every process of the node joined in the test carries; they end with the test."""
    value = uuid.uuid4().hex
    monkeypatch.setenv(MARK, value)
    yield value
    for pid in processes_with_env(MARK, value):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not processes_with_env(MARK, value), 30, "the joined node to end")


def _nodes(api: TestClient, token: str) -> list[dict[str, Any]]:
    nodes: list[dict[str, Any]] = api.get("/api/v1/cluster", headers=bearer(token)).json()["nodes"]
    return [n for n in nodes if n["alive"]]


def test_a_node_joined_with_dlapp_node_join_runs_a_gang_with_the_head(
    joined_marker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ray_head(gpus=1, cpus=2, **FAST_HEALTH_CHECKS) as cluster:
        home = tmp_path / "home"
        settings = ServerSettings(
            home=home,
            ray_address=cluster.address,
            schedule_interval_s=0.2,
            file_roots=(tmp_path,),
            tenancy="single",
        )
        with TestClient(create_app(settings)) as api:
            token = admin_token(home)
            assert len(_nodes(api, token)) == 1
            script = 'echo "rank $RANK of $WORLD_SIZE"\n'
            gang = {"cpus": 1, "memory": "128M", "gpus": 1}
            refused = submit(api, tmp_path, token, script, num_containers=2, resources=gang)
            assert refused.status_code == 422 and "the cluster has 1 GPU" in refused.text
            # the admin joins a second machine (here: this one) to the head
            assert cli.main(["node", "join", cluster.address, "--gpus", "1", "--cpus", "2"]) == 0
            assert f"ray start --address={cluster.address} --num-gpus=1" in capsys.readouterr().out
            assert processes_with_env(MARK, joined_marker)  # the node's own processes
            nodes = wait_for(lambda: len(n := _nodes(api, token)) == 2 and n, 60, "two nodes")
            assert all(n["total"]["gpus"] == 1 for n in nodes)
            resp = submit(api, tmp_path, token, script, num_containers=2, resources=gang)
            assert resp.status_code == 201, resp.text
            app_id = resp.json()["id"]
            done = wait_for(
                lambda: (
                    (a := api.get(f"/api/v1/apps/{app_id}", headers=bearer(token)).json())["state"]
                    == "FINISHED"
                    and a
                ),
                120,
                "the gang to run on both nodes",
            )
            assert done["final_status"] == "SUCCEEDED", done["diagnostics"]
            assert len({c["node_id"] for c in done["containers"]}) == 2
            joined = {n["node_id"] for n in nodes} - {cluster.head_node.node_id}
            assert joined <= {c["node_id"] for c in done["containers"]}
