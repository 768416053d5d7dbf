"""Finish-time fairness: each queue's slowdown in the shared cluster against running alone on
its guarantee (Themis, NSDI '20, compares against 1/N of the cluster; dlapp's fair share of a
queue is its guarantee).

For each leaf queue with a guarantee and jobs, its jobs are replayed alone, through the same
policy and options, on a cluster of its guaranteed GPUs (whole nodes of the cluster's largest
kind, and one smaller node for the rest); ``rho`` = the queue's summed JCT in the shared replay
over its summed JCT alone, on the jobs that finished in both (a job larger than the guarantee
cannot run alone and is left out, and counted). ``rho`` below 1: sharing sped the queue up
(it borrowed idle GPUs); above 1: it finished later than on its own share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from dlapp.scheduler.queues import ALL, ROOT, Capacity, Queue, QueueTree
from dlapp.sim.cluster import ClusterSpec
from dlapp.sim.engine import SimResult, simulate
from dlapp.sim.trace import Trace

ALONE_QUEUE = "default"


@dataclass(frozen=True)
class QueueFairness:
    queue: str
    guaranteed_gpus: float
    jobs: int  # finished in both replays
    left_out: int  # could not run alone (larger than the guarantee), or did not finish
    jct_shared_s: float  # summed
    jct_alone_s: float

    @property
    def rho(self) -> float | None:
        return round(self.jct_shared_s / self.jct_alone_s, 3) if self.jct_alone_s > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "guaranteed_gpus": self.guaranteed_gpus,
            "jobs": self.jobs,
            "left_out": self.left_out,
            "jct_shared_mean_s": round(self.jct_shared_s / self.jobs, 1) if self.jobs else None,
            "jct_alone_mean_s": round(self.jct_alone_s / self.jobs, 1) if self.jobs else None,
            "rho": self.rho,
        }


def alone_cluster(cluster: ClusterSpec, gpus: float) -> ClusterSpec | None:
    """``gpus`` GPUs in nodes like the cluster's largest (CPUs and memory in proportion)."""
    group = max(cluster.groups, key=lambda g: (g.gpus, g.count))
    if gpus <= 0 or group.gpus <= 0:
        return None
    whole, rest = divmod(gpus, group.gpus)
    nodes: list[dict[str, Any]] = []
    base = {"cpus": group.cpus, "memory": f"{group.memory_mb}M"}
    if whole:
        nodes.append({"count": int(whole), "gpus": group.gpus, **base, "name": "alone"})
    if rest >= 1:
        share = rest / group.gpus
        nodes.append(
            {
                "count": 1,
                "gpus": int(rest),
                "cpus": group.cpus * share,
                "memory": f"{int(group.memory_mb * share)}M",
                "name": "part",
            }
        )
    return ClusterSpec.from_dict(nodes, "alone") if nodes else None


def alone_tree(tree: QueueTree, queue: Queue) -> QueueTree:
    """A tree of the one queue, as configured (its ordering, levels, ...), owning it all."""
    leaf = replace(
        queue,
        path=f"{ROOT}.{ALONE_QUEUE}",
        guaranteed=Capacity(ALL, ALL, ALL),
        maximum=Capacity(ALL, ALL, ALL),
        user_limit=None,
        user_limit_share=1.0,
        children=(),
    )
    root = Queue(path=ROOT, guaranteed=leaf.guaranteed, maximum=leaf.maximum, children=(leaf,))
    return replace(tree, root=root, source=f"{queue.path} alone", _resolved={}, _chains={})


def finish_time_fairness(
    result: SimResult, progress: Callable[[str], None] | None = None
) -> list[QueueFairness]:
    """Replay each queue alone on its guarantee and compare (see the module's docstring)."""
    limits = result.tree.resolve(result.cluster.total)
    shared = {r.job.job_id: r for r in result.records}
    out = []
    for q in result.tree.leaves:
        jobs = tuple(
            j
            for j in result.trace.jobs
            if j.job_id in shared and shared[j.job_id].head.queue == q.path
        )
        gpus = limits[q.path].guaranteed.gpus
        cluster = alone_cluster(result.cluster, gpus)
        if not jobs or cluster is None:
            continue
        if progress is not None:
            progress(f"{q.path} alone on {gpus:g} GPUs ({len(jobs)} jobs)")
        trace = Trace(jobs, result.trace.source, result.trace.origin).in_queue(ALONE_QUEUE)
        alone = simulate(trace, cluster, alone_tree(result.tree, q), result.options)
        ends = {r.job.job_id: r for r in alone.records if r.end is not None}
        both = [
            (shared[j.job_id], ends[j.job_id])
            for j in jobs
            if j.job_id in ends and shared[j.job_id].end is not None
        ]
        out.append(
            QueueFairness(
                queue=q.path,
                guaranteed_gpus=gpus,
                jobs=len(both),
                left_out=len(jobs) - len(both),
                jct_shared_s=sum((s.end or 0.0) - s.job.submit for s, _ in both),
                jct_alone_s=sum((a.end or 0.0) - a.job.submit for _, a in both),
            )
        )
    return out
