"""Benchmark: the server's scheduling cycle at scale, against the pure policy inside it.

    .venv/bin/python bench/server_cycle.py [--nodes 500] [--running 4000] [--waiting 9000]
                                           [--new 20] [--cycles 9] [--json]

One real store (SQLite in WAL mode, as ``dlapp up`` makes it) holding RUNNING apps (1-2 GPUs
each, on NODES nodes x 8 GPUs, all held) and WAITING apps that ask for GPUs (none free), and
the server's real ``Scheduler`` over an executor that starts nothing and holds every running
app (the cluster is full: each cycle admits nothing and writes each new app's reason). Between
two timed cycles NEW apps are submitted, as while submissions stream in. Timed, quiet and then
beside one busy Python thread (as the API's threads are under load):

- **cycle**: ``Scheduler.cycle`` (reconcile, read the waiting apps and the running ones, build
  the heads and the snapshot, ``decide``, write the reasons, commit);
- **decide**, the baseline, measured in the same run: ``decide`` alone on the same heads and
  snapshot (what the policy costs; the rest is the server's).

Prints p50 of each and the ratio cycle / decide.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from sqlalchemy import insert
from stats import busy_thread, percentile

from dlapp.config import ContainerPolicy, ServerSettings
from dlapp.contract import ContainerPlan
from dlapp.executor import Executor, NodeInfo, Report
from dlapp.scheduler import Resources, decide
from dlapp.server.context import Context
from dlapp.server.queue_config import QueueConfig
from dlapp.server.scheduling.loop import Scheduler
from dlapp.spec import AppSpec
from dlapp.store import repo
from dlapp.store.db import make_engine, migrate, session_factory
from dlapp.store.models import App, Container

NODE = Resources(cpus=64, memory_mb=512 * 1024, gpus=8)
T0 = 1_800_000_000.0


class FullCluster(Executor):
    """NODES nodes; holds every app (a running app is never requeued), starts nothing."""

    def __init__(self, nodes: int) -> None:
        super().__init__()
        self._infos = [
            NodeInfo(f"node{i:04d}", f"n{i}", NODE, gpu_ids=tuple(str(g) for g in range(8)))
            for i in range(nodes)
        ]

    def _nodes(self) -> list[NodeInfo]:
        return self._infos

    def _start(
        self, plans: Sequence[ContainerPlan], node_ids: Sequence[str], request: Resources
    ) -> None:
        return None

    def _stop(self, app_id: str, grace: float, notice: dict[str, Any] | None) -> None:
        return None

    def _poll(self) -> list[Report]:
        return []

    def _read_log(
        self, app_id: str, index: int, stream: str, offset: int, length: int
    ) -> bytes | None:
        return None

    def _holds(self, app_id: str) -> bool:
        return True

    def _remove_orphans(self, policy: ContainerPolicy, running: set[str]) -> None:
        return None


def spec_json(gpus: int) -> str:
    spec = AppSpec.from_dict(
        {"name": "bench", "entry": {"script": "run.sh"}, "resources": {"gpus": gpus}}
    )
    return json.dumps(spec.to_dict())


def app_row(seq: int, gpus: int, state: str, specs: dict[int, str]) -> dict[str, Any]:
    return {
        "id": f"application_1800000000000_{seq:05d}",
        "seq": seq,
        "user": f"user{seq % 50}",
        "name": "bench",
        "queue": "root.default",
        "state": state,
        "final_status": "UNDEFINED",
        "diagnostics": "",
        "pending_reason": "",
        "spec": specs[gpus],
        "num_containers": 1,
        "cpus": 1.0,
        "memory_mb": 1024,
        "gpus": float(gpus),
        "workspace": "/nowhere.tar.gz",
        "kill_requested": None,
        "attempt": 1 if state == "RUNNING" else 0,
        "submit_time": T0 + seq,
        "start_time": T0 + seq if state == "RUNNING" else None,
    }


def fill(engine: Any, nodes: int, running: int, waiting: int) -> tuple[int, int]:
    """The store: up to ``running`` apps on the nodes' GPUs (as many as fit), ``waiting``
    more; returns the next sequence number and how many run."""
    rng = random.Random(7)
    specs = {g: spec_json(g) for g in (1, 2)}
    apps, containers = [], []
    free = {f"node{i:04d}": list(range(8)) for i in range(nodes)}
    seq = 1
    for n in range(running):
        node = f"node{n % nodes:04d}"
        gpus = min(len(free[node]), rng.choice([1, 2]))
        if gpus == 0:
            continue
        ids = [free[node].pop() for _ in range(gpus)]
        row = app_row(seq, gpus, "RUNNING", specs)
        apps.append(row)
        containers.append(
            {
                "app_id": row["id"],
                "attempt": 1,
                "index": 0,
                "state": "RUNNING",
                "node_id": node,
                "node_name": node,
                "gpu_ids": ",".join(map(str, ids)),
                "start_time": row["start_time"],
            }
        )
        seq += 1
    for _ in range(waiting):
        apps.append(app_row(seq, rng.choice([1, 2]), "ACCEPTED", specs))
        seq += 1
    with engine.begin() as conn:
        conn.execute(insert(App), apps)
        conn.execute(insert(Container), containers)
    return seq, len(containers)


def measure(nodes: int, running: int, waiting: int, new: int, cycles: int) -> dict[str, Any]:
    report: dict[str, Any] = {
        "nodes": nodes,
        "running": running,
        "waiting": waiting,
        "new_per_cycle": new,
        "cycles": cycles,
    }
    with tempfile.TemporaryDirectory() as d:
        settings = ServerSettings(home=Path(d) / "home")
        engine = make_engine(settings.database_url)
        migrate(engine)
        seq, report["running"] = fill(engine, nodes, running, waiting)
        specs = {g: spec_json(g) for g in (1, 2)}
        ctx = Context(
            settings=settings,
            sessions=session_factory(engine),
            executor=FullCluster(nodes),
            queues=QueueConfig(settings.queues_path),
            clock=lambda: T0 + 10_000,
        )
        scheduler = Scheduler(ctx)
        scheduler.step()  # the lease, recovery (every app held), a first whole cycle
        for busy in (False, True):
            took, policy = [], []
            with busy_thread(busy):
                for _ in range(cycles):
                    with engine.begin() as conn:
                        rows = [app_row(s, 1, "ACCEPTED", specs) for s in range(seq, seq + new)]
                        conn.execute(insert(App), rows)
                    seq += new
                    t = time.perf_counter()
                    scheduler.cycle()
                    took.append(time.perf_counter() - t)
                    with ctx.sessions() as session:  # the same inputs, decided alone
                        pending = repo.waiting_apps(session)
                        heads = scheduler.admission.heads(session, pending)
                        snapshot = scheduler.admission.snapshot(session)
                    t = time.perf_counter()
                    decide(heads, snapshot)
                    policy.append(time.perf_counter() - t)
            c50, d50 = percentile(took, 50), percentile(policy, 50)
            report["busy" if busy else "quiet"] = {
                "cycle_p50_ms": round(c50 * 1000, 1),
                "decide_p50_ms": round(d50 * 1000, 1),
                "ratio": round(c50 / d50, 2),
            }
        engine.dispose()
    return report


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=500)
    p.add_argument("--running", type=int, default=4000)
    p.add_argument("--waiting", type=int, default=9000)
    p.add_argument("--new", type=int, default=20, help="apps submitted between two cycles")
    p.add_argument("--cycles", type=int, default=9)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    report = measure(args.nodes, args.running, args.waiting, args.new, args.cycles)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{report['nodes']} nodes x 8 GPUs, {report['running']:,} running, "
        f"{report['waiting']:,} waiting, {report['new_per_cycle']} new a cycle, "
        f"p50 of {report['cycles']} cycles:"
    )
    print("| machine | server cycle | decide() alone (baseline) | cycle / decide |")
    print("|---|---:|---:|---:|")
    for label in ("quiet", "busy"):
        r = report[label]
        print(f"| {label} | {r['cycle_p50_ms']} ms | {r['decide_p50_ms']} ms | {r['ratio']}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
