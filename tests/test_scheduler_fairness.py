"""Fairness under load: reservations for apps that backfill keeps passing, a guarantee given
back in one cycle, guarantees that keep their fractions, apps of a removed queue, and the
incremental ``decide_changes`` agreeing with ``decide``."""

from __future__ import annotations

import random
from typing import Any

import pytest

from dlapp.scheduler import (
    Admit,
    Backlog,
    Preempt,
    QueueConfigError,
    QueueTree,
    Resources,
    Wait,
    decide,
    decide_changes,
    parse_tree,
)
from dlapp.scheduler.queues import apportion

from builders import make_app, make_node, make_running, make_snapshot

H = 3600.0


def tree(queues: dict[str, Any], preemption: bool = False) -> QueueTree:
    return parse_tree({"queues": queues, "preemption": {"enabled": preemption, "grace_s": 30}})


def admitted(decisions: list[Any]) -> list[str]:
    return [d.app_id for d in decisions if isinstance(d, Admit)]


def preempted(decisions: list[Any]) -> list[str]:
    return [d.app_id for d in decisions if isinstance(d, Preempt)]


def waits(decisions: list[Any]) -> dict[str, Wait]:
    return {d.app_id: d for d in decisions if isinstance(d, Wait)}


# -- reservations ---------------------------------------------------------------------------


def _passed_by_small_apps(now: float, queues: QueueTree) -> list[Any]:
    """n1 has 1 GPU free, n2 2: a 4-GPU app that has waited since 0, three 1-GPU apps after."""
    snap = make_snapshot(
        make_node("n1").gpus(4).used(gpus=3),
        make_node("n2").gpus(4).used(gpus=2),
        queues=queues,
        running=(
            make_running("r1").gpus(3).on("n1").queue("q").build(),
            make_running("r2").gpus(2).on("n2").queue("q").build(),
        ),
        now=now,
    )
    big = make_app("big").gpus(4).queue("q").waiting_since(0).build()
    small = [
        make_app(f"small{i}").gpus(1).queue("q").waiting_since(now - 60).build() for i in range(3)
    ]
    return decide([big, *small], snap)


BACKFILL = {"q": {"guaranteed": "100%", "reserve_after": "2h"}}


def test_backfill_passes_a_large_app_that_has_not_waited_long() -> None:
    decisions = _passed_by_small_apps(1 * H, tree(BACKFILL))
    assert admitted(decisions) == ["small0", "small1", "small2"]


def test_an_app_passed_for_long_gets_a_reservation_small_apps_keep_off() -> None:
    decisions = _passed_by_small_apps(3 * H, tree(BACKFILL))
    # the room on n2 (the node with most free) is kept for big: only n1's GPU goes
    assert admitted(decisions) == ["small0"]
    assert waits(decisions)["big"].reason.startswith("reserved after waiting 3.0 h")
    assert "n2" in waits(decisions)["big"].reason


def test_a_reservation_does_not_hold_back_another_queues_guarantee() -> None:
    queues = tree(
        {
            "q": {"guaranteed": "50%", "maximum": "100%", "reserve_after": "2h"},
            "r": {"guaranteed": "50%"},
        }
    )
    snap = make_snapshot(
        make_node("n1").gpus(4).used(gpus=3),
        queues=queues,
        running=(make_running("r1").gpus(3).on("n1").queue("q").build(),),
        now=3 * H,
    )
    big = make_app("big").gpus(4).queue("q").waiting_since(0).build()
    guaranteed = make_app("theirs").gpus(1).queue("r").waiting_since(3 * H - 60).build()
    borrower = make_app("borrow").gpus(1).queue("q").waiting_since(3 * H - 60).build()
    decisions = decide([big, guaranteed, borrower], snap)
    assert admitted(decisions) == ["theirs"]


@pytest.mark.parametrize(("now", "first"), [(1 * H, "small"), (3 * H, "big")])
def test_a_reserved_app_starts_when_room_frees_before_anyone_ahead_takes_it(
    now: float, first: str
) -> None:
    queues = tree(
        {"q": {"guaranteed": "10%", "reserve_after": "2h"}, "idle": {"guaranteed": "90%"}}
    )
    snap = make_snapshot(
        make_node("n1").gpus(4).used(gpus=4),
        make_node("n2").gpus(4),
        queues=queues,
        running=(make_running("r1").gpus(4).on("n1").queue("q").build(),),
        now=now,
    )
    big = make_app("big").gpus(4).queue("q").priority(-1).waiting_since(0).build()
    small = make_app("small").gpus(1).queue("q").waiting_since(now - 60).build()
    # small is first in line (its priority); once big has waited 2 h, n2 is kept for it
    assert admitted(decide([big, small], snap)) == [first]


