"""What a replay measured, as one JSON-able dict (``report.json``, ``--json``).

Definitions (all times in seconds of simulated time):

- JCT, job completion time: end - submit;
- queueing delay: time spent waiting in a queue, summed over the job's waits (the first one,
  and any after a preemption); JCT = duration + queueing delay + work lost to preemptions;
- GPU allocation: GPUs held by jobs over time, the mean over [0, the last job's end] as a
  share of the cluster's GPUs (held, not busy: a preempted job holds its GPUs in its grace);
- per queue: share of all GPU-time held vs. the queue's guaranteed share; time *starved*:
  while the queue had jobs waiting and held fewer GPUs than its guarantee;
- unallocated GPU share: free GPUs over time, as a share of the cluster's (mean over the
  replay); fragmented: the part of it the trace's kinds of job could not use where it was (in
  pieces too small, or on nodes short of CPU, memory or the model asked for; see
  ``dlapp.sim.gpu_state``);
- GPU-hours asked: each finished job's duration times its GPUs, fractions as asked, and as
  they would be if each fraction were rounded up to a whole GPU (what sharing saves);
- normalised delay of a queue: its jobs' summed JCT over their summed durations (1.0: nobody
  waited); fairness is Jain's index over the queues' normalised delays,
  (sum x)^2 / (n * sum x^2): 1.0 when every queue is slowed alike, 1/n when one queue alone is.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from dlapp.sim.engine import JobRecord, SimResult
from dlapp.sim.fairness import QueueFairness


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` (in any order), interpolated linearly
    between the closest ranks. The benchmarks' reports use it too (bench/stats.py)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not between 0 and 100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float | None]:
    """mean, p50, p95, p99, max; None for each when there are no values."""
    if not values:
        return {k: None for k in ("mean", "p50", "p95", "p99", "max")}
    s = sorted(values)
    return {
        "mean": round(sum(s) / len(s), 1),
        "p50": round(percentile(s, 50), 1),
        "p95": round(percentile(s, 95), 1),
        "p99": round(percentile(s, 99), 1),
        "max": round(s[-1], 1),
    }


def jain(values: Sequence[float]) -> float | None:
    """Jain's fairness index of ``values``; None when there are none."""
    if not values:
        return None
    squares = sum(v * v for v in values)
    return round(sum(values) ** 2 / (len(values) * squares), 4) if squares else 1.0


def _figures(records: Sequence[JobRecord]) -> dict[str, Any]:
    done = [r for r in records if r.end is not None]
    duration = sum(r.job.duration for r in done)
    jct = [(r.end or 0.0) - r.job.submit for r in done]
    return {
        "jobs": len(records),
        "finished": len(done),
        "jct_s": summary(jct),
        "queueing_s": summary([r.queued_s for r in done]),
        "normalised_delay": round(sum(jct) / duration, 3) if duration > 0 else None,
        "preempted_jobs": sum(1 for r in records if r.preemptions),
        "preemptions": sum(r.preemptions for r in records),
    }


def _cdf(values: Sequence[float], points: int = 51) -> list[float]:
    """``points`` quantiles of ``values``, 0% to 100% evenly (for a CDF plot); [] when none."""
    if not values:
        return []
    ordered = sorted(values)
    return [round(percentile(ordered, 100 * k / (points - 1)), 1) for k in range(points)]


def _gpu_hours(records: Sequence[JobRecord]) -> dict[str, Any]:
    """GPU-hours the finished jobs asked for, and what rounding fractions up would reserve."""
    done = [r for r in records if r.end is not None]
    asked = sum(r.job.duration * r.job.gpus for r in done) / 3600
    rounded = sum(r.job.duration * math.ceil(r.job.gpus) for r in done) / 3600
    fractional = [r for r in done if 0 < r.job.gpus < 1]
    return {
        "asked": round(asked, 1),
        "rounded_up": round(rounded, 1),
        "saved_by_sharing": round(rounded - asked, 1),
        "saved_share": round((rounded - asked) / rounded, 4) if rounded else 0.0,
        "fractional_jobs": len(fractional),
        "fractional_job_share": round(len(fractional) / len(done), 4) if done else 0.0,
    }


