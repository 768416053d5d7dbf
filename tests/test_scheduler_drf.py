"""Dominant resource fairness over CPU, memory and GPU: a CPU-heavy and a GPU-heavy user share
one cluster, and their dominant shares (each user's largest fraction of any resource), not their
GPU counts nor their CPU counts, decide who goes next. First the pure policy, then a real
server whose store, snapshot and executor give the policy those shares."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from fastapi.testclient import TestClient

from dlapp.config import ServerSettings
from dlapp.scheduler import Admit, RunningApp, decide, parse_tree
from dlapp.scheduler import Resources as R

from builders import make_app, make_node, make_snapshot
from conftest import wait_for
from inprocess import add_user, bearer, serve, submit

ONE_QUEUE = parse_tree({"queues": {"q": {"guaranteed": "100%"}}})
# the DRF paper's example (Ghodsi et al., NSDI '11) with GPUs for memory: on 9 CPUs and 9 GPUs
# a GPU-heavy task <1 CPU, 2 GPUs> (dominant: GPU, 2/9) and a CPU-heavy task <3 CPUs, 0 GPUs>
# (dominant: CPU, 1/3). Equal dominant shares: 3 GPU-heavy tasks and 2 CPU-heavy ones, 2/3 each.
GPU_HEAVY = {"cpus": 1, "memory": "1G", "gpus": 2}
CPU_HEAVY = {"cpus": 3, "memory": "1G", "gpus": 0}
SLEEP = "sleep 300\n"


def _heads(user: str, n: int, cpus: float, gpus: int, first_seq: int) -> list:  # type: ignore[type-arg]
    return [
        make_app(f"{user}{i}").user(user).queue("q").cpus(cpus).memory("1G").gpus(gpus)
        .seq(first_seq + i).build()
        for i in range(n)
    ]  # fmt: skip


def _admitted_by_user(decisions: list) -> Counter[str]:  # type: ignore[type-arg]
    return Counter(d.app_id.rstrip("0123456789") for d in decisions if isinstance(d, Admit))


def test_an_empty_cluster_fills_to_equal_dominant_shares() -> None:
    snap = make_snapshot(make_node("n1").cpus(9).memory("64G").gpus(9), queues=ONE_QUEUE)
    for cpu_first in (True, False):  # whoever came first, the outcome is the same
        cpu = _heads("cpu", 5, 3, 0, 1 if cpu_first else 100)
        gpu = _heads("gpu", 5, 1, 2, 100 if cpu_first else 1)
        assert _admitted_by_user(decide(cpu + gpu, snap)) == {"gpu": 3, "cpu": 2}


def _running(app_id: str, user: str, cpus: float, gpus: int) -> RunningApp:
    return RunningApp(
        app_id=app_id, queue="root.q", user=user, seq=0, request=R(cpus, 1024, gpus), nodes=("n1",)
    )


def _next_user(held_cpu: tuple[float, int], held_gpu: tuple[float, int]) -> str:
    """Who of two waiting apps (the CPU-heavy user's is older) gets what is left of 16 CPUs
    and 4 GPUs, each app asking for all of it, with the users holding (CPUs, GPUs) as given."""
    cpus, gpus = held_cpu[0] + held_gpu[0], held_cpu[1] + held_gpu[1]
    node = make_node("n1").cpus(16).memory("64G").gpus(4).used(cpus=cpus, gpus=gpus)
    running = (_running("c", "cpu", *held_cpu), _running("g", "gpu", *held_gpu))
    snap = make_snapshot(node, queues=ONE_QUEUE, running=running)
    older = make_app("cpu-next").user("cpu").queue("q").cpus(16 - cpus).gpus(4 - gpus).seq(1)
    newer = make_app("gpu-next").user("gpu").queue("q").cpus(16 - cpus).gpus(4 - gpus).seq(2)
    decisions = decide([older.build(), newer.build()], snap)
    (admitted,) = [d.app_id for d in decisions if isinstance(d, Admit)]
    return admitted.split("-")[0]


def test_the_smaller_dominant_share_goes_first_not_the_fewer_gpus_or_cpus() -> None:
    # cpu holds 12/16 CPUs (75%); gpu holds 2/4 GPUs (50%) and 2 CPUs: gpu is further behind,
    # although it holds more GPUs
    assert _next_user(held_cpu=(12, 0), held_gpu=(2, 2)) == "gpu"
    # cpu holds 6/16 CPUs (37.5%); gpu holds 2/4 GPUs (50%) and 1 CPU: cpu is further behind,
    # although it holds more CPUs
    assert _next_user(held_cpu=(6, 0), held_gpu=(1, 2)) == "cpu"


def test_a_server_shares_its_cluster_by_dominant_share(tmp_path: Path) -> None:
    """Five apps from each user wait behind a blocker that holds the whole cluster; when it is
    killed, the server's store and snapshot count what each user holds as apps start, and the
    cluster fills to 3 GPU-heavy apps and 2 CPU-heavy ones."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "queues.yaml").write_text("queues:\n  q: {guaranteed: 100%}\n")
    settings = ServerSettings(home=home, schedule_interval_s=0.05)
    with serve(settings, R(9, 64 * 1024, 9)) as api:
        tokens = {user: add_user(api, home, user) for user in ("blocker", "cpu", "gpu")}
        everything = {"cpus": 9, "memory": "1G", "gpus": 9}
        resp = submit(
            api, tmp_path, tokens["blocker"], "sleep 300\n", queue="q", resources=everything
        )
        blocker = resp.json()["id"]
        wait_for(lambda: _running_users(api, tokens) == {"blocker": 1}, 30, "the blocker to run")
        for user, resources in (("cpu", CPU_HEAVY), ("gpu", GPU_HEAVY)):
            for _ in range(5):
                resp = submit(
                    api, tmp_path, tokens[user], "sleep 300\n", queue="q", resources=resources
                )
                assert resp.status_code == 201, resp.text
        resp = api.post(f"/api/v1/apps/{blocker}/kill", headers=bearer(tokens["blocker"]))
        assert resp.status_code == 200, resp.text
        wait_for(lambda: sum(_running_users(api, tokens).values()) == 5, 30, "five apps to run")
        assert _running_users(api, tokens) == {"gpu": 3, "cpu": 2}
        for user in ("cpu", "gpu"):  # the rest wait; end the ones running
            for app in api.get("/api/v1/apps", headers=bearer(tokens[user])).json()["apps"]:
                api.post(f"/api/v1/apps/{app['id']}/kill", headers=bearer(tokens[user]))


def _running_users(api: TestClient, tokens: dict[str, str]) -> Counter[str]:
    seen: Counter[str] = Counter()
    for token in tokens.values():
        resp = api.get("/api/v1/apps", headers=bearer(token), params={"state": "RUNNING"})
        seen.update(a["user"] for a in resp.json()["apps"])
    return seen
