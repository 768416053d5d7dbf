"""The executor base: the server's one door to where containers run."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from dlapp.config import ContainerPolicy
from dlapp.contract import ContainerCause, ContainerPlan, ContainerResult, Shipment
from dlapp.scheduler import Resources

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    name: str
    total: Resources  # gpus: its shareable GPUs plus the share of its MIG instances
    alive: bool = True
    gpu_ids: tuple[str, ...] = ()  # its shareable GPUs' device IDs, in index order
    model: str = ""  # its GPUs' model (H100), what specs' gpu_type and queues name
    gpu_memory_mb: int = 0  # of each shareable GPU; 0: not known
    mig: tuple[tuple[str, str, int], ...] = ()  # MIG instances: (uuid, profile, memory MiB)


@dataclass(frozen=True)
class Report:
    """Something that happened to one container since the last poll."""

    app_id: str
    attempt: int
    index: int
    kind: Literal["started", "exited", "lost"]
    info: dict[str, Any] | None = field(default_factory=dict)
    result: ContainerResult | None = None
    diagnostics: str = ""
    cause: ContainerCause = ContainerCause.LOST  # of a "lost" one: why (its result's otherwise)


UsageKey = tuple[str, int, int]  # app id, attempt, container index


class Executor(ABC):
    """Public methods log and check, then call one hook each."""

    # set by the server process: what to do when the cluster is lost for good (restart)
    on_cluster_lost: Callable[[str], None] | None = None
    # set by the scheduler (its ``wake``): called, from any thread, as soon as a container
    # may have started or ended, so that ``poll`` tells it now, not at the next cycle
    on_change: Callable[[], None] | None = None

    def nodes(self) -> list[NodeInfo]:
        return self._nodes()

    def start(
        self, plans: Sequence[ContainerPlan], node_ids: Sequence[str], request: Resources
    ) -> None:
        if len(plans) != len(node_ids) or not plans:
            raise ValueError("one node per container plan is needed")
        t0 = time.monotonic()
        self._start(plans, node_ids, request)
        logger.info(
            "started %s: %d container(s) on %s in %.2fs",
            plans[0].app_id,
            len(plans),
            ",".join(node_ids),
            time.monotonic() - t0,
        )

    def stop(self, app_id: str, grace: float, notice: dict[str, Any] | None = None) -> None:
        """End the app's containers: SIGTERM, ``grace`` seconds, SIGKILL (0: SIGKILL now).

        ``notice`` (reason, deadline) is written to each container's notice file first, so
        the app can tell a preemption from a kill and checkpoint before its deadline.
        """
        logger.info("stopping %s (grace %.1fs)", app_id, grace)
        self._stop(app_id, grace, notice)

    def poll(self) -> list[Report]:
        return self._poll()

    def usage(self) -> dict[UsageKey, dict[str, Any]]:
        """The latest GPU utilisation and staging reports (``gpu_usage.ContainerMeter``) of
        running containers that have one ready. Never blocks on a container. (A container's
        last report comes with its exit, in ``poll``'s ``Result.usage``.)"""
        return self._usage()

    def _usage(self) -> dict[UsageKey, dict[str, Any]]:
        return {}

    def _changed(self) -> None:
        """Something ``poll`` will report happened (from any thread): wake whoever polls."""
        callback = self.on_change
        if callback is not None:
            try:
                callback()
            except Exception:  # a wake that fails leaves the report to the next cycle
                logger.exception("waking the scheduler failed")

    def ship(self) -> dict[UsageKey, Shipment]:
        """What the supervisors of containers still staging or running have shipped since the
        last call (``Supervisor.ship``): their logs' new bytes, and their notes. Asks again
        without waiting; never blocks on a container."""
        return self._ship()

    def _ship(self) -> dict[UsageKey, Shipment]:
        return {}

    def read_log(
        self, app_id: str, index: int, stream: str, offset: int, length: int
    ) -> bytes | None:
        """Live log bytes of a running container; None when this executor does not hold it."""
        return self._read_log(app_id, index, stream, offset, length)

    def log_size(self, app_id: str, index: int, stream: str) -> int | None:
        """The size of a running container's live log; None when this executor does not
        hold it (or cannot tell: the kept log then answers)."""
        return self._log_size(app_id, index, stream)

    def _log_size(self, app_id: str, index: int, stream: str) -> int | None:
        return None

    def holds(self, app_id: str) -> bool:
        return self._holds(app_id)

    def forget(self) -> None:
        """Drop track of every app without stopping any (another server now leads)."""
        self._forget()

    def _forget(self) -> None:
        return None

    def adopt(self, app_id: str, attempt: int, node_ids: Sequence[str]) -> bool:
        """Take over an app started by an earlier server process, if its containers still
        run; False when they are gone (the app is then requeued)."""
        try:
            adopted = self._adopt(app_id, attempt, node_ids)
        except Exception:  # whatever went wrong, the app is requeued rather than left RUNNING
            logger.exception("taking over %s failed", app_id)
            adopted = False
        logger.info(
            "%s %s after a restart", "took over" if adopted else "could not take over", app_id
        )
        return adopted

    def _adopt(self, app_id: str, attempt: int, node_ids: Sequence[str]) -> bool:
        return False

    def remove_orphans(self, policy: ContainerPolicy, running: set[str]) -> None:
        """Remove, on every node, this cluster's containers whose app is not in ``running``
        (``runtime.docker.remove_orphans``); what was removed is logged. Never waits on a node.
        """
        self._remove_orphans(policy, running)

    def close(self) -> None:
        self._close()

    @abstractmethod
    def _nodes(self) -> list[NodeInfo]: ...

    @abstractmethod
    def _start(
        self, plans: Sequence[ContainerPlan], node_ids: Sequence[str], request: Resources
    ) -> None: ...

    @abstractmethod
    def _stop(self, app_id: str, grace: float, notice: dict[str, Any] | None) -> None: ...

    @abstractmethod
    def _poll(self) -> list[Report]: ...

    @abstractmethod
    def _read_log(
        self, app_id: str, index: int, stream: str, offset: int, length: int
    ) -> bytes | None: ...

    @abstractmethod
    def _holds(self, app_id: str) -> bool: ...

    @abstractmethod
    def _remove_orphans(self, policy: ContainerPolicy, running: set[str]) -> None: ...

    def _close(self) -> None:
        return None
