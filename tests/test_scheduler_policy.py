"""The scheduler's pure core: feed heads and a snapshot, compare the decisions."""

from __future__ import annotations

import pytest

from dlapp.errors import InfeasibleError
from dlapp.scheduler import (
    Admit,
    Resources,
    Wait,
    check_feasible,
    decide,
    parse_tree,
    place_gang,
)

from builders import make_app, make_node, make_snapshot

# --- Resources -------------------------------------------------------------------------------


def test_describe_is_plural_aware() -> None:
    assert Resources(cpus=1, memory_mb=2048, gpus=1).describe() == "1 CPU, 2.0 GiB, 1 GPU"
    assert Resources(cpus=2, memory_mb=1536, gpus=0).describe() == "2 CPUs, 1.5 GiB, 0 GPUs"
    assert Resources(cpus=0.5, memory_mb=512, gpus=2).describe() == "0.5 CPUs, 512 MiB, 2 GPUs"


def test_resources_arithmetic_and_fit() -> None:
    a = Resources(cpus=1.5, memory_mb=1024, gpus=1)
    b = Resources(cpus=0.5, memory_mb=512, gpus=1)
    assert a + b == Resources(cpus=2.0, memory_mb=1536, gpus=2)
    assert a - b == Resources(cpus=1.0, memory_mb=512, gpus=0)
    assert b.scaled(3) == Resources(cpus=1.5, memory_mb=1536, gpus=3)
    assert b.fits_in(a)
    assert not a.fits_in(b)
    assert not Resources(gpus=2).fits_in(Resources(cpus=64, memory_mb=10**6, gpus=1))


def test_fractional_cpus_fit_despite_float_drift() -> None:
    free = Resources(cpus=1.0)
    for _ in range(9):
        free = free - Resources(cpus=0.1)
    assert Resources(cpus=0.1).fits_in(free)


# --- Snapshot --------------------------------------------------------------------------------


def test_allocate_returns_a_reduced_copy() -> None:
    snap = make_snapshot(make_node("n1").gpus(4).cpus(8).memory_gb(32), make_node("n2"))
    after = snap.allocate("n1", Resources(cpus=2, memory_mb=4096, gpus=3))
    assert after.node("n1").free == Resources(cpus=6, memory_mb=28 * 1024, gpus=1)
    assert after.node("n2") == snap.node("n2")
    assert snap.node("n1").free == Resources(cpus=8, memory_mb=32 * 1024, gpus=4)


def test_allocate_raises_on_overflow_and_leaves_original_unchanged() -> None:
    snap = make_snapshot(make_node("n1").gpus(2).used(gpus=1))
    before = snap.node("n1")
    with pytest.raises(ValueError, match="n1"):
        snap.allocate("n1", Resources(gpus=2))
    assert snap.node("n1") == before
    assert snap.free().gpus == 1


def test_totals_and_free_sum_every_node() -> None:
    snap = make_snapshot(
        make_node("n1").gpus(4).cpus(8).memory_gb(32).used(gpus=1, cpus=2, memory="4G"),
        make_node("n2").gpus(0).cpus(16).memory_gb(64).drained(),
    )
    assert snap.totals() == Resources(cpus=24, memory_mb=96 * 1024, gpus=4)
    assert snap.free() == Resources(cpus=22, memory_mb=92 * 1024, gpus=3)


def test_snapshot_rejects_duplicate_node_ids() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        make_snapshot(make_node("a").id("x"), make_node("b").id("x"))


# --- FIFO and queues -------------------------------------------------------------------------


def test_fifo_admits_the_earliest_submission_first() -> None:
    snap = make_snapshot(make_node("n1").gpus(2))
    late = make_app("late").gpus(2).seq(2).build()
    early = make_app("early").gpus(2).seq(1).build()

    decisions = decide([late, early], snap)

    assert decisions[1] == Admit("early", ("n1",))
    assert isinstance(decisions[0], Wait)
    assert decisions[0].app_id == "late"