@pytest.mark.parametrize(
    ("runtime", "admitted_too"), [(1 * H, True), (3 * H, False), (None, False)]
)
def test_an_app_that_ends_before_a_reservation_needs_the_room_may_use_it(
    runtime: float | None, admitted_too: bool
) -> None:
    # big has waited 3 h and holds n2's room; n2's other app ends at 5 h: the room is needed
    # from then, so an app that states it ends by then may use it meanwhile (EASY backfill)
    queues = tree(
        {"q": {"guaranteed": "10%", "reserve_after": "2h"}, "idle": {"guaranteed": "90%"}}
    )
    snap = make_snapshot(
        make_node("n1").gpus(4).used(gpus=4),
        make_node("n2").gpus(4).used(gpus=2),
        queues=queues,
        running=(
            make_running("r1").gpus(4).on("n1").queue("q").ends_by(9 * H).build(),
            make_running("r2").gpus(2).on("n2").queue("q").ends_by(5 * H).build(),
        ),
        now=3 * H,
    )
    big = make_app("big").gpus(4).queue("q").waiting_since(0).build()
    small = make_app("small").gpus(1).queue("q").waiting_since(3 * H - 60)
    if runtime is not None:
        small = small.max_runtime(runtime)
    decisions = decide([big, small.build()], snap)
    assert admitted(decisions) == (["small"] if admitted_too else [])
    assert waits(decisions)["big"].reason.startswith("reserved after waiting 3.0 h")


# -- a guarantee given back in one cycle -------------------------------------------------------


def test_a_starved_queue_gets_its_whole_guarantee_back_in_one_cycle() -> None:
    queues = tree({"a": {"guaranteed": "50%"}, "b": {"guaranteed": "50%"}}, preemption=True)
    hogs = tuple(
        make_running(f"b{i}").gpus(1).on("n1").queue("b").started(float(i)).build()
        for i in range(8)
    )
    snap = make_snapshot(make_node("n1").gpus(8).used(gpus=8), queues=queues, running=hogs)
    heads = [make_app(f"a{i}").gpus(1).queue("a").build() for i in range(5)]
    decisions = decide(heads, snap)
    # a is guaranteed 4: four victims at once, the youngest, and a fifth app waits its turn
    assert sorted(preempted(decisions)) == ["b4", "b5", "b6", "b7"]
    reasons = {app_id: w.reason for app_id, w in waits(decisions).items()}
    assert all(reasons[f"a{i}"].startswith("waiting for 1 preempted") for i in range(4))
    assert "preempted" not in reasons["a4"]


def test_apps_already_stopping_count_for_the_queue_they_were_taken_for() -> None:
    queues = tree({"a": {"guaranteed": "50%"}, "b": {"guaranteed": "50%"}}, preemption=True)
    hogs = (
        make_running("b0").gpus(1).on("n1").queue("b").stopping("root.a").build(),
        *(make_running(f"b{i}").gpus(1).on("n1").queue("b").build() for i in range(1, 4)),
    )
    snap = make_snapshot(make_node("n1").gpus(4).used(gpus=4), queues=queues, running=hogs)
    heads = [make_app(f"a{i}").gpus(1).queue("a").build() for i in range(2)]
    decisions = decide(heads, snap)
    assert len(preempted(decisions)) == 1  # one more: b0 already makes room for the other
    assert waits(decisions)["a0"].reason.startswith("waiting for 1 stopping app(s)")


# -- an app that needs more than is left of its queue's guarantee --------------------------------

THREE = {"a": {"guaranteed": "25%"}, "b": {"guaranteed": "25%"}, "c": {"guaranteed": "50%"}}


