"""How apps look in API answers (and so in ``dlapp status --json``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from dlapp.server.accounting import idle_since
from dlapp.store.models import App, Container, Event


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def container_view(c: Container) -> dict[str, Any]:
    return {
        "index": c.index,
        "attempt": c.attempt,
        "state": c.state,
        "node": c.node_name or c.node_id,
        "node_id": c.node_id,
        "gpu_ids": [g for g in c.gpu_ids.split(",") if g],
        "pid": c.pid,
        "start_time": iso(c.start_time),
        "finish_time": iso(c.end_time),
        "exit_code": c.exit_code,
        "diagnostics": c.diagnostics,
        "logs": {
            s: f"/api/v1/apps/{c.app_id}/logs?container={c.index}&stream={s}"
            for s in ("stdout", "stderr")
        },
    }


def app_view(app: App, base_url: str) -> dict[str, Any]:
    containers = [c for c in app.containers if c.attempt == app.attempt]
    end = app.finish_time
    elapsed = None if app.start_time is None else (end or _now()) - app.start_time
    return {
        "id": app.id,
        "name": app.name,
        "user": app.user,
        "queue": app.queue,
        "state": app.state,
        "final_status": app.final_status,
        "diagnostics": app.diagnostics,
        "pending_reason": app.pending_reason if app.state == "ACCEPTED" else "",
        "submit_time": iso(app.submit_time),
        "start_time": iso(app.start_time),
        "finish_time": iso(end),
        "elapsed_s": None if elapsed is None else round(elapsed, 3),
        "attempt": app.attempt,
        "num_containers": app.num_containers,
        "resources": {"cpus": app.cpus, "memory_mb": app.memory_mb, "gpus": app.gpus},
        "kill_requested": app.kill_requested,
        "containers": [container_view(c) for c in containers],
        "gpu_usage": gpu_usage_view(app),
        "array": array_member_view(app),
        "url": f"{base_url}/api/v1/apps/{app.id}",
    }


def array_member_view(app: App) -> dict[str, Any] | None:
    """An array's member: its array, its index, its name there and its sweep values."""
    if app.array_id is None:
        return None
    return {
        "id": app.array_id,
        "index": app.array_index,
        "member": f"{app.array_id}_{app.array_index}",
        "values": json.loads(app.array_values) if app.array_values else {},
    }


def gpu_usage_view(app: App) -> dict[str, Any] | None:
    """What the app's supervisors measured of its GPUs in its current attempt
    (``server.usage_monitor``); None without GPUs or before any report."""
    rows = {r.container_id: r for r in app.gpu_usage}
    current = [c for c in app.containers if c.attempt == app.attempt]
    mine = [(c, rows[c.id]) for c in current if c.id in rows]
    if app.gpus <= 0 or not mine:
        return None
    used = sum(r.gpu_seconds_used for _, r in mine)
    observed = sum(r.seconds_sampled for _, r in mine) * app.gpus
    flagged = any(r.idle_flagged is not None for _, r in mine)
    since = idle_since([r.busy_at for _, r in mine]) if len(mine) == len(current) else None
    return {
        "samples": sum(r.samples for _, r in mine),
        "gpu_hours_used": round(used / 3600, 6),
        "utilisation_mean": None if observed <= 0 else round(100 * used / observed, 1),
        "idle": flagged,
        "idle_since": iso(since) if flagged else None,
        "containers": [
            {
                "index": c.index,
                "utilisation": None if r.utilisation is None else round(r.utilisation, 1),
                "memory_used_mb": r.memory_used_mb,
                "memory_peak_mb": r.memory_peak_mb,
                "gpus": json.loads(r.gpus),
                "gpu_hours_used": round(r.gpu_seconds_used / 3600, 6),
                "updated": iso(r.updated),
            }
            for c, r in mine
        ],
    }


def event_view(e: Event) -> dict[str, Any]:
    return {
        "time": iso(e.time),
        "kind": e.kind,
        "from_state": e.from_state,
        "to_state": e.to_state,
        "reason": e.reason,
    }


def _now() -> float:
    import time

    return time.time()