def test_head_of_line_blocks_the_rest_of_a_fifo_queue() -> None:
    fifo = parse_tree({"queues": {"q": {"guaranteed": "100%", "ordering": "fifo"}}})
    snap = make_snapshot(make_node("n1").gpus(2), queues=fifo)
    big = make_app("big").gpus(4).queue("q").build()
    small = make_app("small").gpus(1).queue("q").build()

    decisions = decide([big, small], snap)

    assert isinstance(decisions[0], Wait)
    assert decisions[0].position == 1
    why = "waiting behind big (first in queue root.q, which is fifo)"
    assert decisions[1] == Wait("small", 2, why)


def test_a_backfill_queue_lets_a_smaller_app_go_past_a_blocked_one() -> None:
    snap = make_snapshot(make_node("n1").gpus(2))
    big = make_app("big").gpus(4).queue("q").build()
    small = make_app("small").gpus(1).queue("q").build()

    decisions = decide([big, small], snap)

    assert isinstance(decisions[0], Wait) and decisions[0].position == 1
    assert decisions[1] == Admit("small", ("n1",))


def test_another_queue_proceeds_past_a_blocked_queue() -> None:
    snap = make_snapshot(make_node("n1").gpus(2))
    big = make_app("big").gpus(4).queue("a").build()
    small = make_app("small").gpus(1).queue("b").build()

    assert decide([big, small], snap)[1] == Admit("small", ("n1",))


def test_positions_count_only_the_apps_still_waiting() -> None:
    snap = make_snapshot(make_node("n1").gpus(2))
    apps = [make_app(f"a{i}").gpus(2).queue("q").build() for i in range(1, 5)]

    decisions = decide(apps, snap)

    assert decisions[0] == Admit("a1", ("n1",))
    waits = decisions[1:]
    assert all(isinstance(d, Wait) for d in waits)
    assert [d.position for d in waits if isinstance(d, Wait)] == [1, 2, 3]
    assert waits[2].app_id == "a4" and "needs 1 container of" in waits[2].reason


def test_admitted_apps_reduce_the_snapshot_for_later_heads() -> None:
    snap = make_snapshot(make_node("n1").gpus(4))
    first = make_app("first").gpus(3).queue("a").build()
    second = make_app("second").gpus(2).queue("b").build()

    decisions = decide([first, second], snap)

    assert decisions[0] == Admit("first", ("n1",))
    assert isinstance(decisions[1], Wait)
    assert "1 GPU (node n1)" in decisions[1].reason


def test_decide_returns_one_decision_per_head_in_input_order() -> None:
    snap = make_snapshot(make_node("n1").gpus(8))
    heads = [make_app(f"a{i}").gpus(1).seq(10 - i).build() for i in range(5)]

    assert [d.app_id for d in decide(heads, snap)] == [h.app_id for h in heads]


def test_decide_is_pure() -> None:
    snap = make_snapshot(make_node("n1").gpus(2), make_node("n2").gpus(1))
    heads = [
        make_app("a").gpus(2).build(),
        make_app("b").gpus(1).build(),
        make_app("c").gpus(1).build(),
    ]
    nodes_before = snap.nodes

    first = decide(heads, snap)
    second = decide(heads, snap)

    assert first == second
    assert snap.nodes == nodes_before
    assert snap.free().gpus == 3


# --- Gang placement --------------------------------------------------------------------------


def test_gang_is_all_or_nothing() -> None:
    snap = make_snapshot(make_node("n1").gpus(3), make_node("n2").gpus(1))
    app = make_app("gang").gpus(2).containers(2).build()

    assert place_gang(app, snap) is None
    [decision] = decide([app], snap)
    assert isinstance(decision, Wait)
    assert decision.reason == (
        "needs 2 containers of 1 CPU, 1.0 GiB, 2 GPUs at once; only 1 fits now"
    )


def test_gang_spans_two_nodes_when_neither_holds_both() -> None:
    snap = make_snapshot(make_node("n1").gpus(2), make_node("n2").gpus(3).used(gpus=1))
    app = make_app("gang").gpus(2).containers(2).build()

    [decision] = decide([app], snap)

    assert isinstance(decision, Admit)
    assert sorted(decision.nodes) == ["n1", "n2"]


