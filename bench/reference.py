"""The duration-aware reference for the Philly replays: one shared pool, shortest known
duration first, best-fit packing, no queues.

    .venv/bin/python bench/reference.py [--nodes 52] [--gpus-per-node 8] [--cycle 60]
                                        [--limit N] [--json]

A small event simulator of its own, written for speed and kept apart from dlapp's scheduler,
so that a replay of dlapp is measured against it in the same run (``bench/philly.py``). The
same inputs and the same rules as ``dlapp simulate`` where they are not the policy: the jobs of
``philly.csv`` (those of the virtual clusters in ``philly_vc.csv``; a job larger than the
cluster is dropped), a job larger than a node becomes a gang of whole containers
(``dlapp.sim.split_gang``), decisions at 60 s cycles after something changed. The policy: at
each cycle, every waiting job in order of its true duration (shortest first, then submission),
placed if the whole gang fits now, each container on the node with the fewest free GPUs that
holds it; nothing is preempted, nothing is reserved. It knows what no real scheduler knows,
each job's duration, which is what makes it a reference.

The report has the same figures as dlapp's where they apply: JCT and queueing delay (mean,
percentiles), GPU allocation, and per virtual cluster the normalised delay (summed JCT over
summed duration), Jain's index over them and the worst one.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from dlapp.sim import TraceJob, jain, load_trace, split_gang, summary  # noqa: E402

TRACES = ROOT.parent / "shared" / "traces"


@dataclass
class Job:
    job: TraceJob
    per_container: int  # GPUs
    containers: int
    start: float | None = None
    end: float | None = None

    @property
    def gpus(self) -> int:
        return self.per_container * self.containers


class Pool:
    """Free GPUs per node, bucketed by how many are free, for best fit."""

    def __init__(self, nodes: int, gpus_per_node: int) -> None:
        self.size = gpus_per_node
        self.free = [gpus_per_node] * nodes
        self.buckets: list[set[int]] = [set() for _ in range(gpus_per_node + 1)]
        self.buckets[gpus_per_node] = set(range(nodes))
        self.total_free = nodes * gpus_per_node

    def _move(self, node: int, change: int) -> None:
        self.buckets[self.free[node]].discard(node)
        self.free[node] += change
        self.buckets[self.free[node]].add(node)
        self.total_free += change

    def place(self, per_container: int, containers: int) -> list[int] | None:
        """Nodes for every container (best fit: fewest free GPUs first), or None, taking
        nothing."""
        if per_container * containers > self.total_free:
            return None
        taken: list[int] = []
        for _ in range(containers):
            node = next(
                (min(b) for b in self.buckets[max(per_container, 1) :] if b), None
            )  # the fullest node that holds it, lowest number first
            if node is None:
                for n in taken:
                    self._move(n, per_container)
                return None
            self._move(node, -per_container)
            taken.append(node)
        return taken

    def release(self, nodes: list[int], per_container: int) -> None:
        for n in nodes:
            self._move(n, per_container)


def replay(
    jobs: list[TraceJob], nodes: int, gpus_per_node: int, cycle_s: float, queues: set[str] | None
) -> dict[str, Any]:
    started = time.perf_counter()
    pool = Pool(nodes, gpus_per_node)
    capacity = nodes * gpus_per_node
    todo: list[Job] = []
    dropped = 0
    for j in jobs:
        request, n = split_gang(j, gpus_per_node)
        per = int(request.gpus)
        if (queues is not None and j.queue not in queues) or per * n > capacity:
            dropped += 1
            continue
        todo.append(Job(j, per, n))
    # waiting jobs by shape, each shape's jobs by (duration, submission): a shape that does
    # not fit is passed over in one step (free GPUs only shrink during a cycle)
    waiting: dict[tuple[int, int], list[tuple[float, int, int]]] = defaultdict(list)
    ends: list[tuple[float, int]] = []  # (end time, job index)
    placed: dict[int, list[int]] = {}
    i, n_waiting, held_gpu_s, last = 0, 0, 0.0, 0.0
    held = 0

    def cycle_time(t: float) -> float:
        if cycle_s <= 0:
            return t
        return math.ceil(t / cycle_s) * cycle_s

    while i < len(todo) or ends:
        upcoming = min(
            todo[i].job.submit if i < len(todo) else math.inf, ends[0][0] if ends else math.inf
        )
        now = cycle_time(upcoming)
        changed = False
        while True:
            arrival = todo[i].job.submit if i < len(todo) else math.inf
            finish = ends[0][0] if ends else math.inf
            if min(arrival, finish) > now:
                break
            if arrival <= finish:
                job = todo[i]
                heapq.heappush(
                    waiting[(job.per_container, job.containers)], (job.job.duration, job.job.row, i)
                )
                n_waiting += 1
                i += 1
            else:
                when, k = heapq.heappop(ends)
                held_gpu_s += held * (when - last)
                held, last = held - todo[k].gpus, when
                pool.release(placed.pop(k), todo[k].per_container)
                todo[k].end = when
            changed = True
        if not (changed and n_waiting):
            continue
        held_gpu_s += held * (now - last)
        last = now
        # shortest duration first over all shapes: a heap of each shape's shortest job
        fronts = [(line[0], shape) for shape, line in waiting.items() if line]
        heapq.heapify(fronts)
        while fronts:
            (_, _, k), shape = heapq.heappop(fronts)
            job = todo[k]
            nodes_taken = pool.place(job.per_container, job.containers)
            if nodes_taken is None:
                continue  # the rest of this shape cannot fit either
            heapq.heappop(waiting[shape])
            n_waiting -= 1
            placed[k] = nodes_taken
            job.start = now
            held += job.gpus
            heapq.heappush(ends, (now + job.job.duration, k))
            if waiting[shape]:
                heapq.heappush(fronts, (waiting[shape][0], shape))
    done = [j for j in todo if j.end is not None]
    span = max((j.end or 0.0) for j in done) if done else 0.0
    jct = [(j.end or 0.0) - j.job.submit for j in done]
    wait = [(j.start or 0.0) - j.job.submit for j in done]
    by_queue: dict[str, list[Job]] = defaultdict(list)
    for done_job in done:
        by_queue[done_job.job.queue].append(done_job)
    delays = {
        q: round(
            sum((j.end or 0.0) - j.job.submit for j in js) / sum(j.job.duration for j in js), 3
        )
        for q, js in sorted(by_queue.items())
        if sum(j.job.duration for j in js) > 0
    }
    return {
        "policy": "reference",
        "cluster": {"nodes": nodes, "gpus": capacity},
        "cycle_s": cycle_s,
        "jobs": len(todo),
        "dropped": dropped,
        "overall": {"jct_s": summary(jct), "queueing_s": summary(wait)},
        "allocation": {"mean_share": round(held_gpu_s / (capacity * span), 4) if span else 0.0},
        "fairness": {
            "jain_normalised_delay": jain(list(delays.values())),
            "worst_normalised_delay": max(delays.values()) if delays else None,
        },
        "queues": [{"queue": q, "normalised_delay": d} for q, d in delays.items()],
        "span_h": round(span / 3600, 2),
        "wall_s": round(time.perf_counter() - started, 2),
    }


def vc_names(path: Path) -> set[str]:
    with path.open(newline="") as handle:
        return {row["vc"].strip() for row in csv.DictReader(handle)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", type=Path, default=TRACES / "philly.csv")
    parser.add_argument("--vc", type=Path, default=TRACES / "philly_vc.csv")
    parser.add_argument("--nodes", type=int, default=52)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--cycle", type=float, default=60.0)
    parser.add_argument("--limit", type=int, help="replay only the first N jobs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    trace = load_trace(args.trace)
    jobs = list(trace.jobs[: args.limit] if args.limit else trace.jobs)
    report = replay(jobs, args.nodes, args.gpus_per_node, args.cycle, vc_names(args.vc))
    if args.json:
        print(json.dumps(report, indent=1))
        return
    o = report["overall"]
    print(
        f"reference on {args.nodes} nodes: JCT mean {o['jct_s']['mean'] / 3600:.2f} h, "
        f"p50 {o['jct_s']['p50'] / 60:.1f} min; wait mean {o['queueing_s']['mean'] / 3600:.2f} h;"
        f" Jain {report['fairness']['jain_normalised_delay']}, worst queue "
        f"{report['fairness']['worst_normalised_delay']}; {report['wall_s']} s"
    )


if __name__ == "__main__":
    main()
