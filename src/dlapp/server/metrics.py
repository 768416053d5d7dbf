"""Prometheus ``/metrics``: what the store and the executor say, read at scrape time.

Two kinds of numbers:

- **read at scrape time** (``StoreCollector``), from the same services the API answers with, so
  a scrape and ``/api/v1/cluster`` / ``/api/v1/queues`` agree: apps by queue and state, finished
  apps by final status, resources per node and per queue (total / allocated; guaranteed /
  maximum / used / pending), and the submit-to-start wait of every app that started (a
  histogram rebuilt from the store, so it survives a restart); what the supervisors measured
  (``server.usage_monitor``): GPU-seconds used per queue, the last utilisation of each held
  GPU, apps flagged for idle GPUs per queue, and staging bytes and seconds in and out;
- **observed as they happen** (``ServerMetrics.cycle_seconds``): the scheduler cycle time.

``/metrics`` is behind the same ``AuthMiddleware`` as everything else: any enabled user's token
may read it (it shows nothing ``/api/v1/cluster`` and ``/api/v1/queues`` do not show every user
already, and no user names). Give Prometheus a user of its own with no rights beyond that
(``dlapp admin user add prometheus``) and its token as ``authorization: {credentials_file}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from dlapp.server import queue_service, services
from dlapp.server.auth import get_caller
from dlapp.server.context import Context
from dlapp.status import AppState
from dlapp.store.models import App, Container, GpuUsage

RESOURCES = ("gpus", "cpus", "memory_mb")
CYCLE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
WAIT_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 86400.0)


def histogram_buckets(
    values: Iterable[float], bounds: Sequence[float]
) -> tuple[list[tuple[str, float]], float]:
    """Cumulative ``(le, count)`` pairs, ``+Inf`` last, and the sum of ``values``."""
    vals = sorted(values)
    buckets = [(_le(b), float(sum(1 for v in vals if v <= b))) for b in bounds]
    buckets.append(("+Inf", float(len(vals))))
    return buckets, float(sum(vals))


def _le(bound: float) -> str:
    return repr(float(bound))


class StoreCollector(Collector):
    """Gauges and the wait histogram, computed on each scrape from the store and node list."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        with self.ctx.sessions() as session:
            cluster = services.cluster(self.ctx, session)
            queues = queue_service.queues_view(self.ctx, session)
            by_state = session.execute(
                select(App.queue, App.state, func.count()).group_by(App.queue, App.state)
            ).all()
            by_final = session.execute(
                select(App.queue, App.final_status, func.count())
                .where(App.state == "FINISHED")
                .group_by(App.queue, App.final_status)
            ).all()
            waits = session.execute(
                select(App.queue, App.start_time - App.submit_time).where(
                    App.start_time.is_not(None)
                )
            ).all()
            measured = session.execute(
                select(
                    App.queue,
                    func.sum(GpuUsage.gpu_seconds_used),
                    func.sum(GpuUsage.staged_in_bytes),
                    func.sum(GpuUsage.staged_in_s),
                    func.sum(GpuUsage.staged_out_bytes),
                    func.sum(GpuUsage.staged_out_s),
                )
                .join(GpuUsage, GpuUsage.app_id == App.id)
                .group_by(App.queue)
            ).all()
            held = session.execute(
                select(App.queue, Container.node_name, GpuUsage)
                .join(Container, (Container.app_id == App.id) & (Container.attempt == App.attempt))
                .join(GpuUsage, GpuUsage.container_id == Container.id)
                .where(App.state == AppState.RUNNING.value)
            ).all()
        yield from _app_metrics(by_state, by_final)
        yield from _node_metrics(cluster["nodes"])
        yield from _queue_metrics(queues["queues"])
        yield _wait_histogram([(str(q), float(w)) for q, w in waits if w is not None])
        yield from _usage_metrics(measured, held)


def _app_metrics(by_state: Sequence[Any], by_final: Sequence[Any]) -> Iterator[Metric]:
    apps = GaugeMetricFamily("dlapp_apps", "Apps by queue and state", labels=["queue", "state"])
    for queue, state, n in by_state:
        apps.add_metric([queue, state], n)
    yield apps
    done = GaugeMetricFamily(
        "dlapp_apps_finished",
        "Finished apps by queue and final status",
        labels=["queue", "final_status"],
    )
    for queue, final, n in by_final:
        done.add_metric([queue, final], n)
    yield done


def _node_metrics(nodes: Sequence[dict[str, Any]]) -> Iterator[Metric]:
    up = GaugeMetricFamily("dlapp_node_up", "1 if the node is alive, else 0", labels=["node"])
    total = GaugeMetricFamily(
        "dlapp_node_resource_total", "Resources of a node", labels=["node", "resource"]
    )
    allocated = GaugeMetricFamily(
        "dlapp_node_resource_allocated",
        "Resources of a node held by running apps' containers",
        labels=["node", "resource"],
    )
    for n in nodes:
        up.add_metric([n["name"]], 1.0 if n["alive"] else 0.0)
        for r in RESOURCES:
            total.add_metric([n["name"], r], n["total"][r])
            allocated.add_metric([n["name"], r], n["used"][r])
    yield from (up, total, allocated)