def _past_guarantee(a_holds: int, b_holds: int, past: bool = True) -> list[Any]:
    """16 GPUs, all held: a (guaranteed 4) and b (guaranteed 4) by 1-GPU apps; a waits with
    a 2-GPU app that would take it past its guarantee when it holds 3."""
    queues = parse_tree(
        {
            "queues": THREE,
            "preemption": {"enabled": True, "grace_s": 30, "past_guarantee": past},
        }
    )
    running = tuple(
        make_running(f"{q}{i}").gpus(1).on("n1").queue(q).started(float(i)).build()
        for q, n in (("a", a_holds), ("b", b_holds))
        for i in range(n)
    )
    snap = make_snapshot(make_node("n1").gpus(16).used(gpus=16), queues=queues, running=running)
    return decide([make_app("big").gpus(2).queue("a").build()], snap)


def test_a_queue_under_its_guarantee_takes_room_past_it_from_a_queue_far_over_its_own() -> None:
    # a: 3 of 4, with big 5/4 = 1.25; b: 13 of 4, after two victims 11/4 = 2.75
    decisions = _past_guarantee(a_holds=3, b_holds=13)
    assert preempted(decisions) == ["b12", "b11"]  # the youngest, no more than needed
    reason = next(d.reason for d in decisions if isinstance(d, Preempt))
    assert "needs more than is left of it" in reason and "root.b is further over" in reason
    assert waits(decisions)["big"].reason.startswith("waiting for 2 preempted")


def test_no_room_past_a_guarantee_is_taken_from_a_queue_it_would_leave_less_served() -> None:
    # c idle; a: 3 of 4 -> 5/4 = 1.25 with big; b: 5 of 4 -> 3/4 after giving 2: refused
    decisions = _past_guarantee(a_holds=3, b_holds=5)
    assert preempted(decisions) == []
    assert "preempted" not in waits(decisions)["big"].reason


def test_a_queue_at_its_guarantee_takes_no_room_past_it() -> None:
    decisions = _past_guarantee(a_holds=4, b_holds=12)
    assert preempted(decisions) == []


def test_taking_room_past_a_guarantee_can_be_turned_off() -> None:
    assert preempted(_past_guarantee(a_holds=3, b_holds=13, past=False)) == []


def _room_freed_for_a_short_queue(ordering: str) -> list[Any]:
    """The cycle after a preemption for a's 2-GPU app: the victim's 2 GPUs are free, and the
    victim, back in b's line, has waited long enough for a reservation; b has a short app."""
    settings = {"ordering": ordering, "reserve_after": "1h"}
    queues = parse_tree(
        {
            "queues": {name: {**q, **settings} for name, q in THREE.items()},
            "preemption": {"enabled": True, "grace_s": 30},
        }
    )
    running = tuple(
        make_running(f"{q}{i}").gpus(1).on("n1").queue(q).started(float(i)).build()
        for q, n in (("a", 3), ("b", 11))
        for i in range(n)
    )
    snap = make_snapshot(
        make_node("n1").gpus(16).used(gpus=14), queues=queues, running=running, now=10 * H
    )
    heads = [
        make_app("big").gpus(2).queue("a").waiting_since(9 * H).max_runtime(5 * H).build(),
        make_app("victim").gpus(2).queue("b").waiting_since(0).max_runtime(4 * H).build(),
        make_app("short").gpus(2).queue("b").waiting_since(10 * H).max_runtime(60).build(),
    ]
    return decide(heads, snap)


@pytest.mark.parametrize("ordering", ["backfill", "srtf"])
def test_room_freed_past_a_guarantee_goes_to_the_app_it_was_freed_for(ordering: str) -> None:
    """Neither the victim's reservation (it waited long before it ran) nor a shorter app of
    the queue it was taken from (srtf's lending by rank) takes it back: no preemption loop."""
    decisions = _room_freed_for_a_short_queue(ordering)
    assert admitted(decisions) == ["big"]
    assert [d for d in decisions if isinstance(d, Preempt) and d.for_app == "big"] == []


def test_past_guarantee_is_checked_in_the_queue_file() -> None:
    with pytest.raises(QueueConfigError, match="past_guarantee must be true or false"):
        parse_tree({"queues": THREE, "preemption": {"enabled": True, "past_guarantee": "yes"}})


# -- guarantees keep their fractions -----------------------------------------------------------


def test_shares_round_fairly_across_sibling_queues() -> None:
    assert apportion([22.54, 22.54, 0.92], 46) == [23, 22, 1]
    assert apportion([0.3, 0.3, 0.4], 1) == [0, 0, 1]
    assert sum(apportion([4.8, 2.4, 1.8, 3.0], 12)) == 12
    assert apportion([2.5, 2.5], 5) == [3, 2]  # a tie goes to the first


