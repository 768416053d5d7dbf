"""The Ray executor: containers start through each node's agent, or as actors of their own.

dlapp decides where an app runs, and on which GPU devices (the store's GPU map). Two ways to
start there (``start_path``):

- ``agent`` (the default): the node's long-lived agent actor (``agent.py``) runs the
  container's supervisor in a thread of its own; one method call, nothing created per app.
- ``actor``: a placement group per app, each bundle pinned to the chosen node by its node-id
  label, and a detached named supervisor actor per container holding its CPUs, memory and
  GPUs in Ray (``ray.get_gpu_ids()`` inside it gives the device IDs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from dlapp.config import ContainerPolicy, ServerSettings
from dlapp.contract import (
    NODE_LOST,
    NOT_STARTED,
    SHIP_BYTES,
    ContainerCause,
    ContainerPlan,
    ContainerResult,
    Shipment,
    container_name,
)
from dlapp.errors import DlappError
from dlapp.executor import ray_network, sweep
from dlapp.executor.agent import AgentContainer, agent_on, existing_agent
from dlapp.executor.base import Executor, NodeInfo, Report, UsageKey
from dlapp.executor.head import HeadWatch, wait_for_head
from dlapp.node.supervisor import Supervisor
from dlapp.runtime.gpus import discover, from_ray_resources, mig_resource, ray_resources
from dlapp.scheduler import Resources
from dlapp.spec import mig_share

logger = logging.getLogger(__name__)
NAMESPACE = "dlapp"
MB = 1024 * 1024
NODE_ID_LABEL = "ray.io/node-id"
HARD_KILL_AFTER_S = 20.0
ADOPT_TIMEOUT_S = 30.0  # supervisors of an app taken over must answer within this
RAYLET_WATCH_S = 0.5  # a stop not obeyed within grace + this: the supervisor is killed
SHIP_WAIT_S = 5.0  # a shipment asked of a container that has just started or ended: its wait


def _idle() -> None:
    """Nothing. Run on a node, it leaves an idle worker process there, which Ray hands to the
    next actor this server creates on that node: a supervisor then starts without waiting for
    a Python process to start and import Ray (about half a second of each launch)."""


_idle_task = ray.remote(num_cpus=0, max_retries=0)(_idle)


def _gpu_resources(request: Resources, plan: ContainerPlan) -> dict[str, float]:
    """What one container asks of Ray for its GPUs: its share of ``GPU`` (Ray hands fractions
    of one device to several actors, never to an actor holding it whole), or, for MIG, the
    instances dlapp chose for it (one resource each, declared by its node)."""
    gpus = plan.spec.get("resources", {}).get("gpus")
    if isinstance(gpus, dict):  # {mig: profile, count: n}
        return {mig_resource(str(gpus["mig"]), uuid): 1.0 for uuid in plan.gpu_ids}
    return {"GPU": float(request.gpus)} if request.gpus else {}


def warm(node_id: str) -> None:
    """Leave one idle worker on ``node_id`` (fire and forget; a node gone meanwhile is fine)."""
    with contextlib.suppress(RayError, ValueError):
        _idle_task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=True)
        ).remote()


class RaySupervisor(Supervisor):
    """The supervisor as it runs inside its Ray actor.

    It starts its container by itself, from its constructor: a detached actor's creation is
    Ray's to finish, while a method call belongs to the server that made it and dies with it.
    A server killed after creating the actor but before the actor came up would otherwise
    leave a supervisor that never starts, and an app STARTING for ever after the takeover."""

    def __init__(self, plan: ContainerPlan) -> None:
        super().__init__(plan)
        self.node_lost = ""  # why the container ended, when its node went
        self._watch_raylet()
        gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        node = ray.util.get_node_ip_address()
        threading.Thread(
            target=self._start_in_background, args=(gpu_ids, node), name="dlapp-start", daemon=True
        ).start()

    def _start_in_background(self, gpu_ids: list[str], node: str) -> None:
        try:
            self.start(gpu_ids, node)
        except BaseException:  # kept as the start error: start_here answers with it
            logger.exception("%s could not start", self.plan.actor_name)

    def plan_of(self) -> ContainerPlan:
        return self.plan

    def start_here(self) -> dict[str, Any]:
        """What ``start`` returned, once it is done; raises with the reason when it failed."""
        info = self.started_info()
        if info is None:
            raise DlappError(self._start_error or "did not start")
        return info

    def wait(self) -> ContainerResult:
        """The container's result; one ended because its node went says so, whatever its exit
        code, so that the app is requeued (a result can still reach the server meanwhile)."""
        result = super().wait()
        if self.node_lost:
            return replace(result, diagnostics=self.node_lost, cause=ContainerCause.NODE_LOST)
        return result

    def _watch_raylet(self) -> None:
        """Fate-share with the node: a worker outlives a raylet that was SIGKILLed, so when
        this process's parent (the raylet) goes, the container is killed and the process ends,
        and no GPU stays held by a node Ray has already declared dead."""
        raylet = os.getppid()

        def watch() -> None:
            while os.getppid() == raylet:
                time.sleep(RAYLET_WATCH_S)
            logger.error("%s: the raylet is gone; killing the container", self.plan.actor_name)
            node = ray.util.get_node_ip_address()
            self.node_lost = f"{NODE_LOST}: {node} (its raylet is gone)"
            self.stop(0.0)
            os._exit(1)

        threading.Thread(target=watch, name="dlapp-raylet-watch", daemon=True).start()


@dataclass
class _Tracked:
    plan: ContainerPlan
    node_id: str
    actor: Any
    start_ref: Any
    wait_ref: Any
    started: bool = False
    done: bool = False
    stop_deadline: float | None = None
    up_ref: Any = None  # answered once the supervisor actor runs (its bundle placed)
    usage_ref: Any = None  # an asked, not yet answered ``usage()``
    ship_ref: Any = None  # an asked, not yet answered ``ship()``
    shipped: dict[str, int] = field(default_factory=dict)  # log offsets shipped so far


@dataclass
class _AppRun:
    pg: PlacementGroup | None  # None: started through the nodes' agents
    containers: list[_Tracked] = field(default_factory=list)
    start_deadline: float | None = None  # monotonic; None once every supervisor is up


def private_ray_files(home: Path | None = None) -> list[Path]:
    """Ray writes its token file 0644: make it 0600, in a 0700 directory. Returns the paths
    changed."""
    changed: list[Path] = []
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or (home or Path.home()) / ".ray/auth_token")
    for path, mode in ((token, 0o600), (token.parent, 0o700)):
        with contextlib.suppress(OSError):
            st = path.lstat()
            mine = st.st_uid == os.geteuid() and not stat.S_ISLNK(st.st_mode)
            if mine and stat.S_IMODE(st.st_mode) != mode:
                os.chmod(path, mode)
                changed.append(path)
    return changed


def private_temp_dir() -> Path:
    """Where an embedded Ray keeps its sessions (logs, ports, sockets): Ray makes its temp and
    session directories 0777, again each time a worker starts, so they live inside a fresh
    0700 directory of our own that no other account can enter. Short: Ray's sockets go under
    it, and a socket's path has at most 107 bytes."""
    return Path(tempfile.mkdtemp(prefix="dlapp-ray-")) / "r"


