"""The scheduler's pure core: a snapshot of the cluster, the queue tree, and the policy.

``decide(heads, snapshot) -> list[Decision]`` takes the pending app heads and an immutable
snapshot (nodes, running apps, queue tree, the time) and says, for each app, ``Admit`` (on
which nodes) or ``Wait`` (where in line, why, and maybe when), plus any ``Preempt``. No
database, no Ray, no clock in here; the scheduling loop does the I/O around it.
"""

from dlapp.scheduler.placement import (
    FreeIndex,
    check_feasible,
    explain_free,
    explain_wait,
    place_gang,
)
from dlapp.scheduler.policy import Admit, Decision, Preempt, Wait, decide, share
from dlapp.scheduler.queues import (
    DEFAULT_TREE,
    Limits,
    Queue,
    QueueConfigError,
    QueueTree,
    parse_tree,
)
from dlapp.scheduler.snapshot import AppHead, NodeView, Resources, RunningApp, Snapshot

__all__ = [
    "DEFAULT_TREE",
    "Admit",
    "AppHead",
    "Decision",
    "FreeIndex",
    "Limits",
    "NodeView",
    "Preempt",
    "Queue",
    "QueueConfigError",
    "QueueTree",
    "Resources",
    "RunningApp",
    "Snapshot",
    "Wait",
    "check_feasible",
    "decide",
    "explain_free",
    "explain_wait",
    "parse_tree",
    "place_gang",
    "share",
]
