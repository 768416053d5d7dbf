"""GPU utilisation, idle-GPU flags and per-queue samples, kept by the leading server.

``UsageMonitor.tick()`` runs in the scheduler's thread after each cycle (the executor is only
touched from there), and only while this server leads:

1. every ``gpu_sample_interval_s``: the executor's usage reports (each supervisor's
   ``gpu_usage.ContainerMeter``, asked without waiting) go into ``gpu_usage``, one row per
   container (a container's last report comes with its exit, stored by the reconciler in the
   same commit that ends it, so an ended app's figures are final); a node's last-busy time
   becomes the server's clock (``now - idle_s``), so nodes' clocks never matter;
2. then running apps whose GPUs have all been idle for ``gpu_idle_after_s`` are flagged (an
   event on the app, once; another when they are busy again);
3. every ``timeseries_interval_s``: one ``queue_samples`` row per queue (GPUs guaranteed,
   allocated and used; apps running and pending; the longest wait), and rows older than
   ``timeseries_retention_days`` are deleted.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from dlapp.executor.base import UsageKey
from dlapp.server import queue_service
from dlapp.server.accounting import idle_since
from dlapp.server.context import Context
from dlapp.status import ContainerState
from dlapp.store import repo
from dlapp.store.models import Container, GpuUsage, QueueSample

logger = logging.getLogger(__name__)
IDLE_EVENT = "gpu-idle"


class UsageMonitor:
    def __init__(self, ctx: Context, leading: Callable[[], bool]) -> None:
        self.ctx = ctx
        self.leading = leading
        self._usage_at: float | None = None
        self._samples_at: float | None = None

    def tick(self) -> None:
        if not self.leading():
            return
        s, now = self.ctx.settings, self.ctx.clock()
        if self._usage_at is None or now - self._usage_at >= s.gpu_sample_interval_s:
            self._usage_at = now
            reports = self.ctx.executor.usage()
            with self.ctx.sessions() as session:
                record_usage(session, reports, now)
                flag_idle(session, now, s.gpu_idle_after_s, s.gpu_idle_below)
                session.commit()
        if self._samples_at is None or now - self._samples_at >= s.timeseries_interval_s:
            self._samples_at = now
            with self.ctx.sessions() as session:
                record_samples(self.ctx, session, now)
                cutoff = now - s.timeseries_retention_days * 86400
                session.execute(delete(QueueSample).where(QueueSample.time < cutoff))
                session.commit()


# -- 1. usage reports ---------------------------------------------------------------------------


def record_usage(
    session: Session, reports: Mapping[UsageKey, Mapping[str, Any]], now: float
) -> int:
    """Store each running container's latest report; returns how many were stored. An ended
    container's last report came with its exit (``store_report``, by the reconciler): a late
    answer from before it never replaces that one."""
    stored = 0
    for (app_id, attempt, index), report in reports.items():
        c = session.execute(
            select(Container).where(
                Container.app_id == app_id, Container.attempt == attempt, Container.index == index
            )
        ).scalar_one_or_none()
        if c is None or ContainerState(c.state).is_terminal():
            continue
        store_report(session, c, report, now)
        stored += 1
    return stored


def store_report(session: Session, c: Container, report: Mapping[str, Any], now: float) -> None:
    """One container's report into its ``gpu_usage`` row."""
    row = session.get(GpuUsage, c.id)
    if row is None:
        row = GpuUsage(container_id=c.id, app_id=c.app_id)
        session.add(row)
    apply_report(row, report, now)


def apply_report(row: GpuUsage, report: Mapping[str, Any], now: float) -> None:
    gpus: dict[str, dict[str, Any]] = dict(report.get("gpus", {}))
    row.updated = now
    row.samples = int(report.get("samples", 0))
    row.gpu_seconds_used = float(report.get("gpu_seconds_used", 0.0))
    row.seconds_sampled = float(report.get("seconds_sampled", 0.0))
    row.gpus = json.dumps(gpus, sort_keys=True)
    row.utilisation = (
        sum(float(g["utilisation"]) for g in gpus.values()) / len(gpus) if gpus else None
    )
    row.memory_used_mb = sum(int(g.get("memory_used_mb", 0)) for g in gpus.values())
    row.memory_peak_mb = int(report.get("memory_peak_mb", 0))
    idle_s = report.get("idle_s")
    row.busy_at = None if idle_s is None else now - float(idle_s)
    staging = report.get("staging", {})
    row.staged_in_bytes = int(staging.get("in", {}).get("bytes", 0))
    row.staged_in_s = float(staging.get("in", {}).get("seconds", 0.0))
    row.staged_out_bytes = int(staging.get("out", {}).get("bytes", 0))
    row.staged_out_s = float(staging.get("out", {}).get("seconds", 0.0))


# -- 2. idle GPUs -------------------------------------------------------------------------------


