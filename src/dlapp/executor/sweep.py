"""The orphan sweep on every node: a Ray task pinned to each alive node removes that node's
containers of apps that are not running.

Containers carry their node's Ray id (label ``dlapp.node``), so each node takes only its own,
even where several Ray nodes share one docker daemon (a test cluster on one machine). The
task needs no CPU (it runs on a node whose CPUs apps hold) and spares a container that the
node's agent (or a supervisor actor of its own) runs: an app admitted after the list of running
apps was read.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from dlapp.config import ContainerPolicy, Engine
from dlapp.contract import container_name
from dlapp.executor.agent import existing_agent
from dlapp.runtime.docker import Labelled, remove_orphans

logger = logging.getLogger(__name__)
ENGINES: tuple[Engine, ...] = ("docker", "podman")
AGENT_WAIT_S = 10.0  # the node's agent asked whether it runs a container


def sweep_node(policy: dict[str, Any], running: list[str], namespace: str) -> tuple[str, list[str]]:
    """Remove the orphans of the node this runs on, under each engine; ``(node id, names)``."""
    checked = ContainerPolicy.model_validate(policy)
    node_id = ray.get_runtime_context().get_node_id()
    agent = existing_agent(node_id, namespace)

    def supervised(c: Labelled) -> bool:
        if agent is not None:
            with contextlib.suppress(RayError):
                if ray.get(agent.supervises.remote(c.app_id, c.index), timeout=AGENT_WAIT_S):
                    return True
        try:  # a supervisor actor of its own, named as ContainerPlan.actor_name
            ray.get_actor(container_name(c.app_id, c.index), namespace=namespace)
        except ValueError:  # no such live actor
            return False
        return True

    removed: list[str] = []
    for engine in ENGINES:
        removed += remove_orphans(checked, set(running), engine, node_id, supervised)
    return node_id, removed


_sweep_task = ray.remote(num_cpus=0, max_retries=0)(sweep_node)


def sweep_every_node(policy: ContainerPolicy, running: set[str], namespace: str) -> list[Any]:
    """Start ``sweep_node`` on every alive node (never waits); the tasks' refs."""
    refs = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        node_id = node["NodeID"]
        strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
        refs.append(
            _sweep_task.options(scheduling_strategy=strategy).remote(
                policy.model_dump(mode="json"), sorted(running), namespace
            )
        )
    return refs


def collect(refs: list[Any]) -> list[Any]:
    """Log what the finished sweeps removed; the refs still running."""
    if not refs:
        return refs
    done, pending = ray.wait(refs, num_returns=len(refs), timeout=0)
    for ref in done:
        with contextlib.suppress(RayError):  # a node lost meanwhile: the next sweep retries
            node_id, removed = ray.get(ref)
            if removed:
                logger.warning("node %s: removed orphan containers %s", node_id[:12], removed)
    return list(pending)
