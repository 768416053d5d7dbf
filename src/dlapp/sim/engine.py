"""The replay: a trace's jobs through the server's own ``decide`` on a simulated clock.

No Ray, no processes, no database: the cluster is a set of ``NodeView``s whose free resources
the simulator keeps, and time jumps from event to event. One step, as a recipe:

  1. take the next event time and round it up to the scheduling cycle (``cycle_s``; 0 = decide
     at each event's own time): events in between are batched, as a server that runs its
     cycle every ``cycle_s`` would see them;
  2. apply every event up to then, in time order: a job arrives (or is dropped when it could
     never run, as the server refuses it at submit), a job completes and frees its nodes, a
     preempted job's grace period ends and it goes back to its queue;
  3. if anything arrived or freed resources and some job is waiting, take the waiting heads
     and an immutable snapshot (nodes, running apps, queue tree, now) and ``decide``;
  4. apply: start admitted jobs on the nodes chosen (they complete after their remaining
     duration), mark preempted ones stopping (they release their nodes after the tree's grace
     period and re-enter their queue with their original submission number, so they keep
     their place in line, and with the work left at the notice: they resume from a checkpoint
     written on SIGTERM; the grace period itself is lost work). A victim that would finish
     within its grace period just finishes.

Nothing else changes the state, so calling ``decide`` only after such events gives the same
decisions as a server that calls it every cycle. (With ``las`` / ``srtf`` queues, promotion
and reservations depend on how long jobs have waited: a cycle that only the clock would change
is skipped, so those take effect at the next event.)

The waiting jobs are kept in a ``Backlog`` between cycles (added on arrival and requeue, removed
on admission) and handed to ``decide_changes``, which answers only admissions and preemptions:
a cycle costs what it changes, not the thousands of jobs that wait (``incremental=False`` hands
``decide`` every waiting head instead, as the server does; a test checks both agree).

Jobs state a ``max_runtime`` when ``runtime_estimate`` is set: their duration times it (1.0:
exactly; 2.0: users ask for twice what they use). ``srtf`` queues order by it, and running
jobs' ends give waiting ones their estimates.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from dlapp.errors import DlappError
from dlapp.scheduler import (
    Admit,
    AppHead,
    Backlog,
    Decision,
    NodeView,
    Preempt,
    QueueTree,
    RunningApp,
    Snapshot,
    decide,
    decide_changes,
)
from dlapp.scheduler.gpus import workload
from dlapp.scheduler.snapshot import PLACEMENTS
from dlapp.sim.cluster import Admission, ClusterSpec, split_gang
from dlapp.sim.gpu_state import GpuLedger, RecentMix, job_shape
from dlapp.sim.timeline import Timeline
from dlapp.sim.trace import Trace, TraceJob

_COMPLETE, _STOP = 0, 1


class SimulationError(DlappError):
    """The replay reached a state the policy should never produce (a bug, not bad input)."""

    code = "simulation_error"


@dataclass(frozen=True)
class SimOptions:
    cycle_s: float = 60.0  # decide at most once per this many simulated seconds; 0 = per event
    bucket_s: float = 3600.0  # width of the timeline's buckets (plots, JSON series)
    incremental: bool = True  # keep a Backlog and call decide_changes (see above)
    runtime_estimate: float | None = None  # max_runtime = duration x this; None: none stated
    placement: str = "fgd"  # how containers' nodes are chosen (dlapp.scheduler.PLACEMENTS)
    round_fractions: bool = False  # a job asking for a fraction of a GPU takes a whole one
    workload_window: int = 1000  # fgd keeps room for the mix of this many latest arrivals

    def __post_init__(self) -> None:
        if self.cycle_s < 0 or not math.isfinite(self.cycle_s):
            raise ValueError("cycle_s must be a non-negative number of seconds")
        if self.bucket_s <= 0:
            raise ValueError("bucket_s must be positive")
        if self.runtime_estimate is not None and not 1.0 <= self.runtime_estimate < math.inf:
            raise ValueError("runtime_estimate must be at least 1 (a max_runtime ends no job)")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement {self.placement!r} is not one of {', '.join(PLACEMENTS)}")
        if self.workload_window < 1:
            raise ValueError("workload_window must be at least 1 job")


@dataclass(slots=True)
class JobRecord:
    """One job's life in the replay."""

    job: TraceJob
    head: AppHead  # queue: the leaf's full path; request: per container
    remaining: float  # seconds of work left
    waiting_since: float
    attempt: int = 0
    first_start: float | None = None
    end: float | None = None
    started: float = 0.0  # start of the current run
    queued_s: float = 0.0  # time spent waiting, over all its waits
    preemptions: int = 0
    gpu_s: float = 0.0  # GPU-seconds held, lost work included
    left_at_notice: float = 0.0

    @property
    def gpus(self) -> float:
        return self.head.total.gpus

    @property
    def containers(self) -> int:
        return self.head.num_containers


