"""Capacity queues in the policy: guarantee, elasticity, user limit, DRF, priority, preemption.

Scenarios follow the Capacity Scheduler's documentation: a queue gets its guaranteed share
when it has demand; idle capacity is lent to other queues up to their maximum; a user limit
caps one user inside a queue.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from dlapp.scheduler import (
    Admit,
    AppHead,
    Preempt,
    QueueConfigError,
    QueueTree,
    Resources,
    RunningApp,
    Wait,
    decide,
    parse_tree,
)

from builders import make_app, make_node, make_snapshot


def tree(queues: dict[str, Any], preemption: bool = False) -> QueueTree:
    return parse_tree({"queues": queues, "preemption": {"enabled": preemption, "grace_s": 5}})


TWO_TEAMS = {
    "a": {"guaranteed": "50%", "maximum": "100%"},
    "b": {"guaranteed": "50%", "maximum": "100%"},
}


def running(app_id: str, queue: str, gpus: int, node: str = "n1", **kw: Any) -> RunningApp:
    defaults: dict[str, Any] = {"user": "u", "seq": 0, "started_at": 0.0}
    defaults.update(kw)
    return RunningApp(
        app_id=app_id,
        queue=queue,
        request=Resources(1, 1024, gpus),
        nodes=(node,),
        **defaults,
    )


def admitted(decisions: list[Any]) -> list[str]:
    return [d.app_id for d in decisions if isinstance(d, Admit)]


def reasons(decisions: list[Any]) -> dict[str, str]:
    return {d.app_id: d.reason for d in decisions if isinstance(d, Wait)}


# -- configuration ----------------------------------------------------------------------------


def test_shares_resolve_against_the_parent() -> None:
    t = tree(
        {
            "research": {
                "guaranteed": {"gpus": "50%"},
                "children": {"vision": {"guaranteed": "50%"}, "nlp": {"guaranteed": "50%"}},
            },
            "prod": {"guaranteed": {"gpus": "25%"}, "maximum": {"gpus": 6}},
        }
    )
    limits = t.resolve(Resources(64, 256 * 1024, 16))
    assert limits["root.research"].guaranteed.gpus == 8
    assert limits["root.research.vision"].guaranteed.gpus == 4
    assert limits["root.research.vision"].maximum.gpus == 16
    assert limits["root.prod"].maximum.gpus == 6
    assert limits["root.prod"].guaranteed.gpus == 4
    assert t.leaf("vision").path == "root.research.vision"
    assert t.leaf("research.nlp").path == "root.research.nlp"


def test_invalid_configuration_lists_every_problem() -> None:
    with pytest.raises(QueueConfigError) as err:
        parse_tree(
            {
                "queues": {
                    "a": {"guaranteed": "70%", "maximum": "60%"},
                    "b": {"guaranteed": "40%", "colour": "blue"},
                    "bad name": {},
                }
            }
        )
    msg = err.value.message
    assert "guaranteed gpus 70% is over its maximum 60%" in msg
    assert "unknown key(s) ['colour']" in msg
    assert "add up to 110%" in msg
    assert "'bad name'" in msg


def test_unknown_and_parent_queue_names_are_refused_with_the_choices() -> None:
    t = tree({"research": {"children": {"vision": {}}}, "prod": {}})
    with pytest.raises(
        QueueConfigError,
        match=re.escape("no queue 'nope'; queues: root.research.vision, root.prod"),
    ):
        t.leaf("nope")
    with pytest.raises(
        QueueConfigError,
        match=re.escape("has child queues; submit to one of: root.research.vision"),
    ):
        t.leaf("research")


# -- guarantee and elasticity -----------------------------------------------------------------


def test_idle_capacity_is_lent_to_a_busy_queue_up_to_its_maximum() -> None:
    t = tree({"a": {"guaranteed": "50%", "maximum": "75%"}, "b": {"guaranteed": "50%"}})
    snap = make_snapshot(make_node("n1").gpus(8), queues=t)
    apps = [make_app(f"a{i}").gpus(2).queue("a").build() for i in range(4)]
    decisions = decide(apps, snap)
    assert admitted(decisions) == ["a0", "a1", "a2"]  # 6 of 8 GPUs: its 75% maximum
    assert reasons(decisions)["a3"].startswith("queue root.a at its maximum (6/6 GPUs in use")


def test_a_queue_under_its_guarantee_is_served_first() -> None:
    t = tree(TWO_TEAMS)
    # a already holds 3 of 4 GPUs; b holds none: b's app goes before a's older one
    snap = make_snapshot(
        make_node("n1").gpus(4).used(gpus=3), queues=t, running=(running("r", "root.a", 3),)
    )
    older = make_app("a-more").gpus(1).queue("a").seq(1).build()
    newer = make_app("b-first").gpus(1).queue("b").seq(2).build()
    decisions = decide([older, newer], snap)
    assert admitted(decisions) == ["b-first"]
    assert "needs 1 container" in reasons(decisions)["a-more"]


def test_queues_share_by_dominant_resource_fairness() -> None:
    t = tree(TWO_TEAMS)
    snap = make_snapshot(make_node("n1").gpus(8), queues=t)
    a = [make_app(f"a{i}").gpus(1).queue("a").seq(i).build() for i in range(8)]
    b = [make_app(f"b{i}").gpus(1).queue("b").seq(100 + i).build() for i in range(8)]
    ok = admitted(decide(a + b, snap))
    assert sorted(x[0] for x in ok) == ["a"] * 4 + ["b"] * 4


# -- users and priority -----------------------------------------------------------------------


def test_user_limit_caps_one_user_and_lets_others_in() -> None:
    t = tree({"nlp": {"guaranteed": "100%", "user_limit": {"gpus": 4}}})
    snap = make_snapshot(make_node("n1").gpus(8), queues=t)
    alice = [make_app(f"al{i}").gpus(2).queue("nlp").user("alice").seq(i).build() for i in range(3)]
    bob = make_app("bob").gpus(2).queue("nlp").user("bob").seq(9).build()
    decisions = decide([*alice, bob], snap)
    assert admitted(decisions) == ["al0", "al1", "bob"]
    assert reasons(decisions)["al2"] == "user limit: alice holds 4/4 GPUs in root.nlp"


def test_users_in_a_queue_alternate_by_dominant_share() -> None:
    t = tree({"q": {"guaranteed": "100%"}})
    snap = make_snapshot(make_node("n1").gpus(4), queues=t)
    alice = [make_app(f"al{i}").gpus(1).queue("q").user("alice").seq(i).build() for i in range(4)]
    bob = [make_app(f"bo{i}").gpus(1).queue("q").user("bob").seq(10 + i).build() for i in range(4)]
    assert sorted(admitted(decide(alice + bob, snap))) == ["al0", "al1", "bo0", "bo1"]


def test_priority_goes_first_inside_a_queue() -> None:
    snap = make_snapshot(make_node("n1").gpus(1))
    low = make_app("low").gpus(1).seq(1).build()
    high = AppHead(**{**make_app("high").gpus(1).seq(2).build().__dict__, "priority": 5})
    decisions = decide([low, high], snap)
    assert admitted(decisions) == ["high"]
    assert next(d for d in decisions if d.app_id == "low").position == 1


# -- preemption -------------------------------------------------------------------------------


def test_no_preemption_when_it_is_off() -> None:
    snap = make_snapshot(
        make_node("n1").gpus(2).used(gpus=2),
        queues=tree(TWO_TEAMS),
        running=(running("hog", "root.a", 2),),
    )
    decisions = decide([make_app("b1").gpus(1).queue("b").build()], snap)
    assert not [d for d in decisions if isinstance(d, Preempt)]


def test_preemption_takes_back_a_guarantee_youngest_and_lowest_priority_first() -> None:
    t = tree(TWO_TEAMS, preemption=True)
    hogs = (
        running("old", "root.a", 1, started_at=10.0, seq=1),
        running("young", "root.a", 1, started_at=20.0, seq=2),
        running("young-important", "root.a", 1, started_at=30.0, seq=3, priority=9),
        running("b-own", "root.b", 1, started_at=5.0, seq=4),
    )
    snap = make_snapshot(make_node("n1").gpus(4).used(gpus=4), queues=t, running=hogs)
    decisions = decide([make_app("b1").gpus(1).queue("b").build()], snap)
    preempts = [d for d in decisions if isinstance(d, Preempt)]
    assert [p.app_id for p in preempts] == ["young"]  # one GPU needed: one victim, no more
    assert preempts[0].for_app == "b1" and "root.b is under its guarantee" in preempts[0].reason
    assert "preempted app" in reasons(decisions)["b1"]


def test_a_gang_bigger_than_the_overage_is_taken_when_nothing_smaller_frees_room() -> None:
    t = tree(TWO_TEAMS, preemption=True)
    snap = make_snapshot(
        make_node("n1").gpus(2).used(gpus=2), queues=t, running=(running("big", "root.a", 2),)
    )
    decisions = decide([make_app("b1").gpus(1).queue("b").build()], snap)
    assert [d.app_id for d in decisions if isinstance(d, Preempt)] == ["big"]


def test_only_borrowing_queues_lose_apps() -> None:
    three = tree(
        {
            "a": {"guaranteed": "50%"},
            "b": {"guaranteed": "25%"},
            "c": {"guaranteed": "25%"},
        },
        preemption=True,
    )
    hogs = (
        running("a-old", "root.a", 1, started_at=1.0),
        running("a-young", "root.a", 1, started_at=99.0),  # a holds its guarantee: safe
        running("c-old", "root.c", 1, started_at=10.0),
        running("c-young", "root.c", 1, started_at=20.0),  # c borrows one GPU
    )
    snap = make_snapshot(make_node("n1").gpus(4).used(gpus=4), queues=three, running=hogs)
    decisions = decide([make_app("b1").gpus(1).queue("b").build()], snap)
    assert [d.app_id for d in decisions if isinstance(d, Preempt)] == ["c-young"]


def test_a_queue_at_its_guarantee_does_not_preempt() -> None:
    t = tree(TWO_TEAMS, preemption=True)
    snap = make_snapshot(
        make_node("n1").gpus(4).used(gpus=4),
        queues=t,
        running=(running("a1", "root.a", 2), running("b-big", "root.b", 2)),
    )
    # b wants 1 more GPU but already holds its guarantee (2 of 4): preemption only gives a
    # guarantee back, it never helps a queue borrow
    decisions = decide([make_app("b2").gpus(1).queue("b").build()], snap)
    assert not [d for d in decisions if isinstance(d, Preempt)]


def test_apps_already_stopping_are_waited_for_not_preempted_again() -> None:
    t = tree(TWO_TEAMS, preemption=True)
    snap = make_snapshot(
        make_node("n1").gpus(2).used(gpus=2),
        queues=t,
        running=(running("going", "root.a", 2, stopping=True),),
    )
    decisions = decide([make_app("b1").gpus(1).queue("b").build()], snap)
    assert not [d for d in decisions if isinstance(d, Preempt)]
    assert "stopping app(s)" in reasons(decisions)["b1"]


def test_a_non_preemptible_queue_is_never_a_victim() -> None:
    t = tree(
        {"a": {"guaranteed": "50%", "preemptible": False}, "b": {"guaranteed": "50%"}},
        preemption=True,
    )
    snap = make_snapshot(
        make_node("n1").gpus(2).used(gpus=2), queues=t, running=(running("safe", "root.a", 2),)
    )
    decisions = decide([make_app("b1").gpus(1).queue("b").build()], snap)
    assert not [d for d in decisions if isinstance(d, Preempt)]


# -- why pending, and when ----------------------------------------------------------------------


def test_estimate_comes_from_running_apps_max_runtime() -> None:
    snap = make_snapshot(
        make_node("n1").gpus(2).used(gpus=2),
        running=(
            running("ends-late", "root.default", 1, ends_by=500.0),
            running("ends-soon", "root.default", 1, ends_by=200.0),
        ),
        now=100.0,
    )
    (d,) = decide([make_app("w").gpus(1).queue("default").build()], snap)
    assert isinstance(d, Wait) and d.estimate == 200.0


def test_gang_reason_says_how_many_fit() -> None:
    snap = make_snapshot(make_node("n1").gpus(2), make_node("n2").gpus(2).used(gpus=1))
    (d,) = decide([make_app("g").gpus(2).containers(3).build()], snap)
    assert (
        isinstance(d, Wait)
        and "needs 3 containers of" in d.reason
        and "only 1 fits now" in d.reason
    )


# -- placement strategy -----------------------------------------------------------------------


def _spread(app_id: str, containers: int) -> AppHead:
    head = make_app(app_id).gpus(1).containers(containers).build()
    return AppHead(**{**head.__dict__, "spread": True})


def test_spread_puts_each_container_on_its_own_node() -> None:
    snap = make_snapshot(make_node("n1").gpus(4), make_node("n2").gpus(4), make_node("n3").gpus(1))
    packed = make_app("packed").gpus(1).containers(2).build()
    assert decide([packed], snap) == [Admit("packed", ("n3", "n1"))]  # best fit, tightest first
    (d,) = decide([_spread("spread", 3)], snap)
    assert isinstance(d, Admit) and sorted(d.nodes) == ["n1", "n2", "n3"]


def test_spread_waits_when_there_are_fewer_nodes_than_containers() -> None:
    snap = make_snapshot(make_node("n1").gpus(8))
    (d,) = decide([_spread("s", 2)], snap)
    assert isinstance(d, Wait)
    assert "2 containers on different nodes; only 1 node can hold one now" in d.reason
