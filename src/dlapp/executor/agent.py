"""The node agent: one long-lived, named Ray actor per node that starts that node's containers.

Starting an app through it costs one method call: no placement group, no new actor, no new
Python worker. The scheduler has decided the node and the GPU device IDs already (the store's
GPU map: ``ContainerPlan.gpu_ids``); the agent runs a ``Supervisor`` per container in threads
of its own process, and each container's guard fate-shares with that process, as it did with a
supervisor actor of its own.

The agent is detached and named ``dlapp-agent:<node id>``: a server restarted after a crash
finds it by that name and takes its containers over (``plan_of`` each). Ray restarts an agent
that dies (``max_restarts=-1``, pinned to its node); its containers died with it (their guards
saw it go), so each is reported lost and its app requeued. On a node that is gone the agent is
gone too, and a new node gets a new one.

The actor is asynchronous: a container's start and its end are awaited as futures that its
thread sets, so that thousands of waiting calls hold no thread each.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from dlapp.contract import (
    NODE_LOST,
    ContainerCause,
    ContainerPlan,
    ContainerResult,
    Shipment,
    container_name,
)
from dlapp.errors import DlappError
from dlapp.node.supervisor import Supervisor

logger = logging.getLogger(__name__)
PREFIX = "dlapp-agent:"
RAYLET_WATCH_S = 0.5  # how often the agent checks that its raylet is alive
REGISTER_WAIT_S = 30.0  # a call about a container whose start has not reached the agent yet


def agent_name(node_id: str) -> str:
    return f"{PREFIX}{node_id}"


class AgentSupervisor(Supervisor):
    """A supervisor as the agent runs it: a container ended because its node went says so,
    whatever its exit code, so that the app is requeued."""

    node_lost = ""

    def wait(self) -> ContainerResult:
        result = super().wait()
        if self.node_lost:
            return replace(result, diagnostics=self.node_lost, cause=ContainerCause.NODE_LOST)
        return result


@dataclass
class _Hosted:
    """One container on this node: its supervisor, and its start and end as futures."""

    sup: AgentSupervisor
    started: concurrent.futures.Future[dict[str, Any]] = field(
        default_factory=concurrent.futures.Future
    )
    ended: concurrent.futures.Future[ContainerResult] = field(
        default_factory=concurrent.futures.Future
    )


class NodeAgent:
    """The agent's methods, each about one container named as ``ContainerPlan.actor_name``."""

    def __init__(self) -> None:
        self._hosted: dict[str, _Hosted] = {}
        self._registered: dict[str, asyncio.Event] = {}
        # container -> the last attempt a server gave up on (``forget(name, attempt)``): its
        # start, still on its way from a server that died, must not run it after all
        self._given_up: dict[str, int] = {}
        self._node: str = ray.util.get_node_ip_address()
        self._watch_raylet()

    # -- life -----------------------------------------------------------------------------------

    async def hello(self) -> str:
        """Answered at once: the agent is up."""
        return self._node

    async def start(self, plan: ContainerPlan) -> None:
        """Start ``plan``'s container in a thread (stage in, launch, wait, stage out); returns
        at once. The same container asked again (a retried call) is left as it is; another
        attempt's is stopped and replaced."""
        name = plan.actor_name
        if plan.attempt <= self._given_up.get(name, -1):
            logger.warning("%s attempt %d was given up before it came", name, plan.attempt)
            return
        old = self._hosted.get(name)
        if old is not None:
            if old.sup.plan.attempt == plan.attempt:
                return
            self._forget(name)
        hosted = _Hosted(AgentSupervisor(plan))
        self._hosted[name] = hosted
        self._event(name).set()
        threading.Thread(
            target=self._run, args=(hosted,), name=f"dlapp:{name}", daemon=True
        ).start()

    def _run(self, hosted: _Hosted) -> None:
        sup = hosted.sup
        try:
            hosted.started.set_result(sup.start([], self._node))
        except BaseException as exc:  # kept as the start error: start_here answers with it
            logger.exception("%s could not start", sup.plan.actor_name)
            hosted.started.set_exception(exc)
        try:
            hosted.ended.set_result(sup.wait_once())
        except BaseException as exc:
            logger.exception("%s: waiting for its container failed", sup.plan.actor_name)
            hosted.ended.set_exception(exc)

    async def start_here(self, name: str) -> dict[str, Any]:
        """What the supervisor's ``start`` returned, once done; raises with the reason."""
        hosted = await self._get(name)
        try:
            return await asyncio.wrap_future(hosted.started)
        except Exception as exc:
            raise DlappError(hosted.sup._start_error or str(exc) or "did not start") from None

    async def started_info(self, name: str) -> dict[str, Any] | None:
        """As ``start_here``, None when it failed (a server taking the container over)."""
        hosted = await self._get(name)
        with contextlib.suppress(Exception):
            return await asyncio.wrap_future(hosted.started)
        return None

    async def wait_once(self, name: str) -> ContainerResult:
        return await asyncio.wrap_future((await self._get(name)).ended)

    async def stop(self, name: str, grace: float, notice: dict[str, Any] | None = None) -> None:
        """SIGTERM, ``grace`` seconds, SIGKILL (0: SIGKILL now), in a thread: returns at once."""
        sup = (await self._get(name)).sup
        threading.Thread(target=sup.stop, args=(grace, notice), daemon=True).start()

    async def forget(self, name: str, attempt: int | None = None) -> None:
        """Done with this container (its result taken): kill it if it still runs, drop it.
        With ``attempt`` (a server giving the container up after a restart), a start of that
        attempt or an earlier one that arrives later is refused."""
        if attempt is not None:
            self._given_up[name] = max(attempt, self._given_up.get(name, -1))
        self._forget(name)

    def _forget(self, name: str) -> None:
        hosted = self._hosted.pop(name, None)
        self._registered.pop(name, None)
        if hosted is not None and not hosted.ended.done():
            threading.Thread(target=hosted.sup.stop, args=(0.0, None), daemon=True).start()

    # -- what the server asks while it runs -----------------------------------------------------

    async def plan_of(self, name: str) -> ContainerPlan:
        return (await self._get(name)).sup.plan

    async def find(self, name: str) -> ContainerPlan | None:
        """The container's plan if this agent runs it now, else None, at once (a server taking
        containers over must not wait for starts that died with the server before it)."""
        hosted = self._hosted.get(name)
        return None if hosted is None else hosted.sup.plan

    async def supervises(self, app_id: str, index: int) -> bool:
        """Whether this agent runs that container now (the orphan sweep spares it)."""
        hosted = self._hosted.get(container_name(app_id, index))
        return hosted is not None and not hosted.ended.done()

    async def names(self) -> list[str]:
        return sorted(self._hosted)

    async def ship(self, name: str, offsets: dict[str, int], max_bytes: int) -> Shipment:
        sup = (await self._get(name)).sup
        return await asyncio.to_thread(sup.ship, offsets, max_bytes)

    async def usage(self, name: str) -> dict[str, Any]:
        return (await self._get(name)).sup.usage()

    async def log_size(self, name: str, stream: str) -> int:
        return (await self._get(name)).sup.log_size(stream)

    async def read_log(self, name: str, stream: str, offset: int, length: int) -> bytes:
        sup = (await self._get(name)).sup
        return await asyncio.to_thread(sup.read_log, stream, offset, length)

    # -- inside ---------------------------------------------------------------------------------

    def _event(self, name: str) -> asyncio.Event:
        return self._registered.setdefault(name, asyncio.Event())

    async def _get(self, name: str) -> _Hosted:
        """The container ``name``; a call that overtook its ``start`` (Ray does not order an
        async actor's calls) waits for it a little."""
        hosted = self._hosted.get(name)
        if hosted is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event(name).wait(), REGISTER_WAIT_S)
            hosted = self._hosted.get(name)
        if hosted is None:
            self._registered.pop(name, None)
            raise DlappError(f"this node's agent runs no container {name} (it restarted?)")
        return hosted

    def _watch_raylet(self) -> None:
        """Fate-share with the node: a worker outlives a raylet that was SIGKILLed, so when
        this process's parent (the raylet) goes, every container is killed and the agent
        ends, and no GPU stays held by a node Ray has already declared dead."""
        raylet = os.getppid()

        def watch() -> None:
            while os.getppid() == raylet:
                time.sleep(RAYLET_WATCH_S)
            logger.error("the raylet of %s is gone; killing its containers", self._node)
            for hosted in list(self._hosted.values()):
                hosted.sup.node_lost = f"{NODE_LOST}: {self._node} (its raylet is gone)"
                hosted.sup.stop(0.0)
            os._exit(1)

        threading.Thread(target=watch, name="dlapp-raylet-watch", daemon=True).start()