@dataclass(frozen=True)
class Progress:
    """How far a replay is: simulated time, jobs finished of those in the trace, wall time."""

    now: float
    finished: int
    jobs: int
    wall_s: float


@dataclass(frozen=True)
class Dropped:
    job: TraceJob
    reason: str


@dataclass
class DecideStats:
    """What the calls to ``decide`` cost, in CPU seconds of this process."""

    calls: int = 0
    seconds: float = 0.0
    max_s: float = 0.0
    heads: int = 0  # heads handed over, summed over calls
    most_heads: int = 0
    running: int = 0  # running apps in the snapshots, summed

    def add(self, seconds: float, heads: int, running: int) -> None:
        """One call: its CPU seconds, the heads waiting and the apps running then."""
        self.calls += 1
        self.seconds += seconds
        self.max_s = max(self.max_s, seconds)
        self.heads += heads
        self.most_heads = max(self.most_heads, heads)
        self.running += running


@dataclass
class SimResult:
    trace: Trace
    cluster: ClusterSpec
    tree: QueueTree
    options: SimOptions
    records: list[JobRecord]  # every job that was admitted to a queue, in submit order
    dropped: list[Dropped]
    timeline: Timeline
    end: float  # when the last job ended
    preemptions: int
    decide: DecideStats = field(default_factory=DecideStats)
    wall_s: float = 0.0
    cpu_s: float = 0.0