def build_report(
    result: SimResult,
    meta: dict[str, Any] | None = None,
    fairness: Sequence[QueueFairness] = (),
) -> dict[str, Any]:
    """Every figure of ``result``; ``meta`` (policy name, inputs) is copied in first;
    ``fairness``, each queue's finish-time fairness (``finish_time_fairness(result)``)."""
    total = result.cluster.total
    span = result.end
    capacity_gpu_s = total.gpus * span
    tl = result.timeline
    limits = result.tree.resolve(total)
    by_queue: dict[str, list[JobRecord]] = defaultdict(list)
    for r in result.records:
        by_queue[r.head.queue].append(r)
    held_gpu_s = sum(tl.gpu_s)
    work_gpu_s = sum(r.job.duration * r.gpus for r in result.records if r.end is not None)
    rho = {f.queue: f.rho for f in fairness}
    queues = []
    for i, path in enumerate(tl.queues):
        records = by_queue.get(path, [])
        g = limits[path].guaranteed.gpus
        queues.append(
            {
                "queue": path,
                "guaranteed_gpus": g,
                "guaranteed_share": round(g / total.gpus, 4) if total.gpus else 0.0,
                "maximum_gpus": limits[path].maximum.gpus,
                **_figures(records),
                "gpu_time_share": round(tl.gpu_s[i] / held_gpu_s, 4) if held_gpu_s else 0.0,
                "capacity_share": round(tl.gpu_s[i] / capacity_gpu_s, 4) if span else 0.0,
                "demand_gpu_h": round(sum(r.job.duration * r.gpus for r in records) / 3600, 1),
                "waiting_mean": round(tl.pending_s[i] / span, 2) if span else 0.0,
                "waiting_peak": tl.peak_waiting[i],
                "starved_h": round(tl.starved_s[i] / 3600, 2),
                "longest_starved_h": round(tl.longest_starved_s[i] / 3600, 2),
                "finish_time_fairness": rho.get(path),
            }
        )
    delays = [q["normalised_delay"] for q in queues if q["normalised_delay"] is not None]
    stats = result.decide
    report: dict[str, Any] = dict(meta or {})
    report.update(
        {
            "cluster": {
                "nodes": result.cluster.node_count,
                "gpus": total.gpus,
                "cpus": total.cpus,
                "memory_mb": total.memory_mb,
                "groups": result.cluster.to_dict(),
            },
            "cycle_s": result.options.cycle_s,
            "preemption": result.tree.preemption,
            "grace_s": result.tree.preemption_grace_s,
            "trace": {
                "source": result.trace.source,
                "origin": result.trace.origin,
                "jobs": len(result.trace.jobs),
            },
            "dropped": {
                "jobs": len(result.dropped),
                "by_reason": dict(Counter(d.reason for d in result.dropped).most_common()),
            },
            "span_h": round(span / 3600, 2),
            "overall": _figures(result.records),
            "jct_cdf_s": _cdf([(r.end or 0.0) - r.job.submit for r in result.records if r.end]),
            "finish_time_fairness": [f.to_dict() for f in fairness],
            "allocation": {
                "mean_share": round(held_gpu_s / capacity_gpu_s, 4) if capacity_gpu_s else 0.0,
                "mean_gpus": round(held_gpu_s / span, 1) if span else 0.0,
                "peak_gpus": tl.peak_held,
                "work_share": round(work_gpu_s / capacity_gpu_s, 4) if capacity_gpu_s else 0.0,
                "lost_gpu_h": round((held_gpu_s - work_gpu_s) / 3600, 1),
            },
            "fragmentation": {
                "unallocated_share_mean": round(tl.free_gpu_s / capacity_gpu_s, 4)
                if capacity_gpu_s
                else 0.0,
                "fragmented_share_mean": round(tl.frag_gpu_s / capacity_gpu_s, 4)
                if capacity_gpu_s
                else 0.0,
                "fragmented_of_unallocated": round(tl.frag_gpu_s / tl.free_gpu_s, 4)
                if tl.free_gpu_s
                else 0.0,
            },
            "gpu_hours": _gpu_hours(result.records),
            "fairness": {
                "jain_normalised_delay": jain(delays),
                "worst_normalised_delay": max(delays) if delays else None,
                "starved_h": round(sum(tl.starved_s) / 3600, 2),
                "longest_starved_h": round(max(tl.longest_starved_s, default=0.0) / 3600, 2),
                "worst_finish_time_fairness": max(
                    (r for r in rho.values() if r is not None), default=None
                ),
            },
            "queues": queues,
            "decide": {  # CPU time
                "calls": stats.calls,
                "total_s": round(stats.seconds, 2),
                "mean_ms": round(stats.seconds / stats.calls * 1000, 3) if stats.calls else 0.0,
                "max_ms": round(stats.max_s * 1000, 2),
                "mean_heads": round(stats.heads / stats.calls, 1) if stats.calls else 0.0,
                "most_heads": stats.most_heads,
                "mean_running": round(stats.running / stats.calls, 1) if stats.calls else 0.0,
            },
            "wall_s": round(result.wall_s, 2),
            "cpu_s": round(result.cpu_s, 2),
        }
    )
    return report
