"""A stateful property test of the policy over random submit / finish / kill / node loss,
run once per queue ordering (backfill, fifo, las, srtf).

A small in-memory cluster runs ``decide`` each cycle (a minute of its clock) and applies its
decisions: admitted apps get concrete GPU ids, preempted apps stop after a grace of one cycle
and go back to their queue with the service they had. After every step: no node over its
capacity, GPU ids disjoint, no admission that takes a queue over its maximum or a user over its
limit, victims only from queues over their guarantee (or, in a las / srtf queue, from the
queue itself, for one of its apps of an earlier level), and a queue with demand under its
guarantee gets there within one cycle plus the grace period when the room can be taken back.
(Single-container apps in the preemptible queues, so a victim never has to take its own queue
under its guarantee; gangs run in a queue that never borrows.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dlapp.scheduler import (
    Admit,
    AppHead,
    Limits,
    NodeView,
    Preempt,
    QueueTree,
    Resources,
    RunningApp,
    Snapshot,
    decide,
    parse_tree,
)
from dlapp.scheduler.ordering import las_level

NODE = Resources(cpus=8, memory_mb=32 * 1024, gpus=4)
REQUEST = Resources(cpus=1, memory_mb=1024, gpus=1)
CYCLE_S = 60.0
LIVENESS_QUEUES = ("root.a", "root.c")  # no user limit: only capacity can hold them back
GRACE_CYCLES = 1


def make_tree(ordering: str) -> QueueTree:
    # short levels, promotion and reservation times, so that a few cycles exercise them
    line = {"ordering": ordering, "levels": [0.05, 0.2], "promote_after": "5m"}
    line["reserve_after"] = "3m"
    return parse_tree(
        {
            "preemption": {"enabled": True, "grace_s": CYCLE_S},
            "queues": {
                "a": {"guaranteed": "40%", "maximum": "100%", **line},
                "b": {
                    "guaranteed": "20%",
                    "maximum": "50%",
                    "user_limit": {"gpus": 2},
                    **line,
                },
                "c": {"guaranteed": "15%", "maximum": "100%", **line},
                # gangs live here: never preempted, never over its guarantee, so it is no victim
                "d": {"guaranteed": "25%", "maximum": "25%", "preemptible": False},
            },
        }
    )


@dataclass
class App:
    app_id: str
    queue: str
    user: str
    seq: int
    containers: int
    max_runtime_s: float | None = None
    placed: dict[int, tuple[str, int]] = field(default_factory=dict)  # index -> (node, gpu)
    stopping_for: int | None = None  # cycles left before a preempted app is gone
    claimed_by: str | None = None
    waiting_since: float = 0.0
    started_at: float = 0.0
    ran_s: float = 0.0  # in earlier runs


class Cluster(RuleBasedStateMachine):
    tree = make_tree("backfill")

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, set[int]] = {f"n{i}": set(range(NODE.gpus)) for i in range(3)}
        self.pending: dict[str, App] = {}
        self.running: dict[str, App] = {}
        self.seq = 0
        self.now = 0.0
        self.starved: dict[str, int] = {}

    # -- what users and the cluster do ---------------------------------------------------------

    @rule(
        queue=st.sampled_from(["a", "b", "c"]),
        user=st.sampled_from(["alice", "bob", "carol"]),
        runtime=st.sampled_from([None, 120.0, 600.0, 3600.0]),
    )
    def submit(self, queue: str, user: str, runtime: float | None) -> None:
        self._submit(queue, user, 1, runtime)

    @rule(queue=st.sampled_from(["a", "b", "c"]), count=st.integers(2, 12))
    def submit_many(self, queue: str, count: int) -> None:
        for _ in range(count):
            self._submit(queue, "dave", 1, None)

    @rule(user=st.sampled_from(["alice", "bob"]), containers=st.integers(1, 3))
    def submit_gang(self, user: str, containers: int) -> None:
        self._submit("d", user, containers, None)

    def _submit(self, queue: str, user: str, containers: int, runtime: float | None) -> None:
        self.seq += 1
        app = App(f"app{self.seq}", f"root.{queue}", user, self.seq, containers, runtime)
        app.waiting_since = self.now
        self.pending[app.app_id] = app

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        app_id = data.draw(st.sampled_from(sorted(self.running)))
        self._release(self.running.pop(app_id))

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def kill_pending(self, data: st.DataObject) -> None:
        del self.pending[data.draw(st.sampled_from(sorted(self.pending)))]

    @precondition(lambda self: len(self.nodes) > 1)
    @rule(data=st.data())
    def lose_node(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(sorted(self.nodes)))
        del self.nodes[node]
        for app in list(self.running.values()):
            if any(n == node for n, _ in app.placed.values()):
                del self.running[app.app_id]
                self._release(app, lost=node)
                self._requeue(app)  # an infrastructure failure: back to its queue
        self.starved.clear()  # guarantees shrank with the cluster

    @rule()
    def cycle(self) -> None:
        self.now += CYCLE_S
        # preempted apps whose grace is over leave, and go back to their queue
        for app in list(self.running.values()):
            if app.stopping_for is not None:
                app.stopping_for -= 1
                if app.stopping_for < 0:
                    del self.running[app.app_id]
                    self._release(app)
                    self._requeue(app)
        snapshot = self._snapshot()
        heads = {a.app_id: self._head(a) for a in self.pending.values()}
        decisions = decide(list(heads.values()), snapshot)
        running = {a.app_id: a for a in snapshot.running}
        limits = self.tree.resolve(snapshot.totals())
        usage = self._usage()
        stopping = self._usage(stopping=True)
        reclaimable = self._reclaimable(limits, usage, stopping)
        for d in decisions:
            if isinstance(d, Admit):
                self._admit(self.pending.pop(d.app_id), d.nodes)
            elif isinstance(d, Preempt):
                victim = self.running[d.app_id]
                assert victim.stopping_for is None
                if d.for_queue != victim.queue:  # taking a guarantee back
                    assert limits[victim.queue].over(usage[victim.queue]), d
                else:  # for an app of an earlier level of its own queue
                    self._check_level(heads[d.for_app], running[d.app_id])
                victim.stopping_for, victim.claimed_by = GRACE_CYCLES, d.for_queue
        self._check_limits(decisions, limits)
        starved_now = self._starved_queues(snapshot)  # still under its guarantee, with demand
        grew = {
            q
            for q in LIVENESS_QUEUES
            if self._usage().get(q, Resources()).gpus > usage.get(q, Resources()).gpus
        }
        for q in LIVENESS_QUEUES:
            # a queue under its guarantee must make progress within one cycle plus the grace,
            # when what it lacks is free or held by queues over their guarantee
            progress = q in grew or q not in starved_now or not reclaimable
            self.starved[q] = 0 if progress else self.starved.get(q, 0) + 1
            assert self.starved[q] <= GRACE_CYCLES + 2, f"{q} stayed under its guarantee"

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def gpus_are_held_once(self) -> None:
        seen: set[tuple[str, int]] = set()
        for app in self.running.values():
            for slot in app.placed.values():
                assert slot not in seen, f"GPU {slot} held twice"
                seen.add(slot)
        for node, free in self.nodes.items():
            held = {g for n, g in seen if n == node}
            assert not held & free and held | free == set(range(NODE.gpus))

    @invariant()
    def no_node_over_capacity(self) -> None:
        for node in self.nodes:
            held = sum(1 for a in self.running.values() for n, _ in a.placed.values() if n == node)
            assert held * REQUEST.cpus <= NODE.cpus and held <= NODE.gpus

    # -- helpers -------------------------------------------------------------------------------

    def _head(self, app: App) -> AppHead:
        return AppHead(
            app.app_id,
            app.user,
            app.queue,
            app.seq,
            REQUEST,
            app.containers,
            ran_s=app.ran_s,
            waiting_since=app.waiting_since,
            max_runtime_s=app.max_runtime_s,
        )

    def _requeue(self, app: App) -> None:
        app.ran_s += self.now - app.started_at
        app.placed, app.stopping_for, app.claimed_by = {}, None, None
        app.waiting_since = self.now
        self.pending[app.app_id] = app

    def _usage(self, by_user: bool = False, stopping: bool = False) -> dict[str, Resources]:
        usage: dict[str, Resources] = {}
        for app in self.running.values():
            if stopping and app.stopping_for is None:
                continue
            total = REQUEST.scaled(len(app.placed))
            keys = [f"{app.queue}/{app.user}"] if by_user else self.tree.ancestors(app.queue)
            for key in keys:
                usage[key] = usage.get(key, Resources()) + total
        return usage

    def _reclaimable(
        self, limits: dict[str, Limits], usage: dict[str, Resources], stopping: dict[str, Resources]
    ) -> bool:
        """Whether a GPU can be had: one is free, or a preemptible queue holds more than its
        guarantee (counting what its stopping apps still hold)."""
        if any(self.nodes.values()):
            return True
        for path, q in self.tree.by_path.items():
            if q.is_leaf and q.preemptible:
                held = usage.get(path, Resources()).gpus - stopping.get(path, Resources()).gpus
                if held > limits[path].guaranteed.gpus:
                    return True
        return any(a.stopping_for is not None for a in self.running.values())

    def _snapshot(self) -> Snapshot:
        views = []
        for node, free in sorted(self.nodes.items()):
            used = NODE.gpus - len(free)
            views.append(NodeView(node, node, NODE, NODE - REQUEST.scaled(used)))
        running = tuple(
            RunningApp(
                a.app_id,
                a.user,
                a.queue,
                a.seq,
                REQUEST,
                tuple(a.placed[i][0] for i in sorted(a.placed)),
                started_at=a.started_at,
                ends_by=None
                if a.max_runtime_s is None
                else a.started_at + a.max_runtime_s - a.ran_s,
                stopping=a.stopping_for is not None,
                claimed_by=a.claimed_by,
                ran_before_s=a.ran_s,
            )
            for a in self.running.values()
        )
        return Snapshot(tuple(views), running=running, queues=self.tree, now=self.now)

    def _starved_queues(self, snapshot: Snapshot) -> set[str]:
        limits = self.tree.resolve(snapshot.totals())
        usage = self._usage()
        starved = set()
        for q in LIVENESS_QUEUES:
            room = limits[q].guaranteed.gpus - usage.get(q, Resources()).gpus
            if any(a.queue == q and a.containers <= room for a in self.pending.values()):
                starved.add(q)
        return starved

    def _admit(self, app: App, nodes: tuple[str, ...]) -> None:
        for index, node in enumerate(nodes):
            gpu = min(self.nodes[node])
            self.nodes[node].discard(gpu)
            app.placed[index] = (node, gpu)
        app.started_at = self.now
        self.running[app.app_id] = app

    def _release(self, app: App, lost: str | None = None) -> None:
        for node, gpu in app.placed.values():
            if node != lost and node in self.nodes:
                self.nodes[node].add(gpu)

    def _check_level(self, claimant: AppHead, victim: RunningApp) -> None:
        """A victim of its own queue is behind the app it makes room for: it has had more
        service (las: a later level), or it has more time left (srtf)."""
        q = self.tree.by_path[victim.queue]
        assert q.ordering in ("las", "srtf"), (claimant, victim)
        if q.ordering == "las":
            had = las_level(victim.attained_gpu_s(self.now), q.levels_gpu_h)
            assert had > las_level(claimant.attained_gpu_s, q.levels_gpu_h), (claimant, victim)
        else:
            left, wanted = victim.remaining_s(self.now), claimant.remaining_s
            assert wanted is not None, claimant  # a job that states no runtime takes none
            assert left is None or left > wanted, (claimant, victim)

    def _check_limits(self, decisions: list[Any], limits: dict[str, Limits]) -> None:
        admitted = {self.running[d.app_id].queue for d in decisions if isinstance(d, Admit)}
        usage = self._usage()
        for queue in admitted:
            for path in self.tree.ancestors(queue):
                assert usage[path].fits_in(limits[path].maximum), f"{path} over its maximum"
        by_user = self._usage(by_user=True)
        for d in decisions:
            if isinstance(d, Admit):
                app = self.running[d.app_id]
                cap = self.tree.user_cap(app.queue, limits[app.queue].maximum)
                assert by_user[f"{app.queue}/{app.user}"].fits_in(cap), "user over its limit"


class FifoCluster(Cluster):
    tree = make_tree("fifo")


class LasCluster(Cluster):
    tree = make_tree("las")


class SrtfCluster(Cluster):
    tree = make_tree("srtf")


SETTINGS = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPolicyStateMachine = Cluster.TestCase
TestPolicyStateMachine.settings = SETTINGS
TestFifoStateMachine = FifoCluster.TestCase
TestFifoStateMachine.settings = SETTINGS
TestLasStateMachine = LasCluster.TestCase
TestLasStateMachine.settings = SETTINGS
TestSrtfStateMachine = SrtfCluster.TestCase
TestSrtfStateMachine.settings = SETTINGS