def test_gang_packs_onto_one_node_when_it_holds_all() -> None:
    snap = make_snapshot(make_node("n1").gpus(4), make_node("n2").gpus(8))
    app = make_app("gang").gpus(2).containers(2).build()

    assert place_gang(app, snap) == ("n1", "n1")


# --- Best fit --------------------------------------------------------------------------------


def test_best_fit_chooses_the_node_with_fewest_free_gpus() -> None:
    snap = make_snapshot(
        make_node("roomy").gpus(8),
        make_node("tight").gpus(4).used(gpus=2),
    )
    app = make_app("a").gpus(2).build()

    assert place_gang(app, snap) == ("tight",)


def test_best_fit_breaks_gpu_ties_by_fewest_free_cpus() -> None:
    snap = make_snapshot(make_node("many").gpus(2).cpus(32), make_node("few").gpus(2).cpus(4))

    assert place_gang(make_app("a").gpus(1).build(), snap) == ("few",)


def test_best_fit_breaks_full_ties_by_name() -> None:
    snap = make_snapshot(make_node("b").gpus(2), make_node("a").gpus(2))

    assert place_gang(make_app("x").gpus(1).build(), snap) == ("a",)


def test_cpu_only_app_avoids_the_gpu_node() -> None:
    snap = make_snapshot(
        make_node("gpu").gpus(8).cpus(4),
        make_node("cpu").gpus(0).cpus(64),
    )
    app = make_app("prep").gpus(0).cpus(2).build()

    assert place_gang(app, snap) == ("cpu",)


def test_cpu_only_app_uses_a_gpu_node_when_no_cpu_node_fits() -> None:
    snap = make_snapshot(make_node("gpu").gpus(8).cpus(16), make_node("cpu").gpus(0).cpus(2))
    app = make_app("prep").gpus(0).cpus(8).build()

    assert place_gang(app, snap) == ("gpu",)


# --- Include / exclude / schedulable ---------------------------------------------------------


def test_include_limits_placement_to_the_named_node() -> None:
    snap = make_snapshot(make_node("10.0.0.1").gpus(2), make_node("10.0.0.2").gpus(4))
    app = make_app("a").gpus(2).include("10.0.0.2").build()

    assert place_gang(app, snap) == ("10.0.0.2",)


def test_include_matches_node_id_as_well_as_name() -> None:
    snap = make_snapshot(
        make_node("10.0.0.1").id("abc").gpus(2),
        make_node("10.0.0.2").id("def").gpus(4),
    )
    app = make_app("a").gpus(2).include("def").build()

    assert place_gang(app, snap) == ("def",)


def test_exclude_skips_the_named_node() -> None:
    snap = make_snapshot(make_node("10.0.0.1").gpus(2), make_node("10.0.0.2").gpus(4))
    app = make_app("a").gpus(2).exclude("10.0.0.1").build()

    assert place_gang(app, snap) == ("10.0.0.2",)


def test_no_allowed_node_says_so() -> None:
    snap = make_snapshot(make_node("10.0.0.1").gpus(2))
    app = make_app("a").gpus(1).include("10.0.0.9", "10.0.0.8").build()

    [decision] = decide([app], snap)

    assert decision == Wait("a", 1, "no allowed node (include: [10.0.0.9, 10.0.0.8])")


def test_unschedulable_node_is_skipped() -> None:
    snap = make_snapshot(make_node("drained").gpus(8).drained(), make_node("ok").gpus(2))

    assert place_gang(make_app("a").gpus(1).build(), snap) == ("ok",)
    assert place_gang(make_app("b").gpus(4).build(), snap) is None


def test_wait_when_every_node_is_drained() -> None:
    snap = make_snapshot(make_node("n1").gpus(8).drained())

    [decision] = decide([make_app("a").gpus(1).build()], snap)

    assert isinstance(decision, Wait)
    assert "no schedulable node" in decision.reason


# --- Wait reasons ----------------------------------------------------------------------------


def test_wait_reason_names_the_short_resource_and_the_node_with_most() -> None:
    snap = make_snapshot(
        make_node("10.0.0.1").gpus(4).used(gpus=4),
        make_node("10.0.0.2").gpus(2).used(gpus=1),
    )
    app = make_app("a").cpus(1).memory("2G").gpus(2).build()

    [decision] = decide([app], snap)

    assert decision == Wait(
        "a",
        1,
        "needs 1 container of 1 CPU, 2.0 GiB, 2 GPUs; "
        "the most free on any node: 1 GPU (node 10.0.0.2)",
    )


