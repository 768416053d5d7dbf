"""Real Ray clusters for the multi-node and failure tests, and submitting a spec file to one.

``ray_head(gpus=...)`` starts a Ray head of its own with ``ray.cluster_utils.Cluster`` (more
nodes can be added to it); the ``ray_cluster`` fixture in conftest wraps it and takes its GPU
count as an indirect parameter. ``submit_spec`` sends a spec file and its workspace as the CLI
would.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dlapp.client import DlappClient
from dlapp.data.workspace import pack_workspace
from dlapp.spec import AppSpec

# Ray declares a node dead after these fail: seconds, not the default half a minute
FAST_HEALTH_CHECKS = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 500,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 3,
}


@contextmanager
def ray_head(gpus: int = 1, cpus: int = 4, **system_config: Any) -> Iterator[Any]:
    """A Ray cluster with one node (the head), declaring ``gpus`` GPUs; yields the Cluster."""
    from ray.cluster_utils import Cluster

    args: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "include_dashboard": False}
    if system_config:
        args["_system_config"] = system_config
    cluster = Cluster(initialize_head=True, head_node_args=args)
    try:
        yield cluster
    finally:
        cluster.shutdown()


def submit_spec(client: DlappClient, spec: Path, tmp: Path) -> str:
    """Submit the app of a spec file with its workspace packed; returns the app id."""
    s = AppSpec.from_file(spec)
    tarball = pack_workspace(Path(s.workspace.path), tmp / f"{spec.stem}.tar.gz").path
    app_id: str = client.submit(s, tarball)["id"]
    return app_id
