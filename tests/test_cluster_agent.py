"""Containers start through each node's agent: no placement group, no actor of their own.

A real Ray head (two declared GPUs) and the server in this process. The agent is one named,
detached actor per node; the devices an app sees are the ones the scheduler chose (the store's
GPU map), not Ray's. When the agent dies mid-run, its containers die with it (their guards see
it go), the app goes back to its queue, and the agent, restarted by Ray, runs it again.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dlapp.config import ServerSettings
from dlapp.executor.agent import agent_name, existing_agent
from dlapp.server.app import create_app

from clusters import ray_head
from conftest import processes_with_env, wait_for
from inprocess import add_user, bearer, submit, wait_finished
from invariants import assert_running_matches

pytestmark = pytest.mark.cluster
GPU = {"cpus": 1, "memory": "128M", "gpus": 1}
# attempt 1 marks the app's checkpoint directory (kept across attempts) and sleeps; the rerun
# sees the mark and ends at once
RERUN = (
    'if [ -e "$DLAPP_CHECKPOINT_DIR/seen" ]; then echo rerun-ok; exit 0; fi\n'
    'touch "$DLAPP_CHECKPOINT_DIR/seen"; echo up; sleep 300\n'
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[TestClient, str, Path]]:
    with ray_head(gpus=2, cpus=4) as cluster:
        settings = _settings(tmp_path, cluster.address, log_ship_interval_s=0.3)
        yield from _serve(settings, settings.home)


def _settings(tmp: Path, ray_address: str, **kw: Any) -> ServerSettings:
    return ServerSettings(
        home=tmp / "home",
        ray_address=ray_address,
        schedule_interval_s=0.2,
        file_roots=(tmp,),
        app_account_prefix="dlag-",  # accounts of its own: other tests may run beside it
        **kw,
    )


def _serve(settings: ServerSettings, home: Path) -> Iterator[tuple[TestClient, str, Path]]:
    with TestClient(create_app(settings)) as api:
        yield api, add_user(api, home, "ada"), home


def _app(api: TestClient, token: str, app_id: str) -> dict[str, Any]:
    result: dict[str, Any] = api.get(f"/api/v1/apps/{app_id}", headers=bearer(token)).json()
    return result


def _events(api: TestClient, token: str, app_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = api.get(
        f"/api/v1/apps/{app_id}/events", headers=bearer(token)
    ).json()["events"]
    return out


def _logs(api: TestClient, token: str, app_id: str) -> str:
    return api.get(f"/api/v1/apps/{app_id}/logs", headers=bearer(token)).text


def _running(api: TestClient, token: str, app_id: str) -> dict[str, Any]:
    return wait_for(  # type: ignore[no-any-return]
        lambda: (
            (a := _app(api, token, app_id))["containers"]
            and a["containers"][-1].get("pid")
            and "up" in _logs(api, token, app_id)
            and a
        ),
        60,
        f"{app_id} to run",
    )


def test_an_app_starts_through_its_nodes_agent_on_the_devices_dlapp_chose(
    server: tuple[TestClient, str, Path], tmp_path: Path
) -> None:
    import ray

    api, token, _ = server
    script = 'echo "cuda=$CUDA_VISIBLE_DEVICES"; echo up; sleep 2\n'
    first = submit(api, tmp_path, token, script=script, resources=GPU).json()["id"]
    second = submit(api, tmp_path, token, script=script, resources=GPU).json()["id"]
    running = [_running(api, token, a) for a in (first, second)]
    node_id = running[0]["containers"][0]["node_id"]
    agent = existing_agent(node_id, "dlapp")
    assert agent is not None, f"no {agent_name(node_id)}"
    names = ray.get(agent.names.remote(), timeout=30)
    assert {f"dlapp:{first}:0", f"dlapp:{second}:0"} <= set(names)
    # nothing made for the apps themselves: no placement group, no supervisor actor
    groups = [g["name"] for g in ray.util.placement_group_table().values()]
    assert not [g for g in groups if g.startswith("dlapp:")]
    for app_id in (first, second):
        with pytest.raises(ValueError):
            ray.get_actor(f"dlapp:{app_id}:0", namespace="dlapp")
    # each sees exactly the device the scheduler gave it, and the two are distinct
    seen = []
    for app_id in (first, second):
        done = wait_finished(api, app_id, token, timeout=60)
        assert done["final_status"] == "SUCCEEDED", done
        (gpu,) = done["containers"][0]["gpu_ids"]
        assert f"cuda={gpu}\n" in _logs(api, token, app_id)
        seen.append(gpu)
    assert sorted(seen) == ["0", "1"]
    # the agent lets go of a container once its end is taken
    wait_for(
        lambda: (
            not {f"dlapp:{first}:0", f"dlapp:{second}:0"}
            & set(ray.get(agent.names.remote(), timeout=30))
        ),
        30,
        "the agent to drop the ended containers",
    )


@pytest.mark.parametrize("restart", [True, False], ids=["restarted-by-ray", "killed-for-good"])
def test_a_lost_agent_takes_its_containers_down_and_their_apps_run_again(
    server: tuple[TestClient, str, Path], tmp_path: Path, restart: bool
) -> None:
    import ray

    api, token, _ = server
    app_id = submit(api, tmp_path, token, script=RERUN, resources=GPU).json()["id"]
    first = _running(api, token, app_id)
    guard = first["containers"][0]["pid"]
    agent = existing_agent(first["containers"][0]["node_id"], "dlapp")
    assert agent is not None
    agent_pid = int(Path(f"/proc/{guard}/stat").read_text().rsplit(")", 1)[1].split()[1])
    if restart:  # the agent's process dies: Ray starts it again on its node
        os.kill(agent_pid, signal.SIGKILL)
    else:  # gone for good: the next start on the node makes a new one
        ray.kill(agent, no_restart=True)
    done = wait_finished(api, app_id, token, timeout=120)
    assert done["final_status"] == "SUCCEEDED", done
    assert "rerun-ok" in _logs(api, token, app_id)
    requeued = [
        e["reason"]
        for e in _events(api, token, app_id)
        if e["to_state"] == "ACCEPTED" and e["from_state"] is not None  # not the submission
    ]
    # requeued, by the agent's loss only; a start sent in the moment before Ray sees the agent
    # restarting is lost with it too, and requeued once more (attempt 3)
    assert done["attempt"] in (2, 3) and len(requeued) == done["attempt"] - 1, (done, requeued)
    assert all("lost with its node's agent" in r for r in requeued), requeued
    # the first attempt's processes went with the agent: none of the app's is left
    wait_for(lambda: processes_with_env("DLAPP_APP_ID", app_id) == [], 20, "no processes left")
    wait_for(lambda: not _alive(guard), 20, f"the first attempt's guard {guard} gone")
    # a new agent process runs the node's containers now
    again = existing_agent(first["containers"][0]["node_id"], "dlapp")
    assert again is not None
    assert ray.get(again.hello.remote(), timeout=30)
    assert (
        assert_running_matches(
            lambda: api.get("/api/v1/apps", headers=bearer(token)).json()["apps"]
        )
        == 0
    )


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, ended and waiting for its new parent to reap it, does
    not: an agent killed with SIGKILL leaves its guards to whoever adopts them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_an_agent_that_never_answers_sends_the_app_back_then_fails_it(
    tmp_path: Path,
) -> None:
    """An agent that does not answer (here: one whose calls never end) is a container not up
    by ``start_timeout_s``: the app goes back to its queue once, then ends FAILED."""
    with ray_head(gpus=1, cpus=2) as cluster:
        settings = _settings(tmp_path, cluster.address, start_timeout_s=4.0)
        for api, token, _ in _serve(settings, settings.home):
            executor = api.app.state.ctx.executor  # type: ignore[attr-defined]
            node_id = executor.nodes()[0].node_id
            # stands for an agent that is not answering: a named actor whose calls never end
            executor._agents[node_id] = (
                _stuck_agent().options(name="stuck", namespace="dlapp", num_cpus=0).remote()
            )
            app_id = submit(api, tmp_path, token, script="echo ran\n", resources=GPU).json()["id"]
            done = wait_finished(api, app_id, token, timeout=60)
            reasons = [e["reason"] for e in _events(api, token, app_id)]
            assert done["final_status"] == "FAILED", reasons
            assert "agent did not answer" in done["diagnostics"], done
            assert any(r.startswith("requeued") for r in reasons), reasons


def _stuck_agent() -> Any:
    """An actor class with the agent's methods, none of which ever answers (defined in a
    function, so that Ray's workers get it by value: they cannot import this test module)."""
    import asyncio

    import ray

    class StuckAgent:
        async def _hang(self, *_args: Any) -> None:
            await asyncio.sleep(3600)

        start = start_here = wait_once = plan_of = _hang

        async def forget(self, *_args: Any) -> None:
            return None

        stop = forget

    return ray.remote(StuckAgent)


def test_an_agent_refuses_a_start_a_server_gave_up_on(tmp_path: Path) -> None:
    """The start of an attempt that a restarted server gave up on (``forget(name, attempt)``),
    still on its way from the server that died, is refused: the app was requeued and must not
    run twice. ``find`` answers at once for a container the agent does not run."""
    from dlapp.contract import ContainerPlan
    from dlapp.executor.agent import NodeAgent

    agent = NodeAgent()
    plan = ContainerPlan(
        app_id="application_1_0001",
        attempt=1,
        index=0,
        num_containers=1,
        spec={},
        workspace_tarball=str(tmp_path / "none.tar.gz"),
        artifact_root=str(tmp_path / "artifacts"),
        work_root=str(tmp_path / "work"),
    )
    name = plan.actor_name

    async def scenario() -> tuple[object, object, list[str]]:
        before = await asyncio.wait_for(agent.find(name), 1.0)  # at once, not a 30 s wait
        await agent.forget(name, 1)
        await agent.start(plan)  # attempt 1's start, arriving late
        return before, await agent.find(name), await agent.names()

    before, after, names = asyncio.run(scenario())
    assert before is None and after is None and names == []
