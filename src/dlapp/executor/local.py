"""An executor that runs supervisors in threads of this process (tests, single machines)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from typing import Any

from dlapp.errors import DlappError
from dlapp.executor.base import Executor, NodeInfo, Report, UsageKey
from dlapp.scheduler import Resources
from dlapp.supervisor import ContainerPlan, Supervisor


class LocalExecutor(Executor):
    def __init__(self, total: Resources, node_name: str = "local") -> None:
        super().__init__()
        self.node = NodeInfo(
            node_id=node_name,
            name=node_name,
            total=total,
            gpu_ids=tuple(str(i) for i in range(total.gpus)),
        )
        self._free_gpus = list(self.node.gpu_ids)
        self._sups: dict[tuple[str, int], Supervisor] = {}
        self._gpus: dict[tuple[str, int], list[str]] = {}
        self._reports: queue.Queue[Report] = queue.Queue()
        self._lock = threading.Lock()

    def _nodes(self) -> list[NodeInfo]:
        return [self.node]

    def _start(
        self, plans: Sequence[ContainerPlan], node_ids: Sequence[str], request: Resources
    ) -> None:
        for plan in plans:
            with self._lock:
                gpus = [self._free_gpus.pop(0) for _ in range(request.gpus)]
                sup = Supervisor(plan)
                self._sups[(plan.app_id, plan.index)] = sup
                self._gpus[(plan.app_id, plan.index)] = gpus
            threading.Thread(target=self._run, args=(sup, gpus), daemon=True).start()

    def _run(self, sup: Supervisor, gpus: list[str]) -> None:
        plan = sup.plan
        try:
            info = sup.start(gpus, self.node.name)
            self._reports.put(Report(plan.app_id, plan.attempt, plan.index, "started", info=info))
        except (DlappError, OSError) as exc:
            self._reports.put(
                Report(plan.app_id, plan.attempt, plan.index, "started", diagnostics=str(exc))
            )
        result = sup.wait()
        with self._lock:
            self._free_gpus.extend(self._gpus.pop((plan.app_id, plan.index), []))
            self._sups.pop((plan.app_id, plan.index), None)
        self._reports.put(Report(plan.app_id, plan.attempt, plan.index, "exited", result=result))

    def _stop(self, app_id: str, grace: float, notice: dict[str, Any] | None) -> None:
        with self._lock:
            sups = [s for (a, _), s in self._sups.items() if a == app_id]
        for sup in sups:
            threading.Thread(target=sup.stop, args=(grace, notice), daemon=True).start()

    def _poll(self) -> list[Report]:
        out: list[Report] = []
        while True:
            try:
                out.append(self._reports.get_nowait())
            except queue.Empty:
                return out

    def _read_log(
        self, app_id: str, index: int, stream: str, offset: int, length: int
    ) -> bytes | None:
        sup = self._sups.get((app_id, index))
        return None if sup is None else sup.read_log(stream, offset, length)

    def _usage(self) -> dict[UsageKey, dict[str, Any]]:
        with self._lock:
            sups = list(self._sups.values())
        return {(s.plan.app_id, s.plan.attempt, s.plan.index): s.usage() for s in sups}

    def _holds(self, app_id: str) -> bool:
        return any(a == app_id for a, _ in self._sups)
