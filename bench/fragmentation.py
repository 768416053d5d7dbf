"""Benchmark: fragmentation-aware placement (FGD) against best fit, first fit and dlapp's
previous placement, on GPU-sharing workloads drawn from a published production trace.

    .venv/bin/python bench/fragmentation.py [--scale 0.125] [--seeds 5] [--json out.json]

The workload: tasks drawn from the distributions of Alibaba's 2023 GPU trace
(``cluster-trace-gpu-v2023``, ``openb_pod_list_default.csv``, the trace of Weng et al.,
"Beware of Fragmentation", USENIX ATC '23), summarised in the tables below: what share of tasks
ask for no GPU, a fraction of one, or 1, 2, 4, 8 GPUs; the fractions asked (in thousandths);
CPUs and memory for each kind. The cluster: the same trace's heterogeneous node list
(``openb_node_list_gpu_node.csv``: 1,213 nodes, 6,212 GPUs of 6 models), scaled down by
``--scale`` keeping its mix.

1. *Fill* (the FGD paper's experiment): tasks arrive one after another and never leave (the
   arrivals are inflated until the cluster saturates); each is placed by ``decide`` or refused.
   For each placement, on the same tasks: the share of GPUs left unallocated when the first
   task cannot be placed, and the GPU share allocated once the tasks that arrived ask for 100%
   of the cluster's GPUs (offered load 100%). The placements: ``fgd`` (dlapp's default now),
   ``best-fit`` (least CPU and GPU left, weighed alike, as the FGD paper's baseline),
   ``first-fit``, ``pack`` (dlapp's placement before GPU sharing: fewest free GPUs, then
   fewest free CPUs), and ``pack, rounded`` (dlapp before GPU sharing altogether: fractions
   rounded up to whole GPUs). Aim: fgd leaves at most 0.6x best fit's unallocated share.
2. *Replay*: a trace with arrival times and the trace's durations, through ``dlapp.sim``, with
   fractions shared (fgd) and rounded up: the GPU-hours each reserves, and job completion.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from dlapp.scheduler import (
    Admit,
    AppHead,
    NodeView,
    Resources,
    Snapshot,
    TaskShape,
    decide,
    parse_tree,
    workload,
)
from dlapp.scheduler.gpus import take_devices
from dlapp.sim import ClusterSpec, SimOptions, build_report, simulate
from dlapp.sim.trace import Trace, TraceJob

# -- the published distributions (openb_pod_list_default.csv, 8,152 tasks) ---------------------

# kind of GPU request -> tasks: none, a fraction of one GPU, whole GPUs
GPU_KINDS: list[tuple[float | str, int]] = [
    (0, 1088),
    ("fraction", 3078),
    (1, 3911),
    (2, 16),
    (4, 15),
    (8, 44),
]
# gpu_milli of the fractional tasks -> tasks (mean 0.56 of a GPU)
FRACTIONS: list[tuple[int, int]] = [
    (50, 7), (110, 24), (140, 1), (160, 74), (220, 62), (230, 140), (270, 4), (290, 1),
    (320, 328), (330, 7), (350, 6), (370, 47), (440, 2), (460, 128), (470, 750), (480, 19),
    (550, 72), (590, 75), (650, 253), (810, 1078),
]  # fmt: skip
# per kind: (CPUs, memory GiB) -> tasks, the commonest pairs (71-100% of each kind's tasks)
SHAPES: dict[float | str, list[tuple[tuple[int, int], int]]] = {
    0: [((12, 56), 364), ((32, 48), 284), ((8, 30), 163), ((15, 50), 120), ((16, 50), 95),
        ((11, 56), 11), ((8, 15), 11), ((16, 31), 8)],
    "fraction": [((3, 5), 1122), ((12, 46), 625), ((8, 30), 486), ((4, 22), 189),
                 ((4, 15), 182), ((4, 10), 152), ((4, 30), 136), ((6, 6), 51)],
    1: [((11, 48), 857), ((11, 47), 534), ((3, 5), 470), ((19, 63), 255), ((10, 41), 195),
        ((12, 46), 161), ((12, 24), 158), ((16, 57), 158)],
    2: [((16, 65), 7), ((6, 64), 3), ((30, 157), 3), ((17, 42), 2), ((14, 59), 1)],
    4: [((32, 129), 9), ((32, 128), 3), ((60, 313), 3)],
    8: [((88, 320), 18), ((64, 257), 18), ((120, 720), 3), ((64, 256), 3), ((120, 625), 2)],
}  # fmt: skip
# task durations (seconds): quantiles 10, 25, 50, 75, 90, 95, 99 %
DURATION_QUANTILES = [(0.10, 60), (0.25, 145), (0.50, 485), (0.75, 1922), (0.90, 6518),
                      (0.95, 16257), (0.99, 95767)]  # fmt: skip
# the node list (openb_node_list_gpu_node.csv): (model, GPUs, CPUs, memory MiB) -> nodes
NODES: list[tuple[tuple[str, int, int, int], int]] = [
    (("G2", 8, 96, 393216), 549), (("T4", 2, 104, 524288), 387), (("P100", 2, 16, 122880), 107),
    (("G3", 8, 128, 786432), 39), (("V100M16", 4, 32, 131072), 28),
    (("P100", 2, 64, 262144), 22), (("V100M32", 8, 96, 786432), 21),
    (("V100M16", 1, 8, 32768), 19), (("T4", 4, 96, 393216), 17),
    (("V100M32", 4, 48, 376832), 9), (("V100M16", 8, 64, 262144), 7),
    (("P100", 1, 8, 61440), 3), (("P100", 2, 8, 61440), 2), (("A10", 1, 128, 1048576), 2),
    (("V100M16", 8, 82, 344064), 1),
]  # fmt: skip
PLACEMENTS = ("fgd", "best-fit", "first-fit", "pack")
ROUNDED = "pack, rounded"


@dataclass(frozen=True)
class Task:
    cpus: float
    memory_mb: int
    gpus: float  # a fraction of one GPU, or whole GPUs (one container)

    def rounded(self) -> Task:
        return Task(self.cpus, self.memory_mb, math.ceil(self.gpus))


def _pick(rng: random.Random, table: list[tuple[Any, int]]) -> Any:
    return rng.choices([v for v, _ in table], weights=[w for _, w in table])[0]


def draw_task(rng: random.Random) -> Task:
    kind = _pick(rng, GPU_KINDS)
    cpus, memory_gib = _pick(rng, SHAPES[kind])
    gpus = _pick(rng, FRACTIONS) / 1000 if kind == "fraction" else float(kind)
    return Task(cpus, memory_gib * 1024, gpus)


def draw_duration(rng: random.Random) -> float:
    """From the quantiles, log-linearly between them (10 s below the first, 4 days above)."""
    points = [(0.0, 10.0), *DURATION_QUANTILES, (1.0, 4 * 86400.0)]
    u = rng.random()
    i = max(1, bisect.bisect_left([q for q, _ in points], u))
    (q0, d0), (q1, d1) = points[i - 1], points[i]
    return math.exp(math.log(d0) + (math.log(d1) - math.log(d0)) * (u - q0) / (q1 - q0))


def cluster_groups(scale: float) -> list[dict[str, Any]]:
    """The node list scaled by ``scale`` (each kind of node at least once)."""
    groups = []
    for i, ((model, gpus, cpus, memory), count) in enumerate(NODES):
        groups.append(
            {
                "count": max(1, round(count * scale)),
                "gpus": gpus,
                "cpus": cpus,
                "memory": f"{memory}Mi",
                "model": model,
                "name": f"{model.lower()}-{i}-",
            }
        )
    return groups


# -- 1. fill ------------------------------------------------------------------------------------


@dataclass
class Node:
    view: NodeView
    devices: list[float]


@dataclass
class Fill:
    placement: str
    unallocated_at_first_refusal: float  # share of GPUs
    allocated_at_full_load: float  # share of GPUs, offered load 100%
    placed: int
    refused: int
    decide_ms: float


def fill(tasks: list[Task], cluster: ClusterSpec, placement: str) -> Fill:
    """Place ``tasks`` one by one, never freeing anything, until they ask for the cluster's
    GPUs; what was left unallocated at the first refusal, what is allocated at the end."""
    rounded = placement == ROUNDED
    policy = "pack" if rounded else placement
    asked = [t.rounded() if rounded else t for t in tasks]
    work = workload(TaskShape(t.cpus, t.memory_mb, t.gpus) for t in asked)
    nodes = {n.node_id: Node(n, list(n.devices())) for n in cluster.nodes()}
    total = cluster.total.gpus
    free = float(total)
    offered = 0.0
    first_refusal: float | None = None
    placed = refused = 0
    spent = 0.0
    for i, (task, original) in enumerate(zip(asked, tasks, strict=True)):
        if offered >= total:
            break
        offered += original.gpus  # the load is what the tasks ask for, fractions as asked
        head = AppHead(f"t{i}", "u", "default", i, Resources(task.cpus, task.memory_mb, task.gpus))
        views = tuple(n.view for n in nodes.values())
        snapshot = Snapshot(views, placement=policy, workload=work)
        t0 = time.perf_counter()
        [decision] = decide([head], snapshot)
        spent += time.perf_counter() - t0
        if not isinstance(decision, Admit):
            refused += 1
            if first_refusal is None:
                first_refusal = free / total
            continue
        placed += 1
        node = nodes[decision.nodes[0]]
        take_devices(node.devices, decision.devices[0], task.gpus)
        node.view = NodeView(
            node.view.node_id,
            node.view.name,
            node.view.total,
            node.view.free - head.request,
            model=node.view.model,
            gpu_free=tuple(node.devices),
        )
        free -= task.gpus
    calls = placed + refused
    return Fill(
        placement,
        first_refusal if first_refusal is not None else free / total,
        (total - free) / total,
        placed,
        refused,
        spent / calls * 1000 if calls else 0.0,
    )


# -- 2. replay ----------------------------------------------------------------------------------


MAX_REPLAY_S = 6 * 3600.0  # replayed durations are cut here: arrivals span many of them


def replay_trace(rng: random.Random, cluster: ClusterSpec, jobs: int, load: float) -> Trace:
    """``jobs`` tasks arriving as a Poisson process whose GPU demand is ``load`` of the
    cluster's GPUs (fractions as asked); durations from the trace's, cut at 6 hours so that
    the arrivals span many of them (a steady state, not the tail of a few long jobs)."""
    drawn = [(draw_task(rng), min(draw_duration(rng), MAX_REPLAY_S)) for _ in range(jobs)]
    gpu_s = sum(t.gpus * d for t, d in drawn)
    rate = load * cluster.total.gpus * len(drawn) / gpu_s  # arrivals per second
    now, out = 0.0, []
    for row, (task, duration) in enumerate(drawn, 1):
        out.append(TraceJob(row, now, duration, task.gpus, task.cpus, task.memory_mb))
        now += rng.expovariate(rate)
    return Trace(tuple(out), "generated from cluster-trace-gpu-v2023 distributions")


def replay(trace: Trace, cluster: ClusterSpec, rounded: bool) -> dict[str, Any]:
    tree = parse_tree({"queues": {"default": {"guaranteed": "100%"}}})
    options = SimOptions(cycle_s=10, round_fractions=rounded, placement="fgd")
    report = build_report(simulate(trace, cluster, tree, options))
    return {
        "reserved_gpu_h": round(report["allocation"]["work_share"] * cluster.total.gpus
                                * report["span_h"], 1),
        "asked_gpu_h": report["gpu_hours"]["asked"],
        "rounded_up_gpu_h": report["gpu_hours"]["rounded_up"],
        "jct_mean_h": round((report["overall"]["jct_s"]["mean"] or 0) / 3600, 2),
        "queueing_mean_h": round((report["overall"]["queueing_s"]["mean"] or 0) / 3600, 2),
        "span_h": report["span_h"],
        "allocation_mean": report["allocation"]["mean_share"],
        "fragmented_mean": report["fragmentation"]["fragmented_share_mean"],
        "decide_mean_ms": report["decide"]["mean_ms"],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.125, help="share of the node list")
    parser.add_argument("--seeds", type=int, default=5, help="fill runs, each new tasks")
    parser.add_argument("--replay-jobs", type=int, default=8000, help="0: no replay")
    parser.add_argument("--replay-load", type=float, default=0.9)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    cluster = ClusterSpec.from_dict(cluster_groups(args.scale), "openb node list")
    total = cluster.total.gpus
    print(
        f"cluster: {cluster.node_count} nodes, {total} GPUs of "
        f"{len(cluster.gpus_by_model())} models ({args.scale:g} of cluster-trace-gpu-v2023's)"
    )
    runs: dict[str, list[Fill]] = {p: [] for p in (*PLACEMENTS, ROUNDED)}
    for seed in range(args.seeds):
        rng = random.Random(seed)
        tasks = [draw_task(rng) for _ in range(int(total * 3))]
        for placement in runs:
            runs[placement].append(fill(tasks, cluster, placement))
    print(f"\n1. fill, {args.seeds} runs (mean):")
    print(f"{'placement':<16}{'unallocated at first refusal':>30}{'allocated at 100% load':>25}"
          f"{'refused':>10}{'decide ms':>11}")  # fmt: skip
    figures: dict[str, Any] = {"cluster": {"nodes": cluster.node_count, "gpus": total}}
    fills: dict[str, dict[str, float]] = {}
    for placement, fills_of in runs.items():
        unalloc = statistics.mean(f.unallocated_at_first_refusal for f in fills_of)
        alloc = statistics.mean(f.allocated_at_full_load for f in fills_of)
        refused = statistics.mean(f.refused for f in fills_of)
        ms = statistics.mean(f.decide_ms for f in fills_of)
        fills[placement] = {
            "unallocated_at_first_refusal": round(unalloc, 4),
            "unallocated_at_first_refusal_per_seed": [
                round(f.unallocated_at_first_refusal, 4) for f in fills_of
            ],
            "allocated_at_full_load": round(alloc, 4),
            "refused": refused,
            "decide_ms": round(ms, 3),
        }
        print(f"{placement:<16}{unalloc:>30.1%}{alloc:>25.1%}{refused:>10.1f}{ms:>11.2f}")
    ratio = (
        fills["fgd"]["unallocated_at_first_refusal"]
        / fills["best-fit"]["unallocated_at_first_refusal"]
    )
    print(f"\nunallocated at first refusal, per seed (0..{args.seeds - 1}):")
    for placement, fills_of in runs.items():
        seeds = " ".join(f"{f.unallocated_at_first_refusal:>6.1%}" for f in fills_of)
        print(f"{placement:<16}{seeds}")
    print(f"fgd's unallocated share / best fit's: {ratio:.2f} (aim: at most 0.6)")
    figures["fill"] = fills
    figures["fgd_over_best_fit"] = round(ratio, 3)
    if args.replay_jobs:
        trace = replay_trace(random.Random(1000), cluster, args.replay_jobs, args.replay_load)
        shared, rounded = replay(trace, cluster, False), replay(trace, cluster, True)
        print(f"\n2. replay of {args.replay_jobs} jobs at {args.replay_load:.0%} offered load:")
        for name, r in (("fractions shared", shared), ("fractions rounded up", rounded)):
            print(
                f"{name:<22} reserved {r['reserved_gpu_h']:>9,.1f} GPU-h, JCT mean "
                f"{r['jct_mean_h']:.2f} h, queueing mean {r['queueing_mean_h']:.2f} h, "
                f"allocation {r['allocation_mean']:.1%}, fragmented {r['fragmented_mean']:.1%}"
            )
        saved = rounded["reserved_gpu_h"] - shared["reserved_gpu_h"]
        print(
            f"sharing fractions saves {saved:,.1f} GPU-h of {rounded['reserved_gpu_h']:,.1f} "
            f"({saved / rounded['reserved_gpu_h']:.1%}); the jobs asked for "
            f"{shared['asked_gpu_h']:,.1f} GPU-h"
        )
        figures["replay"] = {"shared": shared, "rounded": rounded, "saved_gpu_h": round(saved, 1)}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
