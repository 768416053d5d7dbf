"""Helpers for the tests that drive a real dockerd: the minimal image, and label queries.

Without a docker CLI and a daemon that answers, those tests are skipped, unless
``DLAPP_REQUIRE_DOCKER=1`` (CI sets it: there they must run), which makes that a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from dlapp import images
from dlapp.runtime.docker import docker_problem

MINIMAL = "dlapp/minimal:latest"


def require_docker() -> None:
    """Skip (or fail, under DLAPP_REQUIRE_DOCKER=1) without docker; build the minimal image."""
    problem = docker_problem()
    if problem is not None:
        if os.environ.get("DLAPP_REQUIRE_DOCKER") == "1":
            pytest.fail(f"DLAPP_REQUIRE_DOCKER=1 but docker is not usable: {problem}")
        pytest.skip(f"docker is not usable here: {problem}")
    images.build("minimal")


def containers(label: str) -> list[str]:
    """Names of all containers, running or not, with ``label`` (``key`` or ``key=value``)."""
    done = subprocess.run(
        ["docker", "ps", "--all", "--filter", f"label={label}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()


def inspect(name: str) -> dict[str, Any]:
    done = subprocess.run(["docker", "inspect", name], capture_output=True, text=True, check=True)
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found[0]


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.1)
    return check()
