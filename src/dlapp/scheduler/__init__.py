"""The scheduler's pure core: a snapshot of the cluster and the policy that decides admissions.

``decide(heads, snapshot) -> list[Decision]`` takes the pending app heads and an immutable
snapshot and says, for each app, ``Admit`` (on which nodes) or ``Wait`` (where in line, and
why). No database, no Ray, no clock in here; the scheduling loop does the I/O around it.
"""

from dlapp.scheduler.policy import (
    Admit,
    Decision,
    Wait,
    check_feasible,
    decide,
    explain_wait,
    place_gang,
)
from dlapp.scheduler.snapshot import AppHead, NodeView, Resources, Snapshot

__all__ = [
    "Admit",
    "AppHead",
    "Decision",
    "NodeView",
    "Resources",
    "Snapshot",
    "Wait",
    "check_feasible",
    "decide",
    "explain_wait",
    "place_gang",
]