def _queue_metrics(rows: Sequence[dict[str, Any]]) -> Iterator[Metric]:
    families = {
        kind: GaugeMetricFamily(
            f"dlapp_queue_resource_{kind}",
            f"Resources of a queue ({kind}; used and pending include its children)",
            labels=["queue", "resource"],
        )
        for kind in ("guaranteed", "maximum", "used", "pending")
    }
    running = GaugeMetricFamily("dlapp_queue_apps_running", "Running apps", labels=["queue"])
    pending = GaugeMetricFamily("dlapp_queue_apps_pending", "Waiting apps", labels=["queue"])
    for row in rows:
        for kind, family in families.items():
            amounts = row.get(kind)
            if amounts is None:  # a queue removed from the file while apps still use it
                continue
            for r in RESOURCES:
                family.add_metric([row["path"], r], amounts[r])
        running.add_metric([row["path"]], row["running_apps"])
        pending.add_metric([row["path"]], row["pending_apps"])
    yield from families.values()
    yield from (running, pending)


def _wait_histogram(waits: Sequence[tuple[str, float]]) -> Metric:
    family = HistogramMetricFamily(
        "dlapp_app_wait_seconds",
        "Submit-to-start time of apps that started (the latest start of a requeued app)",
        labels=["queue"],
    )
    per_queue: dict[str, list[float]] = {}
    for queue, wait in waits:
        per_queue.setdefault(queue, []).append(max(wait, 0.0))
    for queue, values in sorted(per_queue.items()):
        buckets, total = histogram_buckets(values, WAIT_BUCKETS)
        family.add_metric([queue], buckets, total)
    return family


def _usage_metrics(measured: Sequence[Any], held: Sequence[Any]) -> Iterator[Metric]:
    used = CounterMetricFamily(
        "dlapp_gpu_used_seconds",
        "GPU-seconds used (utilisation x time, as sampled on the nodes) by apps of a queue",
        labels=["queue"],
    )
    staged = CounterMetricFamily(
        "dlapp_staging_bytes", "Bytes staged in (inputs) and out (outputs)", labels=["direction"]
    )
    staged_s = CounterMetricFamily(
        "dlapp_staging_seconds", "Seconds spent staging in and out", labels=["direction"]
    )
    rate = GaugeMetricFamily(
        "dlapp_staging_throughput_bytes_per_second",
        "Mean staging throughput so far: bytes over seconds staging",
        labels=["direction"],
    )
    totals = {"in": [0.0, 0.0], "out": [0.0, 0.0]}
    for queue, gpu_s, in_b, in_s, out_b, out_s in measured:
        used.add_metric([queue], float(gpu_s or 0.0))
        totals["in"][0] += float(in_b or 0)
        totals["in"][1] += float(in_s or 0.0)
        totals["out"][0] += float(out_b or 0)
        totals["out"][1] += float(out_s or 0.0)
    for direction, (nbytes, seconds) in totals.items():
        staged.add_metric([direction], nbytes)
        staged_s.add_metric([direction], seconds)
        rate.add_metric([direction], nbytes / seconds if seconds > 0 else 0.0)
    util = GaugeMetricFamily(
        "dlapp_gpu_utilisation_percent",
        "Last sampled utilisation of each GPU a running app holds",
        labels=["node", "gpu"],
    )
    idle = GaugeMetricFamily(
        "dlapp_apps_gpu_idle",
        "Running apps flagged for leaving their GPUs idle (gpu_idle_after_s)",
        labels=["queue"],
    )
    idle_apps: dict[str, set[str]] = {}
    for queue, node, row in held:
        for gpu, reading in sorted(json.loads(row.gpus).items()):
            util.add_metric([node, gpu], float(reading["utilisation"]))
        idle_apps.setdefault(queue, set())
        if row.idle_flagged is not None:
            idle_apps[queue].add(row.app_id)
    for queue, apps in sorted(idle_apps.items()):
        idle.add_metric([queue], len(apps))
    yield from (used, staged, staged_s, rate, util, idle)


class ServerMetrics:
    """One registry per server (tests run many servers in one process)."""

    def __init__(self, ctx: Context) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StoreCollector(ctx))
        self.cycle_seconds = Histogram(
            "dlapp_scheduler_cycle_seconds",
            "Time of one scheduling cycle (reconcile, decide, apply)",
            buckets=CYCLE_BUCKETS,
            registry=self.registry,
        )

    def observe_cycle(self, seconds: float) -> None:
        self.cycle_seconds.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


router = APIRouter(dependencies=[Depends(get_caller)])


@router.get("/metrics", tags=["meta"], response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus text exposition; any enabled user's token (see the module docstring)."""
    server_metrics: ServerMetrics = request.app.state.metrics
    return Response(server_metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
