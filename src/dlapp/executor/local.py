"""An executor that runs supervisors in threads of this process (tests, single machines)."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Sequence
from typing import Any

from dlapp.config import ContainerPolicy
from dlapp.contract import SHIP_BYTES, ContainerPlan, Shipment
from dlapp.errors import DlappError
from dlapp.executor.base import Executor, NodeInfo, Report, UsageKey
from dlapp.node.supervisor import Supervisor
from dlapp.runtime.docker import remove_orphans
from dlapp.runtime.gpus import GpuDevice
from dlapp.scheduler import Resources
from dlapp.spec import mig_share


class LocalExecutor(Executor):
    """``total``: the machine's CPUs, memory and GPUs. ``gpus``: what discovery found of its
    GPUs (their model, memory and MIG instances); by default ``total.gpus`` GPUs alike."""

    def __init__(
        self, total: Resources, node_name: str = "local", gpus: Sequence[GpuDevice] = ()
    ) -> None:
        whole = [g for g in gpus if not g.mig_mode]
        mig = tuple((m.uuid, m.profile, m.memory_mb) for g in gpus for m in g.mig)
        ids = [str(g.index) for g in whole] if gpus else [str(i) for i in range(int(total.gpus))]
        if gpus:  # the GPUs discovery found, whatever total says: MIG instances as their share
            total = Resources(
                total.cpus,
                total.memory_mb,
                round(len(ids) + sum(mig_share(p) for _, p, _ in mig), 9),
            )
        self.node = NodeInfo(
            node_id=node_name,
            name=node_name,
            total=total,
            gpu_ids=tuple(ids),
            model=whole[0].model if whole else (gpus[0].model if gpus else ""),
            gpu_memory_mb=whole[0].memory_mb if whole else 0,
            mig=mig,
        )
        self._free_gpus = list(self.node.gpu_ids)
        self._sups: dict[tuple[str, int], Supervisor] = {}
        self._gpus: dict[tuple[str, int], list[str]] = {}
        self._reports: queue.Queue[Report] = queue.Queue()
        self._shipped: dict[tuple[str, int], dict[str, int]] = {}  # log offsets shipped
        self._lock = threading.Lock()

    def _nodes(self) -> list[NodeInfo]:
        return [self.node]

    def _start(
        self, plans: Sequence[ContainerPlan], node_ids: Sequence[str], request: Resources
    ) -> None:
        for plan in plans:
            with self._lock:
                if plan.gpu_ids:  # dlapp's choice: devices (maybe shared), MIG instances
                    gpus = list(plan.gpu_ids)
                else:  # whole GPUs, the first free ones
                    gpus = [self._free_gpus.pop(0) for _ in range(math.ceil(request.gpus))]
                sup = Supervisor(plan)
                self._sups[(plan.app_id, plan.index)] = sup
                self._gpus[(plan.app_id, plan.index)] = gpus
            threading.Thread(target=self._run, args=(sup, gpus), daemon=True).start()

    def _run(self, sup: Supervisor, gpus: list[str]) -> None:
        plan = sup.plan
        try:
            info = sup.start(gpus, self.node.name)
            self._report(Report(plan.app_id, plan.attempt, plan.index, "started", info=info))
        except (DlappError, OSError) as exc:
            self._report(
                Report(plan.app_id, plan.attempt, plan.index, "started", diagnostics=str(exc))
            )
        result = sup.wait()
        with self._lock:
            held = self._gpus.pop((plan.app_id, plan.index), [])
            if not plan.gpu_ids:
                self._free_gpus.extend(held)
            self._sups.pop((plan.app_id, plan.index), None)
        self._report(Report(plan.app_id, plan.attempt, plan.index, "exited", result=result))

    def _report(self, report: Report) -> None:
        self._reports.put(report)
        self._changed()

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

    def _log_size(self, app_id: str, index: int, stream: str) -> int | None:
        sup = self._sups.get((app_id, index))
        return None if sup is None else sup.log_size(stream)

    def _ship(self) -> dict[UsageKey, Shipment]:
        with self._lock:
            sups = list(self._sups.items())
            self._shipped = {k: v for k, v in self._shipped.items() if k in self._sups}
        out = {}
        for key, sup in sups:
            offsets = self._shipped.setdefault(key, {})
            shipment = sup.ship(offsets, SHIP_BYTES)
            for stream, (offset, data) in shipment.logs.items():
                offsets[stream] = offset + len(data)
            if shipment.logs or shipment.notes:
                out[(sup.plan.app_id, sup.plan.attempt, sup.plan.index)] = shipment
        return out

    def _usage(self) -> dict[UsageKey, dict[str, Any]]:
        with self._lock:
            sups = list(self._sups.values())
        return {(s.plan.app_id, s.plan.attempt, s.plan.index): s.usage() for s in sups}

    def _holds(self, app_id: str) -> bool:
        return any(a == app_id for a, _ in self._sups)

    def _remove_orphans(self, policy: ContainerPolicy, running: set[str]) -> None:
        for engine in ("docker", "podman"):  # the one node is this machine
            remove_orphans(policy, running, engine)