class RayExecutor(Executor):
    def __init__(self, settings: ServerSettings, environ: Mapping[str, str] = os.environ) -> None:
        if settings.ray_require_auth and environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
            # an unauthenticated Ray runs anyone's code (CVE-2023-48022, "ShadowRay")
            raise DlappError(
                "Ray token authentication is off (RAY_AUTH_MODE=disabled); dlapp refuses to "
                "run on an unauthenticated Ray cluster. Unset RAY_AUTH_MODE (Ray's default is "
                "token authentication), or set ray_require_auth: false to accept the risk"
            )
        if settings.ray_address:
            wait_for_head(settings.ray_address)  # it may be coming back after a loss
        node_ip = ray_network.node_ip(settings)  # loopback for the embedded cluster
        bind: dict[str, Any] = {"_node_ip_address": node_ip} if node_ip else {}
        if settings.ray_address:
            ray.init(
                address=settings.ray_address,
                **bind,
                namespace=NAMESPACE,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        else:
            devices = discover() if settings.gpus is None else []
            gpus, gpu_resources = ray_resources(devices)
            if settings.gpus is not None:
                gpus = settings.gpus
            with ray_network.loopback_node(node_ip):
                ray.init(
                    address="local",  # a cluster of its own, never one `ray start` left running
                    **bind,
                    num_cpus=int(settings.cpus) if settings.cpus else os.cpu_count(),
                    num_gpus=gpus,
                    resources=gpu_resources,
                    namespace=NAMESPACE,
                    include_dashboard=False,
                    object_store_memory=settings.object_store_mb * MB,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                    _temp_dir=str(private_temp_dir()),
                )
        private_ray_files()
        self._embedded = not settings.ray_address
        self._start_timeout = settings.start_timeout_s
        self._warm_workers = settings.warm_workers
        gcs = ray._private.worker.global_worker.gcs_client
        self._head = HeadWatch(
            lambda timeout: gcs.internal_kv_get(b"dlapp:probe", None, timeout=timeout),
            settings.ray_head_timeout_s,
            self._head_lost,
        )
        self._head.start()
        self._remote = ray.remote(RaySupervisor)
        self._through_agents = settings.start_path == "agent"
        self._agents: dict[str, Any] = {}  # node id -> its agent's handle
        self._apps: dict[str, _AppRun] = {}
        self._sweeps: list[Any] = []  # orphan sweeps still running on their nodes
        self._late: dict[UsageKey, Shipment] = {}  # logs shipped as their container ended

    def _nodes(self) -> list[NodeInfo]:
        out = []
        nodes = ray.nodes()
        if self._through_agents:
            self._keep_agents({n["NodeID"] for n in nodes if n.get("Alive")})
        for n in nodes:
            res = n.get("Resources", {})
            gpus = int(res.get("GPU", 0))
            model, gpu_memory_mb, mig = from_ray_resources(res)
            out.append(
                NodeInfo(
                    node_id=n["NodeID"],
                    name=n["NodeManagerAddress"],
                    total=Resources(
                        cpus=float(res.get("CPU", 0)),
                        memory_mb=int(res.get("memory", 0) // MB),
                        gpus=round(gpus + sum(mig_share(p) for _, p, _ in mig), 9),
                    ),
                    alive=bool(n.get("Alive")),
                    gpu_ids=tuple(str(i) for i in range(gpus)),
                    model=model,
                    gpu_memory_mb=gpu_memory_mb,
                    mig=mig,
                )
            )
        return out

    def _keep_agents(self, alive: set[str]) -> None:
        """An agent on each alive node, made as the node is first seen (its creation is Ray's:
        the first app there does not wait for it); those of nodes gone are dropped. Callers on
        other threads may hold the node list too: a handle one of them stored while this one
        asked Ray for its own is kept, never overwritten."""
        for node_id in alive - self._agents.keys():
            with contextlib.suppress(RayError, ValueError):
                self._agents.setdefault(node_id, agent_on(node_id, NAMESPACE))
        for node_id in self._agents.keys() - alive:
            self._agents.pop(node_id, None)

    def _agent(self, node_id: str) -> Any:
        agent = self._agents.get(node_id)
        if agent is None:
            agent = self._agents.setdefault(node_id, agent_on(node_id, NAMESPACE))
        return agent

    def _bundle(self, request: Resources, plan: ContainerPlan) -> dict[str, float]:
        bundle: dict[str, float] = {"CPU": request.cpus, "memory": float(request.memory_mb * MB)}
        bundle.update(_gpu_resources(request, plan))
        return bundle

    def _start(
        self, plans: Sequence[ContainerPlan], node_ids: Sequence[str], request: Resources
    ) -> None:
        if self._through_agents:
            self._start_through_agents(plans, node_ids)
            return
        app_id = plans[0].app_id
        # each bundle pinned to the node the scheduler chose, by Ray's node-id label
        pg = placement_group(
            [self._bundle(request, plan) for plan in plans],
            strategy="PACK",
            name=f"dlapp:{app_id}",
            lifetime="detached",  # outlives this server: a restarted one takes the app over
            bundle_label_selector=[{NODE_ID_LABEL: n} for n in node_ids],
        )
        run = _AppRun(pg=pg, start_deadline=time.monotonic() + self._start_timeout)
        self._apps[app_id] = run
        for plan, node_id in zip(plans, node_ids, strict=True):
            actor = self._remote.options(  # type: ignore[attr-defined]
                name=plan.actor_name,
                namespace=NAMESPACE,
                lifetime="detached",
                max_restarts=0,
                max_concurrency=16,
                num_cpus=request.cpus,
                num_gpus=_gpu_resources(request, plan).get("GPU", 0),
                resources={k: v for k, v in _gpu_resources(request, plan).items() if k != "GPU"},
                memory=request.memory_mb * MB,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=plan.index
                ),
            ).remote(plan)
            tracked = self._watched(
                _Tracked(plan, node_id, actor, actor.start_here.remote(), actor.wait_once.remote())
            )
            tracked.up_ref = actor.plan_of.remote()  # answered at once by a running actor
            run.containers.append(tracked)

    def _start_through_agents(
        self, plans: Sequence[ContainerPlan], node_ids: Sequence[str]
    ) -> None:
        """Each container by one call to its node's agent, with the devices dlapp chose."""
        run = _AppRun(pg=None, start_deadline=time.monotonic() + self._start_timeout)
        self._apps[plans[0].app_id] = run
        for plan, node_id in zip(plans, node_ids, strict=True):
            agent = self._agent(node_id)
            agent.start.remote(plan)
            handle = AgentContainer(agent, plan.actor_name)
            tracked = self._watched(
                _Tracked(
                    plan, node_id, handle, handle.start_here.remote(), handle.wait_once.remote()
                )
            )
            tracked.up_ref = handle.plan_of.remote()  # answered once the agent has it
            run.containers.append(tracked)

    def _kill(self, c: _Tracked) -> None:
        """End ``c`` now, whatever it is doing: its supervisor actor killed, or dropped by its
        agent (which kills its container)."""
        with contextlib.suppress(RayError):
            if isinstance(c.actor, AgentContainer):
                c.actor.forget.remote()
            else:
                ray.kill(c.actor, no_restart=True)

    def _watched(self, c: _Tracked) -> _Tracked:
        """``c``, its start and its end each waking the scheduler as they come (``on_change``):
        an app is RUNNING, and FINISHED, as soon as its supervisor says so, not a cycle later."""
        for ref in (c.start_ref, c.wait_ref):
            ref.future().add_done_callback(lambda _done: self._changed())
        return c

    def _remove_orphans(self, policy: ContainerPolicy, running: set[str]) -> None:
        """A sweep on every alive node, each of its own containers (``sweep.py``)."""
        self._sweeps += sweep.sweep_every_node(policy, running, NAMESPACE)

    def _stop(self, app_id: str, grace: float, notice: dict[str, Any] | None) -> None:
        run = self._apps.get(app_id)
        if run is None:
            return
        deadline = time.monotonic() + grace + HARD_KILL_AFTER_S
        for c in run.containers:
            if not c.done:
                c.stop_deadline = deadline
                c.actor.stop.remote(grace, notice)

    def _poll(self) -> list[Report]:
        reports: list[Report] = []
        self._sweeps = sweep.collect(self._sweeps)
        for app_id, run in list(self._apps.items()):
            if run.start_deadline is not None:
                reports.extend(self._check_started(run))
            for c in run.containers:
                reports.extend(self._poll_one(c))
            if all(c.done for c in run.containers):
                self._release(app_id, run)
        return reports

    def _check_started(self, run: _AppRun) -> list[Report]:
        """A supervisor not up by the start deadline (its placement group never placed, or
        its actor never created) is lost, and the app's others are stopped: the app never
        stays STARTING, and its placement group goes (``_release``) once all have ended."""
        assert run.start_deadline is not None
        waiting = [c for c in run.containers if not c.done and not _ready(c.up_ref)]
        if not waiting:
            run.start_deadline = None
            return []
        if time.monotonic() < run.start_deadline:
            return []
        run.start_deadline = None
        why = _not_up_reason(run.pg, self._start_timeout)
        logger.warning("%s: %s", run.containers[0].plan.app_id, why)
        out = []
        for c in run.containers:
            if c in waiting:
                self._kill(c)
                c.started = c.done = True
                p = c.plan
                out.append(_lost(p, why, ContainerCause.NOT_STARTED))
            elif not c.done:
                c.stop_deadline = time.monotonic() + HARD_KILL_AFTER_S
                c.actor.stop.remote(0.0, None)
        return out

    def _poll_one(self, c: _Tracked) -> list[Report]:
        plan = c.plan
        out: list[Report] = []
        if not c.started and _ready(c.start_ref):
            c.started = True
            try:
                info = ray.get(c.start_ref)  # None: taken over, and it never started
                if info is not None:
                    info["notes"] = [*self._settle_ship(c), *info.get("notes", ())]
                out.append(Report(plan.app_id, plan.attempt, plan.index, "started", info=info))
                if self._warm_workers and not isinstance(c.actor, AgentContainer):
                    warm(c.node_id)  # for the next supervisor on this node
            except RayActorError:
                pass  # reported through wait_ref below
            except RayError as exc:
                out.append(
                    Report(
                        plan.app_id,
                        plan.attempt,
                        plan.index,
                        "started",
                        diagnostics=_cause(exc),
                    )
                )
        if not c.done and _ready(c.wait_ref):
            c.done = True
            try:
                result: ContainerResult = ray.get(c.wait_ref)
                result = replace(result, notes=(*self._settle_ship(c), *result.notes))
                if result.cause is ContainerCause.NODE_LOST:  # ended as its raylet went
                    out.append(_lost(plan, result.diagnostics, ContainerCause.NODE_LOST))
                else:
                    out.append(
                        Report(plan.app_id, plan.attempt, plan.index, "exited", result=result)
                    )
            except RayError as exc:
                if isinstance(exc, RayActorError) and isinstance(c.actor, AgentContainer):
                    self._agent_died(c.node_id, c.actor.agent)
                node = self._dead_node(c.node_id)
                if node:
                    out.append(_lost(plan, f"{NODE_LOST}: {node}", ContainerCause.NODE_LOST))
                elif isinstance(c.actor, AgentContainer):  # the agent died, or restarted
                    why = f"its node's agent died: {_cause(exc)}"
                    out.append(_lost(plan, why, ContainerCause.AGENT_LOST))
                else:
                    why = f"its supervisor died: {_cause(exc)}"
                    out.append(_lost(plan, why, ContainerCause.LOST))
        elif not c.done and c.stop_deadline is not None and time.monotonic() > c.stop_deadline:
            logger.warning("%s did not stop in time; killing its supervisor", plan.actor_name)
            self._kill(c)
            c.stop_deadline = None
            if isinstance(c.actor, AgentContainer):  # no actor death to report it: lost now
                c.done = True
                why = f"its supervisor did not stop it within {HARD_KILL_AFTER_S:g}s of its grace"
                out.append(_lost(plan, why, ContainerCause.LOST))
        return out

    def _agent_died(self, node_id: str, agent: Any) -> None:
        """The agent of ``node_id`` is dead for good: the next start there makes a new one."""
        if self._agents.get(node_id) is agent:
            del self._agents[node_id]

    def _ship(self) -> dict[UsageKey, Shipment]:
        """Answers to the ``ship()`` asked last time (and those taken as their container
        started or ended); asks again, from where each left off (never waits)."""
        out, self._late = self._late, {}
        for run in self._apps.values():
            for c in run.containers:
                if c.ship_ref is not None:
                    if not _ready(c.ship_ref):
                        continue
                    shipment = self._take_ship(c)
                    if shipment is not None and (shipment.logs or shipment.notes):
                        out[(c.plan.app_id, c.plan.attempt, c.plan.index)] = shipment
                if c.done or (c.up_ref is not None and not _ready(c.up_ref)):
                    continue  # ended, or its supervisor not up yet
                c.ship_ref = c.actor.ship.remote(dict(c.shipped), SHIP_BYTES)
        return out

    def _take_ship(self, c: _Tracked, timeout: float | None = None) -> Shipment | None:
        """The answer to the ``ship()`` asked of ``c`` (None if its supervisor died)."""
        ref, c.ship_ref = c.ship_ref, None
        try:
            shipment: Shipment = ray.get(ref, timeout=timeout)
        except (RayError, GetTimeoutError):
            return None
        for stream, (offset, data) in shipment.logs.items():
            c.shipped[stream] = offset + len(data)
        return shipment

    def _settle_ship(self, c: _Tracked) -> tuple[tuple[float, str], ...]:
        """As ``c`` reports its start or its end: the notes of a shipment still on its way,
        which it took before those of the report (its log bytes go with the next ``ship``)."""
        if c.ship_ref is None:
            return ()
        shipment = self._take_ship(c, timeout=SHIP_WAIT_S)
        if shipment is None:
            return ()
        if shipment.logs:
            self._late[(c.plan.app_id, c.plan.attempt, c.plan.index)] = replace(shipment, notes=())
        return shipment.notes

    def _log_size(self, app_id: str, index: int, stream: str) -> int | None:
        run = self._apps.get(app_id)
        if run is None or index >= len(run.containers) or run.containers[index].done:
            return None
        try:
            size: int = ray.get(run.containers[index].actor.log_size.remote(stream), timeout=10)
        except (RayError, GetTimeoutError):
            return None
        return size

    def _usage(self) -> dict[UsageKey, dict[str, Any]]:
        """Answers to the ``usage()`` asked last time; asks again (never waits)."""
        out: dict[UsageKey, dict[str, Any]] = {}
        for run in self._apps.values():
            for c in run.containers:
                if not c.started or c.done:
                    continue
                if c.usage_ref is not None:
                    if not _ready(c.usage_ref):
                        continue
                    with contextlib.suppress(RayError):
                        out[(c.plan.app_id, c.plan.attempt, c.plan.index)] = ray.get(c.usage_ref)
                c.usage_ref = c.actor.usage.remote()
        return out

    def _adopt(self, app_id: str, attempt: int, node_ids: Sequence[str]) -> bool:
        """Take over an app's running supervisors after a restart: its containers on the
        nodes' agents, or its supervisor actors, by their names."""
        names = [container_name(app_id, i) for i in range(len(node_ids))]
        pg: PlacementGroup | None = None
        actors: list[Any] = []
        try:
            agents = [existing_agent(n, NAMESPACE) for n in node_ids]
            if all(a is not None for a in agents):
                actors = [AgentContainer(a, name) for a, name in zip(agents, names, strict=True)]
                # at once: a start that died with the last server is never coming
                found = ray.get([a.find.remote() for a in actors], timeout=ADOPT_TIMEOUT_S)
            else:
                pg = ray.util.get_placement_group(f"dlapp:{app_id}")
                actors = [ray.get_actor(name, namespace=NAMESPACE) for name in names]
                found = ray.get([a.plan_of.remote() for a in actors], timeout=ADOPT_TIMEOUT_S)
        except (ValueError, RayError):  # gone, dead, or not answering (GetTimeoutError)
            self._discard(app_id, node_ids, attempt)
            return False
        plans = [p for p in found if p is not None]
        if len(plans) < len(found) or any(
            p.attempt != attempt or p.index != i for i, p in enumerate(plans)
        ):
            self._discard(app_id, node_ids, attempt)  # never started, or another attempt's
            return False
        run = _AppRun(pg=pg)
        for plan, actor, node_id in zip(plans, actors, node_ids, strict=True):
            run.containers.append(
                self._watched(
                    _Tracked(
                        plan, node_id, actor, actor.started_info.remote(), actor.wait_once.remote()
                    )
                )
            )
        self._apps[app_id] = run
        logger.info("took over %s (%d containers)", app_id, len(actors))
        return True

    def _discard(self, app_id: str, node_ids: Sequence[str], attempt: int) -> None:
        """Kill what is left of an app that is not taken over (its containers on the nodes'
        agents; its supervisor actors, which end their containers, and its placement group):
        it is requeued, and must not run twice: an agent refuses a start of this attempt that
        is still on its way from the server that died."""
        for i, node_id in enumerate(node_ids):
            name = container_name(app_id, i)
            agent = existing_agent(node_id, NAMESPACE)
            if agent is not None:
                with contextlib.suppress(RayError):
                    agent.forget.remote(name, attempt)
            with contextlib.suppress(ValueError, RayError):
                ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        with contextlib.suppress(ValueError, RayError):
            remove_placement_group(ray.util.get_placement_group(f"dlapp:{app_id}"))

    def _forget(self) -> None:
        self._apps.clear()

    def _head_lost(self, reason: str) -> None:
        """The cluster is gone with its head, and this driver with it (Ray ends it soon).
        The embedded cluster's own node goes at once, so its supervisors end their
        containers now (they fate-share with the raylet); then the server is told."""
        logger.error("%s: the Ray cluster is lost", reason)
        if self._embedded:
            node = ray._private.worker._global_node
            if node is not None:
                node.kill_all_processes(check_alive=False, allow_graceful=False)
        if self.on_cluster_lost is not None:
            self.on_cluster_lost(reason)

    def _dead_node(self, node_id: str) -> str | None:
        """``<ip> (<id>)`` when Ray reports that node dead, else None."""
        for n in ray.nodes():
            if n["NodeID"] == node_id and not n.get("Alive"):
                return f"{n['NodeManagerAddress']} ({node_id[:12]})"
        return None

    def _release(self, app_id: str, run: _AppRun) -> None:
        for c in run.containers:
            self._kill(c)
        if run.pg is not None:
            remove_placement_group(run.pg)
        del self._apps[app_id]

    def _read_log(
        self, app_id: str, index: int, stream: str, offset: int, length: int
    ) -> bytes | None:
        run = self._apps.get(app_id)
        if run is None or index >= len(run.containers) or run.containers[index].done:
            return None
        try:
            data: bytes = ray.get(
                run.containers[index].actor.read_log.remote(stream, offset, length), timeout=10
            )
        except (RayError, GetTimeoutError):
            return None
        return data

    def _holds(self, app_id: str) -> bool:
        return app_id in self._apps

    def _close(self) -> None:
        """Disconnect. The embedded cluster ends with this server, and its apps with it; on a
        cluster of its own (``ray_address``) the apps keep running for the next server."""
        self._head.stop()
        if self._embedded:
            for app_id in list(self._apps):
                self._stop(app_id, 0, None)
        ray.shutdown()


def _not_up_reason(pg: PlacementGroup | None, timeout: float) -> str:
    """Why a supervisor is not up: its node's agent never answered, its bundle never placed,
    or its actor never created."""
    if pg is None:
        return f"{NOT_STARTED} within {timeout:g}s: its node's agent did not answer"
    try:
        state = ray.util.placement_group_table(pg).get("state", "")
    except RayError:
        state = ""
    if state != "CREATED":
        what = "its placement group was never placed (Ray could not reserve its bundles there)"
    else:
        what = "its supervisor actor was never created"
    return f"{NOT_STARTED} within {timeout:g}s: {what}"


def _lost(plan: ContainerPlan, why: str, cause: ContainerCause) -> Report:
    return Report(plan.app_id, plan.attempt, plan.index, "lost", diagnostics=why, cause=cause)


def _ready(ref: Any) -> bool:
    ready, _ = ray.wait([ref], timeout=0)
    return bool(ready)


def _cause(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    if cause is not None:
        return str(cause)
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
