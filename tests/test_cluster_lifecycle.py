"""An app's life on a real server with a real Ray cluster: run, logs, GPUs, gang, queueing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlapp.client import DlappClient
from dlapp.errors import InfeasibleError
from dlapp.spec import AppSpec

from conftest import (
    CLUSTER_GPUS,
    AppFactory,
    pack,
    processes_with_env,
    wait_for,
    wait_running,
)

pytestmark = pytest.mark.cluster


def test_app_runs_with_env_inputs_and_outputs(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "numbers.txt").write_text("1 2 3\n")
    out = tmp_path / "out"
    spec_path = make_app(
        'echo "idx=$CONTAINER_INDEX n=$NUM_CONTAINERS app=$DLAPP_APP_ID"'
        ' "gpus=$CUDA_VISIBLE_DEVICES" "order=$CUDA_DEVICE_ORDER"\n'
        'printf "%s|" "$@"; echo\n'
        "mkdir -p output && wc -w < data/numbers.txt > output/count.txt\n"
        "echo to-stderr >&2\n",
        name="io",
        entry={"script": "run.sh", "args": ["--flag", "two words", "-x"]},
        resources={"cpus": 1, "memory": "256M", "gpus": 1},
        inputs=[{"url": str(tmp_path / "in"), "path": "data"}],
        outputs=[{"url": str(out), "path": "output"}],
    )
    spec = AppSpec.from_file(spec_path)
    app = client.submit(spec, pack(Path(spec.workspace.path), tmp_path))
    assert app["state"] == "ACCEPTED"
    done = client.wait(app["id"], timeout_s=60)
    assert done["final_status"] == "SUCCEEDED", done
    assert (out / "count.txt").read_text().strip() == "3"
    stdout = client.logs(app["id"])
    assert f"idx=0 n=1 app={app['id']} gpus=" in stdout
    gpu_ids = done["containers"][0]["gpu_ids"]
    assert len(gpu_ids) == 1 and f"gpus={gpu_ids[0]} order=PCI_BUS_ID" in stdout
    assert "--flag|two words|-x|" in stdout
    assert "to-stderr" in client.logs(app["id"], stream="stderr")
    c = done["containers"][0]
    assert c["exit_code"] == 0 and c["node"] and c["start_time"] and c["finish_time"]
    kinds = [e["to_state"] for e in client.events(app["id"]) if e["kind"] == "state"]
    assert kinds == ["ACCEPTED", "RUNNING", "FINISHED"]


def test_logs_are_readable_live_and_after(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    spec = AppSpec.from_file(
        make_app("for i in 1 2 3; do echo line-$i; sleep 0.5; done\n", name="live")
    )
    app = client.submit(spec, pack(Path(spec.workspace.path), tmp_path))
    streamed = "".join(client.follow_logs(app["id"]))
    assert streamed.splitlines() == ["line-1", "line-2", "line-3"]
    done = client.wait(app["id"], timeout_s=30)
    assert done["final_status"] == "SUCCEEDED"
    assert client.logs(app["id"]) == "line-1\nline-2\nline-3\n"
    assert client.logs(app["id"], offset=7) == "line-2\nline-3\n"


def test_a_running_logs_end_and_the_whole_of_it(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    spec = AppSpec.from_file(
        make_app('for i in $(seq 1 50); do echo "row-$i"; done; sleep 60\n', name="rows")
    )
    app_id = client.submit(spec, pack(Path(spec.workspace.path), tmp_path))["id"]
    try:
        wait_for(lambda: "row-50" in client.logs(app_id), 30, "the 50 rows")
        end = client.log_lines(app_id, tail=3)  # read live, through the supervisor
        assert end.text == "row-48\nrow-49\nrow-50\n"
        whole = "".join(f"row-{i}\n" for i in range(1, 51))
        assert end.size == len(whole) and end.offset == len(whole) - len(end.text)
        assert not end.complete  # it still runs
        assert b"".join(client.download_logs(app_id)).decode() == whole
    finally:
        client.kill(app_id)


def test_gang_gets_distinct_gpus_and_later_apps_queue(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    gang = AppSpec.from_file(
        make_app(
            'echo "gpus=$CUDA_VISIBLE_DEVICES"; sleep 30\n',
            name="gang",
            num_containers=CLUSTER_GPUS,
            resources={"cpus": 1, "memory": "256M", "gpus": 1},
        )
    )
    waiter = AppSpec.from_file(
        make_app("echo waited\n", name="waiter", resources={"cpus": 1, "memory": "256M", "gpus": 1})
    )
    g = client.submit(gang, pack(Path(gang.workspace.path), tmp_path))
    try:
        running = wait_running(client, g["id"])
        ids = sorted(i for c in running["containers"] for i in c["gpu_ids"])
        assert ids == sorted({*ids}) and len(ids) == CLUSTER_GPUS
        held = {g_["id"]: g_["app_id"] for n in client.cluster()["nodes"] for g_ in n["gpus"]}
        assert all(held[i] == g["id"] for i in ids)
        w = client.submit(waiter, pack(Path(waiter.workspace.path), tmp_path))

        def decided_reason() -> str | None:  # the first reason, before a cycle, is a placeholder
            reason: str = client.get(w["id"])["pending_reason"]
            return reason if "position" in reason else None

        pending = wait_for(decided_reason, 10, "the scheduler's pending reason")
        assert client.get(w["id"])["state"] == "ACCEPTED"
        assert "GPU" in pending and "position 1" in pending
    finally:
        client.kill(g["id"])
    assert client.wait(g["id"], timeout_s=30)["final_status"] == "KILLED"
    assert client.wait(w["id"], timeout_s=60)["final_status"] == "SUCCEEDED"
    assert processes_with_env("DLAPP_APP_ID", g["id"]) == []


def test_infeasible_request_is_refused_naming_the_resource(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    spec = AppSpec.from_file(
        make_app("true\n", name="big", resources={"cpus": 1, "memory": "256M", "gpus": 8})
    )
    before = len(client.list_apps())
    with pytest.raises(InfeasibleError, match=r"8 GPUs.*largest node.*2 GPUs"):
        client.submit(spec, pack(Path(spec.workspace.path), tmp_path))
    assert len(client.list_apps()) == before


def test_failed_container_fails_the_app_with_the_reason(
    client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    spec = AppSpec.from_file(
        make_app(
            'if [ "$CONTAINER_INDEX" = 1 ]; then exit 3; fi; sleep 60\n',
            name="gangfail",
            num_containers=2,
        )
    )
    app = client.submit(spec, pack(Path(spec.workspace.path), tmp_path))
    done = client.wait(app["id"], timeout_s=60)
    assert done["final_status"] == "FAILED"
    assert "container 1 exited with code 3" in done["diagnostics"]
    codes = {c["index"]: c["exit_code"] for c in done["containers"]}
    assert codes[1] == 3 and codes[0] != 0  # the survivor was ended, not left running
    assert processes_with_env("DLAPP_APP_ID", app["id"]) == []


def test_cluster_api_lists_nodes_and_gpus(client: DlappClient) -> None:
    cluster = client.cluster()
    assert len(cluster["nodes"]) == 1
    node = cluster["nodes"][0]
    assert node["alive"] and node["total"]["gpus"] == CLUSTER_GPUS
    assert [g["id"] for g in node["gpus"]] == [str(i) for i in range(CLUSTER_GPUS)]
    json.dumps(cluster)