class Simulator:
    def __init__(
        self,
        trace: Trace,
        cluster: ClusterSpec,
        tree: QueueTree,
        options: SimOptions | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.trace, self.cluster, self.tree = trace, cluster, tree
        self.options = options or SimOptions()
        self.progress = progress  # told how far the replay is, about once a second
        self._told = 0.0
        self.finished = 0
        self.nodes: dict[str, NodeView] = {n.node_id: n for n in cluster.nodes()}
        self.free_gpus = sum(n.free.gpus for n in self.nodes.values() if n.schedulable)
        self.admission = Admission(cluster, tree)
        limits = tree.resolve(cluster.total)
        leaves = [q.path for q in tree.leaves]
        self.timeline = Timeline(
            leaves,
            [limits[q].guaranteed.gpus for q in leaves],
            self.options.bucket_s,
            total_gpus=self.free_gpus,
        )
        # devices and fragmentation, measured against the whole trace's mix of jobs
        shapes = (job_shape(j, split_gang(j, cluster.max_gpus_per_node)[0]) for j in trace.jobs)
        self.gpus = GpuLedger(self.nodes.values(), workload(shapes))
        self.mix = RecentMix(self.options.workload_window)
        self.timeline.gpu_state(self.free_gpus, self.gpus.fragmented)
        self.records: dict[str, JobRecord] = {}
        self.dropped: list[Dropped] = []
        self.waiting = Backlog(tree)
        self.running: dict[str, RunningApp] = {}
        self.events: list[tuple[float, int, int, str, int]] = []  # time, n, kind, app, attempt
        self._n = 0
        self.preemptions = 0
        self.stats = DecideStats()
        self.last_end = 0.0

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> SimResult:
        started, cpu = time.perf_counter(), time.process_time()
        jobs, i = self.trace.jobs, 0
        while i < len(jobs) or self.events:
            # 1. the next cycle that has something to do
            upcoming = min(
                jobs[i].submit if i < len(jobs) else math.inf,
                self.events[0][0] if self.events else math.inf,
            )
            now = self._cycle_time(upcoming)
            # 2. every event up to then, in time order
            changed = False
            while True:
                arrival = jobs[i].submit if i < len(jobs) else math.inf
                event = self.events[0][0] if self.events else math.inf
                if min(arrival, event) > now:
                    break
                if arrival <= event:
                    self.timeline.advance(arrival)
                    changed |= self._arrive(jobs[i], i + 1)
                    i += 1
                else:
                    when, _, kind, app_id, attempt = heapq.heappop(self.events)
                    self.timeline.advance(when)
                    changed |= self._complete(app_id, attempt, when, kind == _STOP)
            # 3-4. decide and apply
            if changed and len(self.waiting):
                self.timeline.advance(now)
                self._decide(now)
            if self.progress is not None and time.perf_counter() - self._told >= 1.0:
                self._told = time.perf_counter()
                self.progress(Progress(now, self.finished, len(jobs), self._told - started))
        self.timeline.advance(self.last_end)
        self.timeline.close()
        return SimResult(
            trace=self.trace,
            cluster=self.cluster,
            tree=self.tree,
            options=self.options,
            records=sorted(self.records.values(), key=lambda r: r.head.seq),
            dropped=self.dropped,
            timeline=self.timeline,
            end=self.last_end,
            preemptions=self.preemptions,
            decide=self.stats,
            wall_s=time.perf_counter() - started,
            cpu_s=time.process_time() - cpu,
        )

    def _cycle_time(self, t: float) -> float:
        cycle = self.options.cycle_s
        if cycle <= 0:
            return t
        k = math.ceil(t / cycle)
        return k * cycle if k * cycle >= t else (k + 1) * cycle

    # -- events --------------------------------------------------------------------------------

    def _arrive(self, job: TraceJob, seq: int) -> bool:
        request, n = split_gang(job, self.cluster.max_gpus_per_node, self.options.round_fractions)
        self.mix.add(job_shape(job, request))
        why = self.admission.refuse(request, n, job.queue, job.gpu_types)
        if why is not None:
            self.dropped.append(Dropped(job, why))
            return False
        estimate = self.options.runtime_estimate
        head = AppHead(
            app_id=job.job_id,
            user=job.user,
            queue=self.admission.leaf(job.queue),
            seq=seq,
            request=request,
            num_containers=n,
            waiting_since=job.submit,
            max_runtime_s=None if estimate is None else job.duration * estimate,
            gpu_types=job.gpu_types,
        )
        self.records[head.app_id] = JobRecord(
            job=job, head=head, remaining=job.duration, waiting_since=job.submit
        )
        self._wait(head)
        return True

    def _wait(self, head: AppHead) -> None:
        self.waiting.add(head)
        self.timeline.waits(head.queue, 1)

    def _complete(self, app_id: str, attempt: int, now: float, preempted: bool) -> bool:
        """A run ended: the job finished, or (``preempted``) its grace period is over and it
        goes back to its queue. Stale events (a run that already ended) change nothing."""
        rec = self.records[app_id]
        app = self.running.get(app_id)
        if app is None or rec.attempt != attempt:
            return False
        del self.running[app_id]
        for i, node_id in enumerate(app.nodes):
            devices = app.devices[i] if app.devices else ()
            self.nodes[node_id] = self.gpus.give(self.nodes[node_id], app.request, devices)
        self.free_gpus += app.total.gpus
        self.timeline.gpu_state(self.free_gpus, self.gpus.fragmented)
        self.timeline.held_by(app.queue, -app.total.gpus)
        rec.gpu_s += (now - rec.started) * app.total.gpus
        if preempted:
            rec.attempt += 1
            rec.remaining = rec.left_at_notice
            rec.waiting_since = now
            # back in line with the work it has done (las reads it) and waiting from now
            rec.head = replace(rec.head, ran_s=rec.job.duration - rec.remaining, waiting_since=now)
            self._wait(rec.head)
        else:
            rec.end = now
            self.finished += 1
            rec.remaining = 0.0
            self.last_end = max(self.last_end, now)
        return True

    # -- deciding ------------------------------------------------------------------------------

    def _decide(self, now: float) -> None:
        snapshot = Snapshot(
            tuple(self.nodes.values()),
            running=tuple(self.running.values()),
            queues=self.tree,
            now=now,
            placement=self.options.placement,
            workload=self.mix.workload(),
        )
        t0 = time.process_time()  # CPU time: other work on the machine does not count
        decisions: list[Decision]
        if self.options.incremental:
            decisions = list(decide_changes(self.waiting, snapshot))
        else:
            decisions = decide(list(self.waiting), snapshot)
        self.stats.add(time.process_time() - t0, len(self.waiting), len(self.running))
        for d in decisions:
            if isinstance(d, Admit):
                self._start(d, now)
            elif isinstance(d, Preempt):
                self._preempt(d, now)
        self.timeline.cycle_done()

    def _start(self, d: Admit, now: float) -> None:
        rec = self.records[d.app_id]
        head = rec.head
        if len(d.nodes) != head.num_containers:
            raise SimulationError(f"{head.app_id}: admitted on {len(d.nodes)} nodes")
        for i, node_id in enumerate(d.nodes):
            view = self.nodes[node_id]
            free = view.free - head.request
            if free.is_negative() or not view.schedulable:
                raise SimulationError(f"{head.app_id}: admitted on {node_id}, which has no room")
            devices = d.devices[i] if d.devices else ()
            try:
                self.nodes[node_id] = self.gpus.take(view, head.request, devices)
            except ValueError as exc:  # its devices' shares do not add up
                raise SimulationError(f"{head.app_id} on {node_id}: {exc}") from None
        self.waiting.remove(head.app_id)
        self.timeline.waits(head.queue, -1)
        self.timeline.held_by(head.queue, head.total.gpus)
        self.free_gpus -= head.total.gpus
        self.timeline.gpu_state(self.free_gpus, self.gpus.fragmented)
        rec.queued_s += now - rec.waiting_since
        if rec.first_start is None:
            rec.first_start = now
        rec.started = now
        left = head.remaining_s  # of its max_runtime, when it states one
        self.running[head.app_id] = RunningApp(
            app_id=head.app_id,
            user=head.user,
            queue=head.queue,
            seq=head.seq,
            request=head.request,
            nodes=d.nodes,
            priority=head.priority,
            started_at=now,
            ends_by=None if left is None else now + left,
            ran_before_s=head.ran_s,
            devices=d.devices,
        )
        self._push(now + rec.remaining, _COMPLETE, head.app_id, rec.attempt)

    def _preempt(self, d: Preempt, now: float) -> None:
        app = self.running.get(d.app_id)
        if app is None or app.stopping:
            return
        rec = self.records[d.app_id]
        self.running[d.app_id] = replace(app, stopping=True, claimed_by=d.for_queue)
        rec.preemptions += 1
        self.preemptions += 1
        rec.left_at_notice = rec.remaining - (now - rec.started)
        # the completion already queued wins if it comes first (the job just finishes)
        self._push(now + self.tree.preemption_grace_s, _STOP, d.app_id, rec.attempt)

    def _push(self, when: float, kind: int, app_id: str, attempt: int) -> None:
        self._n += 1
        heapq.heappush(self.events, (when, self._n, kind, app_id, attempt))


def simulate(
    trace: Trace,
    cluster: ClusterSpec,
    tree: QueueTree,
    options: SimOptions | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> SimResult:
    """Replay ``trace`` on ``cluster`` with the queue tree ``tree`` (see ``policy_tree``);
    ``progress`` is called about once a second of wall time."""
    return Simulator(trace, cluster, tree, options, progress).run()
