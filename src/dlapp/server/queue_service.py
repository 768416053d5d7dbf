"""Queues as users and admins see them: admission to a queue at submit, and the tree's state."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy.orm import Session

from dlapp.errors import Forbidden, InfeasibleError
from dlapp.scheduler import Resources, share
from dlapp.server.context import Context
from dlapp.server.limits import pending_limit
from dlapp.spec import AppSpec
from dlapp.status import AppState
from dlapp.store import repo
from dlapp.store.models import App


def cluster_total(ctx: Context) -> Resources:
    return sum((n.total for n in ctx.nodes() if n.alive), Resources())


def resolve_queue(ctx: Context, spec: AppSpec, user: str, groups: frozenset[str]) -> AppSpec:
    """The spec with its queue made a full leaf path, after the queue's checks: it exists, the
    user may submit to it, and the app fits under its maximum and the user limit at all."""
    tree = ctx.queues.tree
    leaf = tree.leaf(spec.queue)
    if not leaf.submit_acl.allows(user, groups):
        raise Forbidden(
            f"{user} may not submit to queue {leaf.path} "
            f"(its submit ACL allows: {leaf.submit_acl.describe()})"
        )
    limits = tree.resolve(cluster_total(ctx))
    need = spec_request(spec).scaled(spec.num_containers)
    for path in tree.ancestors(leaf.path):
        maximum = limits[path].maximum
        if not need.fits_in(maximum):
            raise InfeasibleError(
                f"the app needs {need.describe()} at once, over the maximum of queue {path} "
                f"({maximum.describe()})"
            )
    cap = tree.user_cap(leaf.path, limits[leaf.path].maximum)
    if not need.fits_in(cap):
        raise InfeasibleError(
            f"the app needs {need.describe()} at once, over the per-user limit of queue "
            f"{leaf.path} ({cap.describe()})"
        )
    return spec.model_copy(update={"queue": leaf.path})


def spec_request(spec: AppSpec) -> Resources:
    """What each container of ``spec`` asks for, as the scheduler counts it."""
    r = spec.resources
    return Resources(r.cpus, r.memory_mb, r.gpu_share)


def app_request(app: App | repo.Waiting | repo.Live) -> Resources:
    """What each container of a stored app holds, as the scheduler counts it."""
    return Resources(app.cpus, app.memory_mb, app.gpus)


def _res(r: Resources) -> dict[str, float | int]:
    return {"cpus": round(r.cpus, 3), "memory_mb": r.memory_mb, "gpus": r.gpus}


def queues_view(ctx: Context, session: Session) -> dict[str, Any]:
    """The tree: guaranteed / maximum / used / pending per resource, and users' shares."""
    config = ctx.queues
    tree = config.tree
    total = cluster_total(ctx)
    limits = tree.resolve(total)
    used: dict[str, Resources] = defaultdict(Resources)
    pending: dict[str, Resources] = defaultdict(Resources)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"running": 0, "pending": 0})
    users: dict[str, dict[str, Resources]] = defaultdict(lambda: defaultdict(Resources))
    for app in repo.live_apps(session):
        need = app_request(app).scaled(app.num_containers)
        chain = tree.ancestors(app.queue) if app.queue in tree.by_path else [app.queue]
        running = app.state == AppState.RUNNING.value
        for path in chain:
            if running:
                used[path] = used[path] + need
                users[path][app.user] = users[path][app.user] + need
            else:
                pending[path] = pending[path] + need
            counts[path]["running" if running else "pending"] += 1
    rows = []
    for q in tree.root.walk():
        lim = limits[q.path]
        rows.append(
            {
                "path": q.path,
                "leaf": q.is_leaf,
                "configured": True,
                "guaranteed": _res(lim.guaranteed),
                "maximum": _res(lim.maximum),
                "used": _res(used[q.path]),
                "pending": _res(pending[q.path]),
                "running_apps": counts[q.path]["running"],
                "pending_apps": counts[q.path]["pending"],
                "users": {
                    u: {**_res(r), "share_of_maximum": round(_share(r, lim.maximum), 4)}
                    for u, r in sorted(users[q.path].items())
                },
                "user_limit": _res(tree.user_cap(q.path, lim.maximum)) if q.is_leaf else None,
                # apps it may hold waiting at once (0: no cap), as submissions are held to it
                "max_pending_apps": pending_limit(
                    tree, q.path, q.path if q.is_leaf else "", ctx.settings
                )[0],
                "preemptible": q.preemptible,
                "ordering": q.ordering,
                "submit_acl": q.submit_acl.describe(),
                "admin_acl": q.admin_acl.describe(),
            }
        )
    for path in sorted(set(counts) - set(tree.by_path)):  # apps left in a removed queue
        rows.append(
            {
                "path": path,
                "leaf": True,
                "configured": False,
                "used": _res(used[path]),
                "pending": _res(pending[path]),
                "running_apps": counts[path]["running"],
                "pending_apps": counts[path]["pending"],
            }
        )
    return {
        "source": tree.source,
        "error": config.error,
        "preemption": {
            "enabled": tree.preemption,
            "grace_s": tree.preemption_grace_s,
            "past_guarantee": tree.preempt_past_guarantee,
        },
        "cluster": _res(total),
        "queues": rows,
    }


def _share(r: Resources, of: Resources) -> float:
    return share(r, of)
