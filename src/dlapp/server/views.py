"""How apps look in API answers (and so in ``dlapp status --json``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

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
        "url": f"{base_url}/api/v1/apps/{app.id}",
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