def test_wait_reason_names_memory_when_memory_is_short() -> None:
    snap = make_snapshot(make_node("n1").memory_gb(8).used(memory="7G"))
    app = make_app("a").memory("2G").build()

    [decision] = decide([app], snap)

    assert isinstance(decision, Wait)
    assert decision.reason.endswith("the most free on any node: 1.0 GiB (node n1)")


# --- Feasibility -----------------------------------------------------------------------------


def test_feasible_request_passes_even_on_a_busy_cluster() -> None:
    nodes = [make_node("n1").gpus(4).used(gpus=4).build()]

    check_feasible(Resources(cpus=1, memory_mb=1024, gpus=4), 1, nodes)


def test_drained_nodes_still_count_for_feasibility() -> None:
    nodes = [make_node("n1").gpus(4).drained().build()]

    check_feasible(Resources(gpus=4), 1, nodes)


def test_infeasible_container_names_the_resource_and_the_largest_node() -> None:
    nodes = [make_node("10.0.0.1").gpus(2).build(), make_node("10.0.0.2").gpus(1).build()]

    with pytest.raises(InfeasibleError) as info:
        check_feasible(Resources(cpus=1, memory_mb=1024, gpus=4), 1, nodes)

    assert info.value.message == (
        "a container asks for 4 GPUs but the largest node (10.0.0.1) has 2 GPUs"
    )


def test_infeasible_container_names_every_short_resource() -> None:
    nodes = [make_node("n1").cpus(8).memory_gb(16).gpus(2).build()]

    with pytest.raises(InfeasibleError) as info:
        check_feasible(Resources(cpus=16, memory_mb=1024, gpus=4), 1, nodes)

    assert "4 GPUs but the largest node (n1) has 2 GPUs" in info.value.message
    assert "16 CPUs but the largest node (n1) has 8 CPUs" in info.value.message


def test_infeasible_gang_on_the_empty_cluster() -> None:
    nodes = [make_node("n1").gpus(2).build(), make_node("n2").gpus(2).build()]

    with pytest.raises(InfeasibleError) as info:
        check_feasible(Resources(cpus=1, memory_mb=1024, gpus=2), 8, nodes)

    assert info.value.message.startswith(
        "8 containers of 2 GPUs need 16 GPUs at once; the cluster has 4"
    )


def test_infeasible_gang_that_fragments_across_nodes() -> None:
    nodes = [make_node("n1").gpus(3).build(), make_node("n2").gpus(3).build()]

    with pytest.raises(InfeasibleError, match="at most 2 fit at once"):
        check_feasible(Resources(cpus=1, memory_mb=1024, gpus=2), 3, nodes)


def test_infeasible_when_no_node_has_all_of_a_container() -> None:
    nodes = [make_node("gpu").gpus(4).cpus(4).build(), make_node("cpu").cpus(64).build()]

    with pytest.raises(InfeasibleError, match="no node has all of that at once"):
        check_feasible(Resources(cpus=8, memory_mb=1024, gpus=1), 1, nodes)


def test_infeasible_within_the_included_nodes() -> None:
    nodes = [make_node("big").gpus(8).build(), make_node("small").gpus(1).build()]

    with pytest.raises(InfeasibleError) as info:
        check_feasible(Resources(gpus=2), 1, nodes, include=["small"])

    assert info.value.message == (
        "a container asks for 2 GPUs but the largest allowed node (small) has 1 GPU"
    )


def test_infeasible_when_include_names_no_node() -> None:
    nodes = [make_node("n1").gpus(8).build()]

    with pytest.raises(InfeasibleError, match=r"no allowed node \(include: \[n9\]\)"):
        check_feasible(Resources(gpus=1), 1, nodes, include=["n9"])


def test_infeasible_when_the_cluster_has_no_nodes() -> None:
    with pytest.raises(InfeasibleError, match="the cluster has no nodes"):
        check_feasible(Resources(gpus=1), 1, [])