_remote_agent = ray.remote(NodeAgent)


def agent_on(node_id: str, namespace: str) -> Any:
    """The agent of ``node_id``: the running one, else a new one pinned there (its creation is
    Ray's: this never waits for it to come up)."""
    return _remote_agent.options(  # type: ignore[attr-defined]
        name=agent_name(node_id),
        namespace=namespace,
        get_if_exists=True,
        lifetime="detached",
        max_restarts=-1,
        max_concurrency=10_000,
        num_cpus=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote()


def existing_agent(node_id: str, namespace: str) -> Any | None:
    """The agent of ``node_id`` if one is alive, else None (never makes one)."""
    try:
        return ray.get_actor(agent_name(node_id), namespace=namespace)
    except ValueError:
        return None


class AgentContainer:
    """One container as the executor holds it: calls like a supervisor actor's, each sent to
    the node's agent with the container's name (``handle.stop.remote(grace)`` is
    ``agent.stop.remote(name, grace)``)."""

    def __init__(self, agent: Any, name: str) -> None:
        self.agent = agent
        self.name = name

    def __getattr__(self, method: str) -> _Call:
        return _Call(getattr(self.agent, method), self.name)


class _Call:
    def __init__(self, method: Any, name: str) -> None:
        self._method = method
        self._name = name

    def remote(self, *args: Any) -> Any:
        return self._method.remote(self._name, *args)