def flag_idle(session: Session, now: float, idle_after_s: float, idle_below: float) -> list[str]:
    """Flag running apps whose GPUs have all idled ``idle_after_s``; unflag busy ones. Returns
    the apps flagged now."""
    flagged = []
    for app in repo.running_apps(session):
        if app.gpus <= 0:
            continue
        containers = repo.current_containers(session, app)
        rows = _usage_rows(session, [c.id for c in containers])
        since = idle_since([rows[c.id].busy_at if c.id in rows else None for c in containers])
        idle = since is not None and now - since >= idle_after_s
        was = any(r.idle_flagged is not None for r in rows.values())
        if idle and not was:
            for r in rows.values():
                r.idle_flagged = now
            repo.add_event(
                session,
                app.id,
                IDLE_EVENT,
                f"its {app.gpus * len(containers):g} GPU(s) have been idle (under "
                f"{idle_below:g}% utilisation) for {_took(now - (since or now))}; "
                "end the app if it is done",
                now,
            )
            flagged.append(app.id)
        elif was and not idle:
            for r in rows.values():
                r.idle_flagged = None
            repo.add_event(session, app.id, IDLE_EVENT, "its GPUs are busy again", now)
    return flagged


def _took(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _usage_rows(session: Session, container_ids: list[int]) -> dict[int, GpuUsage]:
    if not container_ids:
        return {}
    q = select(GpuUsage).where(GpuUsage.container_id.in_(container_ids))
    return {r.container_id: r for r in session.execute(q).scalars()}


# -- 3. per-queue samples -----------------------------------------------------------------------


def record_samples(ctx: Context, session: Session, now: float) -> list[QueueSample]:
    """One row per queue of the tree (and per queue apps are left in), stored: what the queues
    view says now, plus GPUs used (from the latest utilisation) and the longest wait."""
    out = take_samples(ctx, session, now)
    session.add_all(out)
    return out


def take_samples(ctx: Context, session: Session, now: float) -> list[QueueSample]:
    """``record_samples``' rows, not stored (the plots' point for now)."""
    tree = ctx.queues.tree
    used: dict[str, float] = defaultdict(float)
    sampled: set[str] = set()
    allocs = repo.allocations(session)
    rows = _usage_rows(session, [c.id for _, c in allocs])
    for app, c in allocs:
        row = rows.get(c.id)
        if row is None or row.utilisation is None:
            continue
        for path in _chain(tree, app.queue):
            used[path] += row.utilisation / 100 * app.gpus
            sampled.add(path)
    wait: dict[str, float] = defaultdict(float)
    for queue, oldest in repo.oldest_waiting(session).items():
        for path in _chain(tree, queue):
            wait[path] = max(wait[path], now - oldest)
    out = []
    for q in queue_service.queues_view(ctx, session)["queues"]:
        path = q["path"]
        sample = QueueSample(
            time=now,
            queue=path,
            gpus_capacity=int(q["guaranteed"]["gpus"]) if "guaranteed" in q else 0,
            gpus_allocated=int(q["used"]["gpus"]),
            gpus_used=round(used[path], 3) if path in sampled else None,
            apps_running=q["running_apps"],
            apps_pending=q["pending_apps"],
            wait_s=round(wait[path], 3),
        )
        out.append(sample)
    return out


def _chain(tree: Any, queue: str) -> list[str]:
    return list(tree.ancestors(queue)) if queue in tree.by_path else [queue]


COLUMNS = (
    "gpus_capacity",
    "gpus_allocated",
    "gpus_used",
    "apps_running",
    "apps_pending",
    "wait_s",
)


def add_now(out: dict[str, dict[str, list[Any]]], samples: list[QueueSample]) -> None:
    """End each queue's series with ``samples`` (``take_samples``, now): a plot then shows
    what the cluster and queue views say now, not what the last stored sample said up to
    ``timeseries_interval_s`` ago."""
    for s in samples:
        columns = out.setdefault(s.queue, {"time": [], **{c: [] for c in COLUMNS}})
        columns["time"].append(s.time)
        for c in COLUMNS:
            columns[c].append(getattr(s, c))


def series(
    session: Session, since: float, until: float, max_points: int = 500
) -> dict[str, dict[str, list[Any]]]:
    """Samples in ``[since, until)`` per queue, as columns; at most ``max_points`` per queue
    (evenly thinned, the latest always kept)."""
    q = (
        select(QueueSample)
        .where(QueueSample.time >= since, QueueSample.time < until)
        .order_by(QueueSample.time)
    )
    per_queue: dict[str, list[QueueSample]] = defaultdict(list)
    for s in session.execute(q).scalars():
        per_queue[s.queue].append(s)
    out: dict[str, dict[str, list[Any]]] = {}
    for queue, samples in sorted(per_queue.items()):
        step = max(1, -(-len(samples) // max_points))
        kept = samples[::-1][::step][::-1]
        out[queue] = {
            "time": [s.time for s in kept],
            "gpus_capacity": [s.gpus_capacity for s in kept],
            "gpus_allocated": [s.gpus_allocated for s in kept],
            "gpus_used": [s.gpus_used for s in kept],
            "apps_running": [s.apps_running for s in kept],
            "apps_pending": [s.apps_pending for s in kept],
            "wait_s": [s.wait_s for s in kept],
        }
    return out
