"""Queues' guarantees and maxima per GPU model (``gpu_types``): parsed with clear errors,
resolved for a cluster, and honoured by ``decide``."""

from __future__ import annotations

import pytest

from dlapp.scheduler import (
    Admit,
    Preempt,
    QueueConfigError,
    Resources,
    RunningApp,
    Wait,
    decide,
    parse_tree,
)

from builders import make_app, make_node, make_snapshot


def _tree(queues: dict[str, object], preemption: bool = False) -> object:
    return parse_tree({"queues": queues, "preemption": {"enabled": preemption, "grace_s": 1}})


def test_per_model_capacities_resolve_against_the_models_gpus() -> None:
    tree = parse_tree(
        {
            "queues": {
                "nlp": {
                    "guaranteed": {"gpus": "50%", "gpu_types": {"A100": 4}},
                    "maximum": {"gpu_types": {"a100": "75%", "H100": 2}},
                },
                "vision": {"guaranteed": {"gpu_types": {"A100": "50%"}}},
            }
        }
    )

    limits = tree.resolve_types({"A100": 8.0, "H100": 4.0})

    assert tree.typed
    assert limits["root.nlp"].guaranteed == {"A100": 4.0}
    assert limits["root.nlp"].maximum == {"A100": 6.0, "H100": 2.0}
    assert limits["root.vision"].guaranteed == {"A100": 4.0}
    assert limits["root.vision"].maximum == {}  # no cap of its own or its parent's


def test_per_model_capacity_errors_name_the_problem() -> None:
    with pytest.raises(QueueConfigError) as err:
        parse_tree(
            {
                "queues": {
                    "a": {
                        "guaranteed": {"gpu_types": {"A100": "80%", "bad model!": 1}},
                        "maximum": {"gpu_types": {"A100": "50%"}, "gpu": 3},
                    },
                    "b": {"guaranteed": {"gpu_types": {"A100": "40%"}}},
                    "c": {"maximum": {"gpu_types": [1, 2]}},
                }
            }
        )
    message = err.value.message
    assert "'bad model!' is not a GPU model name" in message
    assert "unknown resource(s) ['gpu']; valid: gpus, cpus, memory, gpu_types" in message
    assert "guaranteed gpu_types.A100 80% is over its maximum 50%" in message
    assert "the children's guaranteed A100 GPUs add up to 120% (over 100%)" in message
    assert "root.c: maximum.gpu_types must map GPU models to amounts" in message


def test_a_queue_at_its_model_maximum_waits_saying_so() -> None:
    tree = _tree({"nlp": {"maximum": {"gpu_types": {"A100": 2}}}})
    snap = make_snapshot(
        make_node("a1").gpus(4).model("A100").used(gpus=2),
        queues=tree,
        running=(RunningApp("r", "u", "root.nlp", 1, Resources(1, 1024, 2), ("a1",)),),
    )

    [decision] = decide([make_app("x").gpus(1).gpu_types("A100").queue("nlp").build()], snap)

    assert isinstance(decision, Wait)
    assert decision.reason == "needs an A100; root.nlp holds 2/2 A100s, its maximum of them"


def test_a_model_maximum_sends_the_app_to_other_models() -> None:
    tree = _tree({"nlp": {"maximum": {"gpu_types": {"A100": 0}}}})
    snap = make_snapshot(
        make_node("a1").gpus(1).model("A100"),  # pack would pick it: fewest free GPUs
        make_node("h1").gpus(8).model("H100"),
        queues=tree,
    )

    [decision] = decide([make_app("x").gpus(1).queue("nlp").build()], snap)

    assert decision == Admit("x", ("h1",))


def test_a_model_guarantee_serves_its_queue_first() -> None:
    # vision is guaranteed the A100s; without that, aaa (guaranteed half the GPUs, so less
    # used than a queue guaranteed nothing) would borrow first and take the one A100 node
    tree = _tree(
        {
            "aaa": {"guaranteed": {"gpus": "50%"}},
            "vision": {"guaranteed": {"gpu_types": {"A100": 2}}},
        }
    )
    snap = make_snapshot(make_node("a1").gpus(2).model("A100"), queues=tree)
    first = make_app("first").gpus(2).queue("aaa").build()
    mine = make_app("mine").gpus(2).queue("vision").build()

    decisions = decide([first, mine], snap)

    assert decisions[1] == Admit("mine", ("a1",))
    assert isinstance(decisions[0], Wait)


def test_a_model_guarantee_preempts_a_queue_borrowing_those_gpus() -> None:
    tree = _tree(
        {
            "other": {"guaranteed": {"gpus": "100%"}},
            "vision": {"guaranteed": {"gpu_types": {"A100": 2}}},
        },
        preemption=True,
    )
    borrower = RunningApp("borrower", "u", "root.other", 1, Resources(1, 1024, 2), ("a1",))
    snap = make_snapshot(
        make_node("a1").gpus(2).model("A100").used(1, "1G", 2),
        make_node("t1").gpus(2).model("T4"),
        queues=tree,
        running=(borrower,),
    )

    decisions = decide([make_app("mine").gpus(2).queue("vision").gpu_types("A100").build()], snap)

    assert isinstance(decisions[0], Wait)
    assert [d.app_id for d in decisions if isinstance(d, Preempt)] == ["borrower"]
    preempt = next(d for d in decisions if isinstance(d, Preempt))
    assert "queue root.vision is guaranteed A100 GPUs" in preempt.reason


def test_apps_on_gpus_their_queue_is_guaranteed_are_not_taken_for_a_general_guarantee() -> None:
    tree = _tree(
        {
            "general": {"guaranteed": {"gpus": "50%"}},
            "vision": {"guaranteed": {"gpus": "0%", "gpu_types": {"A100": 2}}},
        },
        preemption=True,
    )
    held = RunningApp("held", "u", "root.vision", 1, Resources(1, 1024, 2), ("a1",))
    snap = make_snapshot(
        make_node("a1").gpus(2).model("A100").used(1, "1G", 2),
        queues=tree,
        running=(held,),
    )

    decisions = decide([make_app("x").gpus(1).queue("general").build()], snap)

    assert not [d for d in decisions if isinstance(d, Preempt)]
