"""A stateful property test of the policy over random submit / finish / kill / node loss.

A small in-memory cluster runs ``decide`` each cycle and applies its decisions: admitted apps
get concrete GPU ids, preempted apps stop after a grace of one cycle and go back to their
queue. After every step: no node over its capacity, GPU ids disjoint, no admission that takes
a queue over its maximum or a user over its limit, victims only from queues over their
guarantee, and a queue with demand under its guarantee gets there within one cycle plus the
grace period. (Single-container apps in the preemptible queues, so a victim never has to take
its own queue under its guarantee; gangs run in a queue that never borrows.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dlapp.scheduler import (
    Admit,
    AppHead,
    NodeView,
    Preempt,
    Resources,
    RunningApp,
    Snapshot,
    decide,
    parse_tree,
)

NODE = Resources(cpus=8, memory_mb=32 * 1024, gpus=4)
REQUEST = Resources(cpus=1, memory_mb=1024, gpus=1)
TREE = parse_tree(
    {
        "preemption": {"enabled": True, "grace_s": 1},
        "queues": {
            "a": {"guaranteed": "40%", "maximum": "100%"},
            "b": {"guaranteed": "20%", "maximum": "50%", "user_limit": {"gpus": 2}},
            "c": {"guaranteed": "15%", "maximum": "100%"},
            # gangs live here: never preempted, never over its guarantee, so it is no victim
            "d": {"guaranteed": "25%", "maximum": "25%", "preemptible": False},
        },
    }
)
LIVENESS_QUEUES = ("root.a", "root.c")  # no user limit: only capacity can hold them back
GRACE_CYCLES = 1


@dataclass
class App:
    app_id: str
    queue: str
    user: str
    seq: int
    containers: int
    placed: dict[int, tuple[str, int]] = field(default_factory=dict)  # index -> (node, gpu)
    stopping_for: int | None = None  # cycles left before a preempted app is gone
    claimed_by: str | None = None


class Cluster(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, set[int]] = {f"n{i}": set(range(NODE.gpus)) for i in range(3)}
        self.pending: dict[str, App] = {}
        self.running: dict[str, App] = {}
        self.seq = 0
        self.starved: dict[str, int] = {}

    # -- what users and the cluster do ---------------------------------------------------------

    @rule(queue=st.sampled_from(["a", "b", "c"]), user=st.sampled_from(["alice", "bob", "carol"]))
    def submit(self, queue: str, user: str) -> None:
        self._submit(queue, user, 1)

    @rule(queue=st.sampled_from(["a", "b", "c"]), count=st.integers(2, 12))
    def submit_many(self, queue: str, count: int) -> None:
        for _ in range(count):
            self._submit(queue, "dave", 1)

    @rule(user=st.sampled_from(["alice", "bob"]), containers=st.integers(1, 3))
    def submit_gang(self, user: str, containers: int) -> None:
        self._submit("d", user, containers)

    def _submit(self, queue: str, user: str, containers: int) -> None:
        self.seq += 1
        app = App(f"app{self.seq}", f"root.{queue}", user, self.seq, containers)
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
                app.placed, app.stopping_for, app.claimed_by = {}, None, None
                self.pending[app.app_id] = app  # an infrastructure failure: back to its queue
        self.starved.clear()  # guarantees shrank with the cluster

    @rule()
    def cycle(self) -> None:
        # preempted apps whose grace is over leave, and go back to their queue
        for app in list(self.running.values()):
            if app.stopping_for is not None:
                app.stopping_for -= 1
                if app.stopping_for < 0:
                    del self.running[app.app_id]
                    self._release(app)
                    app.placed, app.stopping_for, app.claimed_by = {}, None, None
                    self.pending[app.app_id] = app
        snapshot = self._snapshot()
        decisions = decide([self._head(a) for a in self.pending.values()], snapshot)
        limits = TREE.resolve(snapshot.totals())
        usage = self._usage()
        for d in decisions:
            if isinstance(d, Admit):
                self._admit(self.pending.pop(d.app_id), d.nodes)
            elif isinstance(d, Preempt):
                victim = self.running[d.app_id]
                assert victim.stopping_for is None
                over = usage[victim.queue]
                assert not over.fits_in(limits[victim.queue].guaranteed), d
                victim.stopping_for, victim.claimed_by = GRACE_CYCLES, d.for_queue
        self._check_limits(decisions, limits)
        starved_now = self._starved_queues(snapshot)  # still under its guarantee, with demand
        grew = {
            q
            for q in LIVENESS_QUEUES
            if self._usage().get(q, Resources()).gpus > usage.get(q, Resources()).gpus
        }
        for q in LIVENESS_QUEUES:
            # a queue under its guarantee must make progress within one cycle plus the grace
            progress = q in grew or q not in starved_now
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
        return AppHead(app.app_id, app.user, app.queue, app.seq, REQUEST, app.containers)

    def _usage(self, by_user: bool = False) -> dict[str, Resources]:
        usage: dict[str, Resources] = {}
        for app in self.running.values():
            total = REQUEST.scaled(len(app.placed))
            keys = [f"{app.queue}/{app.user}"] if by_user else TREE.ancestors(app.queue)
            for key in keys:
                usage[key] = usage.get(key, Resources()) + total
        return usage

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
                stopping=a.stopping_for is not None,
                claimed_by=a.claimed_by,
            )
            for a in self.running.values()
        )
        return Snapshot(tuple(views), running=running, queues=TREE)

    def _starved_queues(self, snapshot: Snapshot) -> set[str]:
        limits = TREE.resolve(snapshot.totals())
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
        self.running[app.app_id] = app

    def _release(self, app: App, lost: str | None = None) -> None:
        for node, gpu in app.placed.values():
            if node != lost and node in self.nodes:
                self.nodes[node].add(gpu)

    def _check_limits(self, decisions: list[object], limits: dict[str, object]) -> None:
        admitted = {self.running[d.app_id].queue for d in decisions if isinstance(d, Admit)}
        usage = self._usage()
        for queue in admitted:
            for path in TREE.ancestors(queue):
                assert usage[path].fits_in(limits[path].maximum), f"{path} over its maximum"  # type: ignore[attr-defined]
        by_user = self._usage(by_user=True)
        for d in decisions:
            if isinstance(d, Admit):
                app = self.running[d.app_id]
                cap = TREE.user_cap(app.queue, limits[app.queue].maximum)  # type: ignore[attr-defined]
                assert by_user[f"{app.queue}/{app.user}"].fits_in(cap), "user over its limit"


TestPolicyStateMachine = Cluster.TestCase
TestPolicyStateMachine.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
