"""The scheduler's pure core: a snapshot of the cluster, the queue tree, and the policy.

``decide(heads, snapshot) -> list[Decision]`` takes the pending app heads and an immutable
snapshot (nodes, running apps, queue tree, the time) and says, for each app, ``Admit`` (on
which nodes) or ``Wait`` (where in line, why, and maybe when), plus any ``Preempt``. No
database, no Ray, no clock in here; the scheduling loop does the I/O around it.
"""

from dlapp.scheduler.gpus import TaskShape, Workload, gpu_model, mig_profile, mig_share, workload
from dlapp.scheduler.ordering import Backlog
from dlapp.scheduler.placement import (
    FreeIndex,
    check_feasible,
    default_workload,
    describe_request,
    explain_free,
    place_gang,
)
from dlapp.scheduler.policy import (
    Admit,
    Decision,
    Preempt,
    Wait,
    decide,
    decide_changes,
    share,
)
from dlapp.scheduler.queues import (
    DEFAULT_TREE,
    Limits,
    Queue,
    QueueConfigError,
    QueueTree,
    parse_tree,
)
from dlapp.scheduler.snapshot import (
    PLACEMENTS,
    AppHead,
    NodeView,
    Resources,
    RunningApp,
    Snapshot,
)

__all__ = [
    "DEFAULT_TREE",
    "PLACEMENTS",
    "Admit",
    "AppHead",
    "Backlog",
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
    "TaskShape",
    "Wait",
    "Workload",
    "check_feasible",
    "decide",
    "decide_changes",
    "default_workload",
    "describe_request",
    "explain_free",
    "gpu_model",
    "mig_profile",
    "mig_share",
    "parse_tree",
    "place_gang",
    "share",
    "workload",
]
