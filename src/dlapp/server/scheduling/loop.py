"""The scheduling loop: the lease, then one cycle after another.

One cycle, as a recipe:
  1. take the executor's reports and record them (containers started, exited, lost); every
     ``log_ship_interval_s``, first what the supervisors shipped (log bytes to the kept logs,
     staging progress to the events);
  2. finish apps whose containers have all ended, and end the gang of any that failed;
  3. take the queue heads (an array's members over its running limit wait, and say so) and an
     immutable snapshot of capacity, usage and the queue tree;
  4. decide (pure policy);
  5. apply: start admitted apps, stop preempted ones (they go back to their queue), write
     each waiting app's reason, place in line and estimated start.

Only the server holding the scheduler lease schedules; every commit renews it in the same
transaction, and a lost lease rolls back what was about to be written (``Fenced``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from sqlalchemy.orm import Session

from dlapp.scheduler import decide
from dlapp.server.context import Context
from dlapp.server.scheduling.admit import Admission, Specs
from dlapp.server.scheduling.effects import Effects
from dlapp.server.scheduling.reconcile import Reconciler
from dlapp.server.scheduling.waiting import WaitingSet
from dlapp.store import lease as lease_store
from dlapp.store import repo

logger = logging.getLogger(__name__)
ORPHAN_SWEEP_CYCLES = 20  # remove orphan containers every this many cycles
# A wake (a submission, a kill, a container's start or end) starts a cycle no sooner than this
# many times the last cycle's length after it ended: a stream of wakes (hundreds of submissions a
# second) gets one cycle per burst, the cycles take at most about a third of the server's time,
# and the API keeps the rest. An idle scheduler's cycle takes milliseconds, so a lone wake is
# served at once. (It was 1.0, half the time, while a cycle read every waiting app's row.)
WAKE_SPACING = 2.0


def spacing(took: float, since_end: float) -> float:
    """How much longer a woken scheduler waits before its next cycle: until ``WAKE_SPACING``
    times the last cycle's length (``took``) has passed since that cycle ended."""
    return max(0.0, took * WAKE_SPACING - since_end)


class Fenced(Exception):
    """This server lost the scheduler lease: what it was about to write was rolled back."""


class Scheduler:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease: lease_store.Lease | None = None
        self._recovering = False  # running apps still to take over (or requeue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self.cycles = 0
        self._shipped_at: float | None = None  # the last ``ship``
        self._ship_every_s = ctx.settings.log_ship_interval_s
        self.effects = Effects(ctx)  # executor calls, once committed
        specs = Specs()  # parsed specs by app id (specs never change)
        claims: dict[str, str] = {}  # preempted app -> the queue its resources go to
        self.reconciler = Reconciler(ctx, self.effects, specs, claims)
        self.waiting = WaitingSet()  # the waiting apps' rows, kept between cycles
        self.admission = Admission(ctx, self.effects, specs, claims, self._commit, self.waiting)
        self.observe_cycle: Callable[[float], None] = lambda seconds: None  # metrics hook
        self.after_cycle: Callable[[], None] = lambda: None  # usage_monitor.UsageMonitor.tick

    # -- the loop -------------------------------------------------------------------------------

    def start(self) -> None:
        self.ctx.executor.on_change = self.wake  # a container started or ended: a cycle now
        self._thread = threading.Thread(target=self._run, name="dlapp-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                self.step()
            except Fenced:
                logger.warning("lost the scheduler lease; standing by")
            except Exception:
                logger.exception("scheduling cycle failed")
            took = time.perf_counter() - started
            self.observe_cycle(took)
            try:
                self.after_cycle()
            except Exception:
                logger.exception("recording GPU usage and queue samples failed")
            ended = time.perf_counter()
            if self._wake.wait(self.ctx.settings.schedule_interval_s):
                self._stop.wait(spacing(took, time.perf_counter() - ended))
            self._wake.clear()

    # -- leadership ---------------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self.lease is not None

    def step(self) -> None:
        """Lead (taking the lease when it is free or expired, then taking over the running
        apps), or stand by while another server leads."""
        if self.lease is None:
            with self.ctx.sessions() as session:
                ttl = self.ctx.settings.lease_ttl_s
                self.lease = lease_store.acquire(session, self.holder, self.ctx.clock(), ttl)
            if self.lease is None:
                return
            logger.info("scheduling as %s (lease epoch %d)", self.holder, self.lease.epoch)
            self.waiting.forget()  # reasons another leader wrote meanwhile are read again
            self._recovering = True
        if self._recovering:  # until it has gone through: no app left RUNNING unheld
            self.recover()
            self._recovering = False
        self.cycle()

    def _commit(self, session: Session) -> None:
        """Commit, renewing the lease in the same transaction; then run the executor calls
        that wait on this commit. A lost lease rolls everything back (fencing)."""
        assert self.lease is not None, "only the lease holder writes scheduling decisions"
        renewed = lease_store.renew(
            session, self.lease, self.ctx.clock(), self.ctx.settings.lease_ttl_s
        )
        if renewed is None:
            session.rollback()
            self.effects.drop()
            self.lease = None
            self.ctx.executor.forget()
            raise Fenced()
        self.lease = renewed
        session.commit()
        self.effects.run()

    # -- the cycle ------------------------------------------------------------------------------

    def cycle(self) -> None:
        try:
            self._cycle()
        except BaseException:
            self.waiting.forget()  # what it wrote may not have been committed
            raise
        self.cycles += 1

    def _cycle(self) -> None:
        self.ctx.queues.reload()  # a changed queue file takes effect now; a bad one is refused
        with self.ctx.sessions() as session:
            # 1-2. reconcile
            self.ship(session)
            for report in self.ctx.executor.poll():
                self.reconciler.record(session, report)
            self.reconciler.apply_kills(session)
            self._commit(session)
            self.reconciler.finish_ended(session)
            self._commit(session)
            if self.cycles % ORPHAN_SWEEP_CYCLES == 0:  # on start, then every few cycles
                self.remove_orphans(session)
            # 3. heads and snapshot
            pending = self.waiting.read(session)
            # (arrays' members over their running limit wait, with the reason said)
            pending, held = self.admission.hold_array_members(session, pending)
            if held and not pending:
                self._commit(session)
            if pending:
                heads = self.admission.heads(session, pending)
                snapshot = self.admission.snapshot(session)
                # 4. decide
                decisions = decide(heads, snapshot)
                # 5. apply
                self.admission.apply(session, pending, decisions, snapshot)
                self._commit(session)

    def ship(self, session: Session) -> None:
        """Every ``log_ship_interval_s``: the supervisors' shipments (``Executor.ship``)."""
        now = self.ctx.clock()
        if self._shipped_at is not None and now - self._shipped_at < self._ship_every_s:
            return
        self._shipped_at = now
        for key, shipment in self.ctx.executor.ship().items():
            self.reconciler.keep(session, key, shipment)

    # -- recovery -------------------------------------------------------------------------------

    def remove_orphans(self, session: Session) -> None:
        """Remove, on every node, this cluster's containers whose app is not RUNNING."""
        running = repo.running_ids(session)
        self.ctx.executor.remove_orphans(self.ctx.settings.container_policy, running)

    def recover(self) -> None:
        """RUNNING apps this executor does not hold (a restart) go back to their queue."""
        with self.ctx.sessions() as session:
            self.reconciler.recover(session)
            self._commit(session)
