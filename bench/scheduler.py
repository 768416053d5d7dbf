"""Benchmark: one scheduling cycle, ``decide()``, on a large snapshot, beside a FIFO first-fit pass.

    .venv/bin/python bench/scheduler.py [--pending 10000] [--queues 100] [--nodes 1000] [--runs 15]

The snapshot: NODES nodes x 8 GPUs (64 CPUs, 512 GiB), half of their GPUs held by running apps,
and PENDING apps (1-8 GPUs, some gangs of 2-4) spread over QUEUES leaf queues (10 parents) and
200 users. The baseline, measured in the same run on the same snapshot, is the plainest policy:
apps in submission order, each container on the first node it fits (no queues, no fairness).
Reports cycle time p50 / p99 and admissions per second for both, and the ratio.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from dlapp.scheduler import (
    Admit,
    AppHead,
    NodeView,
    Resources,
    RunningApp,
    Snapshot,
    decide,
    parse_tree,
)

NODE = Resources(cpus=64, memory_mb=512 * 1024, gpus=8)


def build(pending: int, queues: int, nodes: int, seed: int = 7) -> tuple[list[AppHead], Snapshot]:
    rng = random.Random(seed)
    parents = max(1, queues // 10)
    per_parent = max(1, queues // parents)
    tree_spec = {
        f"p{p}": {
            "guaranteed": f"{100 / parents:.4f}%",
            "children": {
                f"q{p}_{c}": {"guaranteed": f"{100 / per_parent:.4f}%"} for c in range(per_parent)
            },
        }
        for p in range(parents)
    }
    tree = parse_tree({"queues": tree_spec, "preemption": {"enabled": True}})
    leaves = [q.path for q in tree.leaves]
    views, running = [], []
    for i in range(nodes):
        used = Resources(16, 64 * 1024, 4)
        views.append(NodeView(f"node{i:04d}", f"10.0.{i // 250}.{i % 250}", NODE, NODE - used))
        running.append(
            RunningApp(
                f"run{i}",
                f"u{rng.randrange(200)}",
                rng.choice(leaves),
                i,
                used,
                (f"node{i:04d}",),
                started_at=float(i),
            )
        )
    heads = []
    for i in range(pending):
        gpus = rng.choice([1, 1, 1, 1, 2, 2, 4, 8])
        heads.append(
            AppHead(
                app_id=f"app{i}",
                user=f"u{rng.randrange(200)}",
                queue=rng.choice(leaves),
                seq=nodes + i,
                request=Resources(gpus * 4, gpus * 16 * 1024, gpus),
                num_containers=rng.choice([1, 1, 1, 1, 1, 2, 4]),
                priority=rng.choice([0, 0, 0, 1]),
            )
        )
    return heads, Snapshot(tuple(views), running=tuple(running), queues=tree, now=0.0)


def fifo_first_fit(heads: list[AppHead], snapshot: Snapshot) -> int:
    """The baseline: submission order, first node that fits each container, no queues."""
    free = {n.node_id: n.free for n in snapshot.nodes}
    order = [n.node_id for n in snapshot.nodes]
    admitted = 0
    for h in sorted(heads, key=lambda h: h.seq):
        taken: list[str] = []
        for _ in range(h.num_containers):
            node = next((n for n in order if h.request.fits_in(free[n])), None)
            if node is None:
                break
            free[node] = free[node] - h.request
            taken.append(node)
        if len(taken) == h.num_containers:
            admitted += 1
        else:
            for node in taken:
                free[node] = free[node] + h.request
    return admitted


def measure(fn, runs: int) -> tuple[list[float], int]:  # type: ignore[no-untyped-def]
    times, result = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pending", type=int, default=10_000)
    ap.add_argument("--queues", type=int, default=100)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    t0 = time.perf_counter()
    heads, snapshot = build(args.pending, args.queues, args.nodes)
    print(
        f"snapshot: {args.nodes} nodes x 8 GPUs, {len(snapshot.running)} running apps, "
        f"{args.pending} pending apps, {len(snapshot.queues.leaves)} leaf queues "
        f"(built in {time.perf_counter() - t0:.1f}s)"
    )
    dlapp_times, decisions = measure(lambda: decide(heads, snapshot), args.runs)
    dlapp_admitted = sum(1 for d in decisions if isinstance(d, Admit))  # type: ignore[attr-defined]
    fifo_times, fifo_admitted = measure(lambda: fifo_first_fit(heads, snapshot), args.runs)
    rows = [
        ("dlapp decide() (queues, DRF, gang, best fit)", dlapp_times, dlapp_admitted),
        ("baseline: FIFO first fit, no queues", fifo_times, fifo_admitted),
    ]
    print(f"{'policy':48} {'p50 ms':>9} {'p99 ms':>9} {'admitted':>9} {'admissions/s':>13}")
    for name, times, admitted in rows:
        p50 = pct(times, 50)
        p99 = pct(times, 99)
        print(f"{name:48} {p50 * 1e3:9.1f} {p99 * 1e3:9.1f} {admitted:9d} {admitted / p50:13.0f}")
    ratio = pct(dlapp_times, 50) / pct(fifo_times, 50)
    print(
        f"ratio dlapp / baseline cycle time (p50): {ratio:.2f}x  (aim: under 100 ms and within 3x)"
    )


if __name__ == "__main__":
    main()
