"""The runtime factory: the runtime an app spec names, for this machine.

It lives apart from ``base`` so that the base knows no concrete runtime; the runtimes import
the base, and this module imports them.
"""

from __future__ import annotations

from dlapp.config import ContainerPolicy, Engine
from dlapp.errors import SpecError
from dlapp.runtime import docker
from dlapp.runtime.base import Runtime
from dlapp.runtime.podman import PodmanRuntime
from dlapp.runtime.process import ProcessRuntime

AVAILABLE_RUNTIMES = ("process", "docker", "podman")  # containers: where their engine works


def get_runtime(name: str, policy: ContainerPolicy | None = None) -> Runtime:
    """The runtime called ``name`` (the app spec's ``runtime`` field); a SpecError if this
    machine cannot run it (docker: no docker CLI, or its daemon does not answer; podman: no
    podman, or ``podman info`` fails)."""
    if name == "process":
        return ProcessRuntime()
    if name in ("docker", "podman"):
        policy = policy or ContainerPolicy()
        engine: Engine = "podman" if name == "podman" else "docker"
        problem = docker.engine_problem(engine, policy.command(engine))
        if problem:
            raise SpecError(f"runtime {name!r} is not available here: {problem}")
        return PodmanRuntime(policy) if engine == "podman" else docker.DockerRuntime(policy)
    available = ", ".join(AVAILABLE_RUNTIMES)
    raise SpecError(f"unknown runtime {name!r}; available: {available}")
