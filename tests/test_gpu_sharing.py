"""GPU sharing in the scheduler's pure core: fractions of a device, MIG instances, GPU models,
and fragmentation-aware placement. Feed heads and a snapshot, compare the decisions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dlapp.errors import InfeasibleError
from dlapp.scheduler import (
    Admit,
    AppHead,
    Resources,
    TaskShape,
    Wait,
    check_feasible,
    decide,
    gpu_model,
    mig_profile,
    mig_share,
    place_gang,
    workload,
)
from dlapp.scheduler.gpus import fragmentation, pick_devices

from builders import make_app, make_node, make_snapshot

# --- fractions of one device -----------------------------------------------------------------


def test_two_half_gpu_apps_share_one_device_and_a_whole_gpu_app_gets_its_own() -> None:
    snap = make_snapshot(make_node("n1").gpus(2))
    halves = [make_app(f"half{i}").gpus(0.5).build() for i in range(2)]
    whole = make_app("whole").gpus(1).build()

    decisions = decide([*halves, whole], snap)

    assert all(isinstance(d, Admit) for d in decisions)
    first, second, third = (d.devices for d in decisions if isinstance(d, Admit))
    assert first == second and len(first[0]) == 1  # both halves on the same one device
    assert set(third[0]).isdisjoint(first[0])  # the whole GPU is another device


def test_a_fraction_never_lands_on_a_device_held_whole() -> None:
    # device 0 is held whole by another app; device 1 is free
    snap = make_snapshot(make_node("n1").shared(0, 1))

    [decision] = decide([make_app("frac").gpus(0.25).build()], snap)

    assert isinstance(decision, Admit)
    assert decision.devices == ((1,),)


def test_a_whole_gpu_app_waits_when_the_free_share_is_in_pieces() -> None:
    snap = make_snapshot(make_node("n1").shared(0.5, 0.5))  # one GPU free, in two halves

    [decision] = decide([make_app("whole").gpus(1).build()], snap)

    assert isinstance(decision, Wait)
    assert decision.reason == (
        "needs 1 container of 1 CPU, 1.0 GiB, 1 GPU; the most free on any node: "
        "0 whole GPUs and 1 GPU in pieces of shared devices (node n1)"
    )


def test_a_fraction_waits_when_no_device_has_that_much_free() -> None:
    snap = make_snapshot(make_node("n1").shared(0.25, 0.25))

    [decision] = decide([make_app("half").gpus(0.5).build()], snap)

    assert isinstance(decision, Wait)
    assert "0.5 GPU;" in decision.reason
    assert "0.25 GPU free on one device (node n1)" in decision.reason


def test_fractions_fill_a_device_up_to_exactly_one() -> None:
    snap = make_snapshot(make_node("n1").gpus(1))
    apps = [make_app(f"a{i}").gpus(0.25).build() for i in range(5)]

    decisions = decide(apps, snap)

    assert [type(d).__name__ for d in decisions] == ["Admit"] * 4 + ["Wait"]


def test_gang_of_fractions_spreads_over_devices_when_one_is_full() -> None:
    snap = make_snapshot(make_node("n1").shared(0.5, 1))
    app = make_app("gang").gpus(0.5).containers(3).build()

    [decision] = decide([app], snap)

    assert isinstance(decision, Admit)
    held = [i for devices in decision.devices for i in devices]
    assert sorted(held) == [0, 1, 1]  # 0.5 on device 0 fills it, two halves share device 1


def test_request_above_one_gpu_must_be_whole() -> None:
    with pytest.raises(ValueError, match="a fraction must be below 1"):
        make_app("bad").gpus(1.5).build()


def test_fraction_shares_and_arithmetic_stay_exact() -> None:
    total = Resources()
    for _ in range(10):
        total = total + Resources(gpus=0.1)
    assert total.gpus == 1.0
    assert Resources(cpus=1, memory_mb=512, gpus=0.5).describe() == "1 CPU, 512 MiB, 0.5 GPU"


def test_device_choice_is_best_fit_and_whole_gpus_take_wholly_free_devices() -> None:
    assert pick_devices([1.0, 0.5, 0.75], 0.5) == (1,)  # the least free that holds it
    assert pick_devices([1.0, 0.5, 0.75], 0.5, first_fit=True) == (0,)
    assert pick_devices([0.5, 1.0, 1.0], 2) == (1, 2)
    with pytest.raises(ValueError, match="2 whole GPUs asked, 1 wholly free"):
        pick_devices([0.5, 1.0], 2)


# --- fragmentation-aware placement -----------------------------------------------------------


def test_fgd_fills_a_piece_exactly_instead_of_stranding_a_sliver() -> None:
    # pack takes the node with the fewest free GPUs (n1) and strands 0.1 of a GPU there;
    # fgd puts the half on n2's half-free device, which it fills exactly
    nodes = (make_node("n1").shared(0.6), make_node("n2").shared(1, 0.5))
    app = make_app("half").gpus(0.5).build()

    assert place_gang(app, make_snapshot(*nodes)) == ("n2",)
    assert place_gang(app, replace(make_snapshot(*nodes), placement="pack")) == ("n1",)
    [decision] = decide([app], make_snapshot(*nodes))
    assert isinstance(decision, Admit) and decision.devices == ((1,),)


def test_fgd_keeps_a_whole_node_free_for_the_eight_gpu_jobs_the_workload_brings() -> None:
    # the workload: mostly 1-GPU jobs, some 8-GPU jobs; n1 is whole, n2 already holds one job.
    # A 1-GPU job on n1 would leave no node for an 8-GPU job.
    work = workload([TaskShape(gpus=1)] * 3 + [TaskShape(gpus=8)])
    nodes = (make_node("n1").gpus(8), make_node("n2").gpus(8).used(gpus=1))
    snap = replace(make_snapshot(*nodes), workload=work)

    assert place_gang(make_app("one").gpus(1).build(), snap) == ("n2",)


def test_fgd_avoids_the_device_that_would_leave_an_unusable_piece() -> None:
    # devices free: 0.75 and 0.5; the workload asks for halves. A quarter taken from the
    # 0.75 device leaves two halves free (fgd); best fit on the 0.5 device leaves 0.25 + 0.75
    work = workload([TaskShape(gpus=0.5)])
    snap = replace(make_snapshot(make_node("n1").shared(0.75, 0.5)), workload=work)
    [decision] = decide([make_app("q").gpus(0.25).build()], snap)

    assert isinstance(decision, Admit) and decision.devices == ((0,),)


def test_fragmentation_counts_what_each_kind_of_task_cannot_use() -> None:
    half, whole = TaskShape(gpus=0.5), TaskShape(gpus=1)
    devices = [1.0, 0.25]
    # a half leaves the 0.25 piece unused; a whole GPU job too
    assert fragmentation(devices, 8, 1024, "", ((half, 1.0),)) == pytest.approx(0.25)
    assert fragmentation(devices, 8, 1024, "", ((whole, 1.0),)) == pytest.approx(0.25)
    # a task that does not fit the node's CPUs cannot use any of it
    big_cpu = TaskShape(cpus=16, gpus=0.5)
    assert fragmentation(devices, 8, 1024, "", ((big_cpu, 1.0),)) == pytest.approx(1.25)
    # a task for another GPU model cannot either
    typed = TaskShape(gpus=0.5, models=("A100",))
    assert fragmentation(devices, 8, 1024, "T4", ((typed, 1.0),)) == pytest.approx(1.25)


def test_workload_keeps_the_commonest_gpu_tasks_with_their_shares() -> None:
    shapes = [TaskShape(gpus=1)] * 3 + [TaskShape(gpus=0.5)] + [TaskShape(cpus=4)] * 10

    mix = workload(shapes)

    assert mix == ((TaskShape(gpus=1), 0.75), (TaskShape(gpus=0.5), 0.25))  # CPU-only left out


@pytest.mark.parametrize(
    ("placement", "expected"),
    [("best-fit", "small"), ("first-fit", "big"), ("pack", "small"), ("fgd", "small")],
)
def test_each_placement_picks_as_it_says(placement: str, expected: str) -> None:
    nodes = (make_node("big").gpus(4).cpus(32), make_node("small").gpus(2).cpus(4))
    snap = replace(make_snapshot(*nodes), placement=placement)

    assert place_gang(make_app("a").gpus(1).build(), snap) == (expected,)


def test_unknown_placement_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="placement 'random' is not one of fgd, best-fit"):
        replace(make_snapshot(make_node("n1")), placement="random")


# --- MIG -------------------------------------------------------------------------------------


def test_mig_profiles_parse_and_count_as_their_slices() -> None:
    assert mig_profile("1g.18gb") == (1, 18)
    assert mig_profile("7g.141gb") == (7, 141)
    assert mig_share("3g.71gb") == pytest.approx(3 / 7)
    with pytest.raises(ValueError, match=r"must look like 1g\.18gb"):
        mig_profile("half")


def test_mig_app_takes_a_free_instance_of_its_profile() -> None:
    node = make_node("h200").mig("1g.18gb", 7, used=6).mig("3g.71gb", 0)
    snap = make_snapshot(node)
    one = make_app("one").mig("1g.18gb").build()
    two = make_app("two").mig("1g.18gb", count=2).build()

    decisions = decide([one, two], snap)

    assert decisions[0] == Admit("one", ("h200",))
    assert isinstance(decisions[1], Wait)
    assert "2 MIG 1g.18gb instances" in decisions[1].reason
    assert "0 free 1g.18gb instances (node h200)" in decisions[1].reason


def test_whole_gpu_app_never_takes_a_mig_gpu() -> None:
    snap = make_snapshot(make_node("mig").mig("1g.18gb", 7))

    with pytest.raises(InfeasibleError, match=r"asks for 1 GPU but the largest node \(mig\) has 0"):
        check_feasible(Resources(1, 1024, 1), 1, snap.nodes)


def test_mig_request_on_a_cluster_without_that_profile_is_infeasible() -> None:
    nodes = make_snapshot(make_node("a").gpus(8), make_node("b").mig("3g.71gb", 2)).nodes

    with pytest.raises(InfeasibleError, match=r"MIG 1g.18gb instances; no node has any \(MIG pro"):
        check_feasible(Resources(1, 1024, mig_share("1g.18gb")), 1, nodes, mig="1g.18gb")


def test_a_mig_request_must_be_whole_instances() -> None:
    with pytest.raises(ValueError, match=r"not a whole number of 1g\.18gb instances"):
        AppHead("x", "u", "q", 1, Resources(gpus=0.2), mig="1g.18gb")


# --- GPU models ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nvml_name", "model"),
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("Tesla V100-SXM2-16GB", "V100"),
        ("Tesla T4", "T4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA GeForce RTX 4090", "RTX4090"),
        ("NVIDIA RTX A6000", "A6000"),
    ],
)
def test_gpu_model_from_the_nvml_name(nvml_name: str, model: str) -> None:
    assert gpu_model(nvml_name) == model


def test_type_selector_sends_the_app_to_a_node_of_that_model() -> None:
    # pack alone would take t4 (fewer free GPUs)
    snap = make_snapshot(
        make_node("t4").gpus(2).model("T4"), make_node("a100").gpus(8).model("A100")
    )

    [decision] = decide([make_app("a").gpus(1).gpu_types("a100").build()], snap)

    assert decision == Admit("a", ("a100",))


def test_type_selector_waits_naming_the_models_there_are() -> None:
    snap = make_snapshot(make_node("t4").gpus(2).model("T4"))

    [decision] = decide([make_app("a").gpus(1).gpu_types("A100", "H100").build()], snap)

    assert isinstance(decision, Wait)
    assert decision.reason == (
        "needs 1 container of 1 CPU, 1.0 GiB, 1 GPU on an A100 or an H100; "
        "no schedulable node has one (GPU models here: T4 (1 node))"
    )


def test_type_selector_no_node_could_ever_hold_is_infeasible() -> None:
    nodes = make_snapshot(make_node("t4").gpus(2).model("T4")).nodes

    with pytest.raises(InfeasibleError, match=r"asks for an H100; no node has one \(GPU models"):
        check_feasible(Resources(1, 1024, 1), 1, nodes, gpu_types=("H100",))


def test_type_selector_does_not_bind_a_cpu_only_app() -> None:
    snap = make_snapshot(make_node("t4").gpus(2).model("T4"))

    assert place_gang(make_app("cpu").gpus(0).gpu_types("A100").build(), snap) == ("t4",)
