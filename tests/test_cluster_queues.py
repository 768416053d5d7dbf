"""Capacity queues on a real server with Ray and declared GPUs: two users in two queues, the
queue file reloaded live, and a preemption whose victim checkpoints and resumes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from dlapp.client import DlappClient
from dlapp.errors import DlappError, Forbidden, InfeasibleError
from dlapp.spec import AppSpec

from conftest import CLUSTER_GPUS, AppFactory, pack, processes_with_env, wait_for, wait_running

pytestmark = pytest.mark.cluster

QUEUES = {
    "preemption": {"enabled": True, "grace_s": 10},
    "queues": {
        "default": {"guaranteed": "0%"},
        "research": {"guaranteed": "50%", "maximum": "100%", "submit_acl": {"users": ["alice"]}},
        "prod": {"guaranteed": "50%", "maximum": "100%", "submit_acl": {"users": ["bob"]}},
    },
}

# Trains "steps" until SIGTERM; on SIGTERM it saves its step to the checkpoint dir and says
# what the notice file told it; a resumed attempt starts from the checkpoint.
CHECKPOINTING = r"""
ckpt="$DLAPP_CHECKPOINT_DIR/step"
step=0
if [ -f "$ckpt" ]; then step=$(cat "$ckpt"); echo "resumed from step $step"; fi
on_term() {
  echo "$step" > "$ckpt"
  echo "notice: $(cat "$DLAPP_NOTICE_FILE")"
  echo "checkpointed at step $step"
  exit 143
}
trap on_term TERM
echo up
if [ "$step" -gt 0 ]; then echo "finished after resuming"; exit 0; fi
while true; do step=$((step + 1)); sleep 0.2; done
"""


@pytest.fixture
def queues(server_home: Path, server_url: str, tokens: dict[str, str]) -> Iterator[Path]:
    """Install the two-team queue file, wait for the server to take it; restore after."""
    path = server_home / "queues.yaml"
    path.write_text(yaml.safe_dump(QUEUES))
    with DlappClient(server_url, tokens["admin"]) as admin:
        admin.reload_queues()
        yield path
        path.unlink()
        admin.reload_queues()


def _submit(client: DlappClient, spec_path: Path, tmp: Path) -> str:
    spec = AppSpec.from_file(spec_path)
    app_id: str = client.submit(spec, pack(Path(spec.workspace.path), tmp))["id"]
    return app_id


def test_queue_acl_maximum_and_the_tree_view(
    queues: Path, client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    mine = make_app("true\n", name="acl", queue="prod")
    with pytest.raises(Forbidden, match=r"alice may not submit to queue root\.prod"):
        _submit(client, mine, tmp_path)
    huge = make_app(
        "true\n",
        name="huge",
        queue="research",
        num_containers=3,
        resources={"cpus": 1, "memory": "256M", "gpus": 1},
    )
    with pytest.raises(InfeasibleError, match="3 GPUs"):
        _submit(client, huge, tmp_path)
    with pytest.raises(DlappError, match="no queue 'nope'"):
        _submit(client, make_app("true\n", name="nope", queue="nope"), tmp_path)
    view = client.queues()
    rows = {q["path"]: q for q in view["queues"]}
    assert rows["root.research"]["guaranteed"]["gpus"] == CLUSTER_GPUS // 2
    assert rows["root.prod"]["maximum"]["gpus"] == CLUSTER_GPUS
    assert view["preemption"] == {"enabled": True, "grace_s": 10.0, "past_guarantee": True}


def test_invalid_queue_file_is_refused_and_the_running_one_kept(
    queues: Path, server_url: str, tokens: dict[str, str]
) -> None:
    queues.write_text(
        yaml.safe_dump({"queues": {"a": {"guaranteed": "80%"}, "b": {"guaranteed": "40%"}}})
    )
    with DlappClient(server_url, tokens["admin"]) as admin:
        with pytest.raises(DlappError, match="add up to 120%"):
            admin.reload_queues()
        view = admin.queues()
    assert "add up to 120%" in view["error"]
    assert {q["path"] for q in view["queues"]} >= {"root.research", "root.prod"}
    queues.write_text(yaml.safe_dump(QUEUES))


def test_preemption_gives_a_queue_its_guarantee_and_the_victim_resumes_from_its_checkpoint(
    queues: Path,
    client: DlappClient,
    server_url: str,
    tokens: dict[str, str],
    make_app: AppFactory,
    tmp_path: Path,
) -> None:
    # alice's app borrows the whole cluster (both GPUs) through queue research
    hog = _submit(
        client,
        make_app(
            CHECKPOINTING,
            name="hog",
            queue="research",
            resources={"cpus": 1, "memory": "256M", "gpus": CLUSTER_GPUS},
        ),
        tmp_path,
    )
    wait_running(client, hog)
    wait_for(lambda: "up" in client.logs(hog), 20, "the hog to start")
    # bob's app in queue prod is under prod's guarantee: alice's app is preempted for it
    with DlappClient(server_url, tokens["bob"]) as bob:
        quick = _submit(
            bob,
            make_app(
                "echo bob-ran; sleep 1\n",
                name="quick",
                queue="prod",
                resources={"cpus": 1, "memory": "256M", "gpus": 1},
            ),
            tmp_path,
        )
        assert bob.wait(quick, timeout_s=90)["final_status"] == "SUCCEEDED"
        with pytest.raises(DlappError, match="no app"):
            bob.get(hog)  # bob cannot see alice's app
    done = client.wait(hog, timeout_s=120)
    assert done["final_status"] == "SUCCEEDED", done
    assert done["attempt"] == 2  # preempted once, resumed once; no failure counted
    events = client.events(hog)
    preempted = [e for e in events if e["kind"] == "preemption"]
    assert preempted and f"preempted for {quick}" in preempted[0]["reason"]
    states = [e["to_state"] for e in events if e["kind"] == "state"]
    assert states == ["ACCEPTED", "RUNNING", "ACCEPTED", "RUNNING", "FINISHED"]
    log = client.logs(hog)  # the current (second) attempt's log
    assert "resumed from step" in log and "finished after resuming" in log
    # the first attempt's log: what its notice file said when SIGTERM came
    first = client.logs(hog, attempt=1)
    assert "checkpointed at step" in first and "finished" not in first
    notice = json.loads(first.split("notice: ", 1)[1].splitlines()[0])
    assert set(notice) == {"reason", "detail", "deadline", "deadline_iso"}
    assert notice["reason"] == "preempted"
    assert notice["detail"] == preempted[0]["reason"]  # why, as the app's event says
    asked = datetime.fromisoformat(preempted[0]["time"]).timestamp()
    assert notice["deadline"] == pytest.approx(asked + QUEUES["preemption"]["grace_s"], abs=0.01)
    deadline = datetime.fromisoformat(notice["deadline_iso"])
    assert deadline.utcoffset() == timedelta(0)  # UTC, as ISO 8601 says it
    assert deadline.timestamp() == pytest.approx(notice["deadline"], abs=0.001)
    assert processes_with_env("DLAPP_APP_ID", hog) == []


def test_a_waiting_app_says_which_queue_limit_holds_it(
    queues: Path, client: DlappClient, make_app: AppFactory, tmp_path: Path
) -> None:
    first = _submit(
        client,
        make_app(
            "sleep 30\n",
            name="first",
            queue="research",
            resources={"cpus": 1, "memory": "256M", "gpus": CLUSTER_GPUS},
        ),
        tmp_path,
    )
    try:
        wait_running(client, first)
        second = _submit(
            client,
            make_app(
                "true\n",
                name="second",
                queue="research",
                resources={"cpus": 1, "memory": "256M", "gpus": 1},
            ),
            tmp_path,
        )
        reason = wait_for(
            lambda: "position" in (r := client.get(second)["pending_reason"]) and r,
            10,
            "the scheduler's reason",
        )
        assert "position 1 in queue root.research" in reason
        assert "GPU" in reason
        listed = {a["id"]: a for a in client.list_apps()}
        assert listed[second]["queue"] == "root.research"
        client.kill(second)
    finally:
        client.kill(first)
