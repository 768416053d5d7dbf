"""Node states admins set: ``drain`` (no new apps; running ones finish), ``cordon`` (no new
apps; running ones are evicted now: SIGTERM with a notice, the grace, then back to their
queue, not counted against their attempts), ``ready`` (both undone). Kept in the store, by
node id or name, so they survive a restart."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from dlapp.errors import BadRequest, NotFoundError
from dlapp.server.context import Context
from dlapp.status import StopReason
from dlapp.store import audit, repo
from dlapp.store.models import Meta

KEY = "node_states"
STATES = ("ready", "drain", "cordon")


def states(session: Session) -> dict[str, str]:
    """``{node_id: state}`` for nodes that are not ready."""
    row = session.get(Meta, KEY)
    data: dict[str, str] = json.loads(row.value) if row else {}
    return data


def set_state(ctx: Context, session: Session, node: str, state: str, by: str) -> dict[str, Any]:
    if state not in STATES:
        raise BadRequest(f"node state must be one of {', '.join(STATES)}, not {state!r}")
    match = [n for n in ctx.nodes() if node in (n.node_id, n.name)]
    if len(match) != 1:
        known = ", ".join(f"{n.name} ({n.node_id[:12]})" for n in ctx.nodes())
        what = "no node" if not match else "more than one node"
        raise NotFoundError(f"{what} matches {node!r}; nodes: {known}")
    target = match[0]
    current = states(session)
    if state == "ready":
        current.pop(target.node_id, None)
    else:
        current[target.node_id] = state
    row = session.get(Meta, KEY)
    if row is None:
        session.add(Meta(key=KEY, value=json.dumps(current)))
    else:
        row.value = json.dumps(current)
    now = ctx.clock()
    evicted = []
    if state == "cordon":
        for app, c in repo.allocations(session):
            if c.node_id == target.node_id and app.kill_requested is None and app.id not in evicted:
                app.kill_requested = StopReason.EVICT  # the scheduler stops it, then requeues
                repo.add_event(
                    session,
                    app.id,
                    "preemption",
                    f"evicted: node {target.name} was cordoned by {by}",
                    now,
                )
                evicted.append(app.id)
    audit.record(session, by, f"node.{state}", target.node_id, now, target.name)
    session.commit()
    return {"node_id": target.node_id, "name": target.name, "state": state, "evicted": evicted}
