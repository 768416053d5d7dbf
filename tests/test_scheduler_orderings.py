"""The ``las`` and ``srtf`` orderings inside a queue, one table per ordering.

Each row: the waiting apps, what runs on the one node, the time; what ``decide`` admits and
whom it preempts. Levels of the las queue: 1 and 10 GPU-hours; promotion after 2 h.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from dlapp.scheduler import Admit, Preempt, QueueTree, Wait, decide, parse_tree

from builders import make_app, make_node, make_running, make_snapshot

H = 3600.0


def queue_tree(ordering: str, preemption: bool = True, **queue: Any) -> QueueTree:
    settings = {
        "guaranteed": "100%",
        "ordering": ordering,
        "levels": [1, 10],
        "promote_after": "2h",
        "reserve_after": "never",
        **queue,
    }
    return parse_tree(
        {"preemption": {"enabled": preemption, "grace_s": 30}, "queues": {"q": settings}}
    )


@dataclass
class Case:
    """Apps are (id, GPUs, ran seconds, waiting since, max_runtime); running apps are
    (id, GPUs, GPU-free seconds it ran before this run, seconds left of its max_runtime or
    None); the node has 4 GPUs, ``free`` of them free."""

    apps: list[tuple[str, int, float, float, float | None]]
    free: int = 1
    running: list[tuple[str, int, float, float | None]] = field(default_factory=list)
    now: float = 1 * H
    preemption: bool = True
    queue: dict[str, Any] = field(default_factory=dict)
    admitted: list[str] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)


def run(ordering: str, case: Case) -> tuple[list[str], list[str], list[Any]]:
    tree = queue_tree(ordering, case.preemption, **case.queue)
    held = sum(gpus for _, gpus, _, _ in case.running)
    node = make_node("n1").gpus(4).cpus(64).memory_gb(256).used(gpus=4 - case.free)
    assert held <= 4 - case.free
    running = tuple(
        make_running(rid)
        .gpus(gpus)
        .queue("q")
        .on("n1")
        .started(case.now - 60)
        .ran_before(before)
        .ends_by(None if left is None else case.now + left)
        .build()
        for rid, gpus, before, left in case.running
    )
    heads = []
    for i, (app_id, gpus, ran, since, runtime) in enumerate(case.apps, 1):
        app = make_app(app_id).gpus(gpus).queue("q").seq(i).ran(ran).waiting_since(since)
        heads.append((app.max_runtime(runtime) if runtime is not None else app).build())
    decisions = decide(heads, make_snapshot(node, queues=tree, running=running, now=case.now))
    admitted = [d.app_id for d in decisions if isinstance(d, Admit)]
    preempted = [d.app_id for d in decisions if isinstance(d, Preempt)]
    return admitted, preempted, decisions


LAS = {
    "least attained service first": Case(
        apps=[("old", 1, 2 * H, 0, None), ("new", 1, 0, 0.5 * H, None)], admitted=["new"]
    ),
    "within a level, submission order": Case(
        apps=[("a", 1, 0.5 * H, 0, None), ("b", 1, 0, 0, None)], admitted=["a"]
    ),
    "service counts every GPU": Case(
        apps=[("wide", 4, 0.5 * H, 0, None), ("new", 4, 0, 0, None)], free=4, admitted=["new"]
    ),
    "an app that waited past promote_after goes first": Case(
        apps=[("old", 1, 20 * H, 0, None), ("new", 1, 0, 2.5 * H, None)],
        now=3 * H,
        admitted=["old"],
    ),
    "not promoted before promote_after": Case(
        apps=[("old", 1, 20 * H, 1.5 * H, None), ("new", 1, 0, 2.5 * H, None)],
        now=3 * H,
        admitted=["new"],
    ),
    "the oldest promoted app first": Case(
        apps=[("b", 1, 20 * H, 0.5 * H, None), ("a", 1, 2 * H, 0, None)],
        now=3 * H,
        admitted=["a"],
    ),
    "a new app preempts one of a later level": Case(
        apps=[("new", 1, 0, 0, None)],
        free=0,
        running=[("low", 1, 2 * H, None), ("top", 1, 0, None)],
        preempted=["low"],
    ),
    "the most served goes first, no more than needed": Case(
        apps=[("new", 1, 0, 0, None)],
        free=0,
        running=[("mid", 1, 2 * H, None), ("most", 1, 12 * H, None)],
        preempted=["most"],
    ),
    "no preemption inside a level": Case(
        apps=[("new", 1, 0, 0, None)], free=0, running=[("same", 1, 0.5 * H, None)]
    ),
    "a promoted app preempts no one": Case(
        apps=[("old", 1, 20 * H, 0, None)],
        free=0,
        now=3 * H,
        running=[("low", 1, 2 * H, None)],
    ),
    "a non-preemptible queue keeps its apps": Case(
        apps=[("new", 1, 0, 0, None)],
        free=0,
        running=[("low", 1, 2 * H, None)],
        queue={"preemptible": False},
    ),
    "no preemption when it is off": Case(
        apps=[("new", 1, 0, 0, None)],
        free=0,
        running=[("low", 1, 2 * H, None)],
        preemption=False,
    ),
}

SRTF = {
    "shortest remaining max_runtime first": Case(
        apps=[("long", 1, 0, 0, 10 * H), ("short", 1, 0, 0, 1 * H)], admitted=["short"]
    ),
    "what it ran counts": Case(
        apps=[("nearly-done", 1, 9.5 * H, 0, 10 * H), ("short", 1, 0, 0, 1 * H)],
        admitted=["nearly-done"],
    ),
    "an app that states a max_runtime goes before one that does not": Case(
        apps=[("unstated", 1, 0, 0, None), ("stated", 1, 0, 0, 100 * H)], admitted=["stated"]
    ),
    "unstated ones in submission order": Case(
        apps=[("first", 1, 0, 0, None), ("second", 1, 0, 0, None)], admitted=["first"]
    ),
    "an app that waited past promote_after goes first": Case(
        apps=[("long", 1, 0, 0, 50 * H), ("short", 1, 0, 2.5 * H, 1 * H)],
        now=3 * H,
        admitted=["long"],
    ),
    "a short app preempts a much longer one": Case(
        apps=[("short", 1, 0, 0, 1 * H)],
        free=0,
        running=[("long", 1, 0, 10 * H)],
        preempted=["long"],
    ),
    "not one only a little longer": Case(
        apps=[("short", 1, 0, 0, 1 * H)], free=0, running=[("longer", 1, 0, 1.5 * H)]
    ),
    "one with no max_runtime is preempted": Case(
        apps=[("short", 1, 0, 0, 1 * H)],
        free=0,
        running=[("unstated", 1, 0, None), ("long", 1, 0, 10 * H)],
        preempted=["unstated"],
    ),
    "an app with no max_runtime preempts no one": Case(
        apps=[("unstated", 1, 0, 0, None)], free=0, running=[("long", 1, 0, 10 * H)]
    ),
}


@pytest.mark.parametrize("case", LAS.values(), ids=LAS.keys())
def test_las(case: Case) -> None:
    admitted, preempted, _ = run("las", case)
    assert (admitted, preempted) == (case.admitted, case.preempted)


@pytest.mark.parametrize("case", SRTF.values(), ids=SRTF.keys())
def test_srtf(case: Case) -> None:
    admitted, preempted, _ = run("srtf", case)
    assert (admitted, preempted) == (case.admitted, case.preempted)


def test_a_preemption_between_levels_says_why_on_both_sides() -> None:
    _, _, decisions = run("las", LAS["a new app preempts one of a later level"])
    (preempt,) = [d for d in decisions if isinstance(d, Preempt)]
    assert preempt.for_app == "new" and preempt.for_queue == "root.q"
    assert "least attained service" in preempt.reason and "(level 1)" in preempt.reason
    (wait,) = [d for d in decisions if isinstance(d, Wait)]
    assert wait.reason.startswith("waiting for 1 preempted app(s)")


def test_positions_follow_the_line_order() -> None:
    case = Case(
        apps=[("b", 1, 20 * H, 0, None), ("a", 1, 2 * H, 0, None), ("c", 1, 0, 0, None)],
        free=0,
        preemption=False,
        now=1 * H,
    )
    _, _, decisions = run("las", case)
    assert {d.app_id: d.position for d in decisions if isinstance(d, Wait)} == {
        "c": 1,
        "a": 2,
        "b": 3,
    }
