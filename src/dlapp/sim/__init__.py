"""A trace-driven simulator: replays a job trace through the server's own ``decide``.

    trace (CSV) ──┐
    cluster ──────┼─> Simulator (simulated clock, events, the real policy) ─> SimResult
    queue tree ───┘       ▲ policy_tree: dlapp / fifo / fifo-skip       report ─> table, JSON, PNG

See ``dlapp simulate --help`` and docs/benchmarks.md ("Trace-driven simulator").
"""

from dlapp.sim.cluster import Admission, ClusterSpec, NodeGroup, split_gang
from dlapp.sim.engine import (
    Dropped,
    JobRecord,
    Progress,
    SimOptions,
    SimResult,
    SimulationError,
    Simulator,
    simulate,
)
from dlapp.sim.fairness import QueueFairness, finish_time_fairness
from dlapp.sim.policies import POLICIES, load_queues, policy_tree, tree_from_vc, vc_config
from dlapp.sim.report import build_report, jain, percentile, summary
from dlapp.sim.trace import SimInputError, Trace, TraceJob, load_trace

__all__ = [
    "POLICIES",
    "Admission",
    "ClusterSpec",
    "Dropped",
    "JobRecord",
    "NodeGroup",
    "Progress",
    "QueueFairness",
    "SimInputError",
    "SimOptions",
    "SimResult",
    "SimulationError",
    "Simulator",
    "Trace",
    "TraceJob",
    "build_report",
    "finish_time_fairness",
    "jain",
    "load_queues",
    "load_trace",
    "percentile",
    "policy_tree",
    "simulate",
    "split_gang",
    "summary",
    "tree_from_vc",
    "vc_config",
]
