"""The invariant after any fault: the containers running on the machine are exactly the
containers the store says are RUNNING.

The machine's side is read from two places, as an operator would look:
  - the process table: a container's guard and every process of the app carry
    ``DLAPP_APP_ID`` and ``CONTAINER_INDEX`` in their environment (the supervisor puts them in
    the container's environment; the ``process`` runtime's guard and ``docker run`` inherit it);
  - docker: containers carry the labels ``dlapp.app`` and ``dlapp.index``.
The store's side comes from the API's app list (``containers`` of the current attempt).

Only apps the server knows are compared: other servers on the same machine run apps of their
own. Reports lag by a scheduling cycle (a container that just exited is still RUNNING in the
store for a moment), so the check samples until both sides agree, and fails with what differs
when they never do within ``settle_s``: a leaked process or container, or a RUNNING row that
nothing backs.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ContainerKey = tuple[str, int]  # (app id, container index)
AppsFetcher = Callable[[], list[dict[str, Any]]]  # the API's app list, every user's apps


@dataclass(frozen=True)
class Mismatch:
    """What differs between the machine and the store at one sample."""

    on_machine_only: dict[ContainerKey, list[str]]  # key -> where it was seen
    in_store_only: set[ContainerKey]

    def __bool__(self) -> bool:
        return bool(self.on_machine_only or self.in_store_only)

    def __str__(self) -> str:
        lines = []
        for key, seen in sorted(self.on_machine_only.items()):
            lines.append(f"  running on the machine, not RUNNING in the store: {key}: {seen}")
        for key in sorted(self.in_store_only):
            lines.append(f"  RUNNING in the store, not running on the machine: {key}")
        return "\n".join(lines)


def processes_by_container() -> dict[ContainerKey, list[str]]:
    """Live processes that belong to a dlapp container, by (app id, index)."""
    found: dict[ContainerKey, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_bytes()
        except OSError:  # gone meanwhile, or a kernel thread
            continue
        if stat[stat.rindex(b")") + 2 :].split()[:1] in ([b"Z"], [b"X"]):
            continue  # a zombie runs nothing
        env = dict(v.split(b"=", 1) for v in environ if b"=" in v)
        app_id, index = env.get(b"DLAPP_APP_ID"), env.get(b"CONTAINER_INDEX")
        if app_id is None or index is None or not index.isdigit():
            continue
        key = (app_id.decode(), int(index))
        found.setdefault(key, []).append(f"pid {entry.name}")
    return found


def docker_containers(docker: str = "docker") -> dict[ContainerKey, list[str]]:
    """Running docker containers labelled as dlapp containers, by (app id, index)."""
    if shutil.which(docker) is None:
        return {}
    fmt = '{{.Names}}\t{{.Label "dlapp.app"}}\t{{.Label "dlapp.index"}}'
    out = subprocess.run(
        [docker, "ps", "--filter", "label=dlapp.app", "--format", fmt],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if out.returncode != 0:  # no daemon here: nothing runs in docker
        return {}
    found: dict[ContainerKey, list[str]] = {}
    for line in out.stdout.splitlines():
        name, app_id, index = [*line.split("\t"), "", ""][:3]
        if app_id and index.isdigit():
            found.setdefault((app_id, int(index)), []).append(f"docker {name}")
    return found


def on_machine(app_ids: Iterable[str]) -> dict[ContainerKey, list[str]]:
    """Containers of these apps running on this machine (processes and docker)."""
    wanted = set(app_ids)
    seen: dict[ContainerKey, list[str]] = {}
    for source in (processes_by_container(), docker_containers()):
        for key, where in source.items():
            if key[0] in wanted:
                seen.setdefault(key, []).extend(where)
    return seen


def running_in_store(apps: list[dict[str, Any]]) -> set[ContainerKey]:
    """The RUNNING containers of RUNNING apps, from the API's app views."""
    return {
        (a["id"], int(c["index"]))
        for a in apps
        if a["state"] == "RUNNING"
        for c in a["containers"]
        if c["state"] == "RUNNING"
    }


def compare(apps: list[dict[str, Any]]) -> Mismatch:
    """One sample: the machine against the store's app list ``apps``."""
    store = running_in_store(apps)
    machine = on_machine(a["id"] for a in apps)
    return Mismatch(
        {k: v for k, v in machine.items() if k not in store},
        {k for k in store if k not in machine},
    )


def assert_running_matches(fetch_apps: AppsFetcher, settle_s: float = 30.0) -> int:
    """Sample until the machine and the store agree; returns how many containers run.

    Fails, naming every difference, when they still disagree after ``settle_s``."""
    deadline = time.monotonic() + settle_s
    while True:
        apps = fetch_apps()
        mismatch = compare(apps)
        if not mismatch:
            return len(running_in_store(apps))
        if time.monotonic() > deadline:
            raise AssertionError(
                f"running containers differ from the store after {settle_s:g}s:\n{mismatch}"
            )
        time.sleep(0.25)