def test_a_two_percent_queue_is_guaranteed_a_gpu_and_can_take_it_back() -> None:
    queues = tree(
        {
            "a": {"guaranteed": "49%"},
            "b": {"guaranteed": "49%"},
            "tiny": {"guaranteed": "2%"},
        },
        preemption=True,
    )
    nodes = [make_node(f"n{i}").gpus(46 if i == 0 else 0) for i in range(1)]
    limits = queues.resolve(Resources(cpus=64, memory_mb=1 << 20, gpus=46))
    assert limits["root.tiny"].guaranteed.gpus == 1
    hogs = (make_running("hog").gpus(46).on("n0").queue("a").build(),)
    snap = make_snapshot(nodes[0].used(gpus=46), queues=queues, running=hogs)
    decisions = decide([make_app("t").gpus(1).queue("tiny").cpus(0.1).memory(16).build()], snap)
    assert preempted(decisions) == ["hog"]


# -- apps of a removed queue -------------------------------------------------------------------


def test_an_app_of_a_removed_queue_is_held_with_the_reason() -> None:
    queues = tree({"a": {"guaranteed": "100%"}})
    snap = make_snapshot(make_node("n1").gpus(4), queues=queues)
    decisions = decide([make_app("orphan").gpus(1).queue("gone").build()], snap)
    (d,) = decisions
    assert isinstance(d, Wait)
    assert d.reason.startswith("queue gone is not in the queue configuration")


def test_an_app_of_a_removed_queue_waits_in_default_when_there_is_one() -> None:
    queues = tree({"a": {"guaranteed": "50%"}, "default": {"guaranteed": "50%"}})
    snap = make_snapshot(make_node("n1").gpus(4).used(gpus=4), queues=queues)
    (d,) = decide([make_app("orphan").gpus(1).queue("gone").build()], snap)
    assert isinstance(d, Wait)
    assert d.reason.endswith("(its queue gone is not configured: it waits in root.default)")
    snap = make_snapshot(make_node("n1").gpus(4), queues=queues)
    assert admitted(decide([make_app("orphan").gpus(1).queue("gone").build()], snap))


# -- decide_changes ------------------------------------------------------------------------------


@pytest.mark.parametrize("ordering", ["fifo", "backfill", "las", "srtf"])
def test_decide_changes_admits_and_preempts_as_decide_does(ordering: str) -> None:
    rng = random.Random(ordering)
    settings = {"ordering": ordering, "levels": [0.5, 2], "promote_after": "1h"}
    queues = tree(
        {
            "a": {"guaranteed": "50%", **settings},
            "b": {"guaranteed": "30%", "user_limit": {"gpus": 6}, **settings},
            "c": {"guaranteed": "20%", "reserve_after": "30m", **settings},
        },
        preemption=True,
    )
    for _ in range(40):
        nodes, running = [], []
        for n in range(4):
            used = 0
            for k in range(rng.randrange(0, 4)):
                gpus = rng.choice([1, 2])
                if used + gpus > 8:
                    break
                used += gpus
                running.append(
                    make_running(f"r{n}-{k}")
                    .gpus(gpus)
                    .on(f"n{n}")
                    .queue(rng.choice("abc"))
                    .started(rng.uniform(0, 3 * H))
                    .ran_before(rng.choice([0, H]))
                    .ends_by(rng.choice([None, 5 * H]))
                    .build()
                )
            nodes.append(make_node(f"n{n}").gpus(8).cpus(64).memory_gb(512).used(gpus=used))
        heads = [
            make_app(f"h{i}")
            .gpus(rng.choice([1, 1, 2, 4, 8]))
            .containers(rng.choice([1, 1, 2]))
            .queue(rng.choice("abc"))
            .user(rng.choice(["u", "v"]))
            .ran(rng.choice([0, 0, 2 * H]))
            .waiting_since(rng.uniform(0, 3 * H))
            .max_runtime(rng.choice([H, 4 * H]))
            .build()
            for i in range(rng.randrange(1, 30))
        ]
        snap = make_snapshot(*nodes, queues=queues, running=tuple(running), now=3 * H)
        full = [d for d in decide(heads, snap) if not isinstance(d, Wait)]
        changes = decide_changes(Backlog(queues, heads), snap)
        assert sorted(map(repr, changes)) == sorted(map(repr, full))
