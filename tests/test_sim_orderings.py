"""The simulator with the las and srtf orderings: small traces whose completion times are
worked out by hand, and a long job that promotion keeps from starving."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dlapp.scheduler import QueueTree, parse_tree
from dlapp.sim import ClusterSpec, SimOptions, build_report
from test_sim import EXACT, TraceBuilder, jcts, run


def one_queue(ordering: str, preemption: bool = False, **settings: object) -> QueueTree:
    queue = {"guaranteed": "100%", "ordering": ordering, **settings}
    return parse_tree(
        {"preemption": {"enabled": preemption, "grace_s": 5}, "queues": {"default": queue}}
    )


EXACT_RUNTIMES = replace(EXACT, runtime_estimate=1.0)  # every job states its duration


def four_jobs() -> TraceBuilder:
    return (
        TraceBuilder()
        .job(at=0, gpus=2, duration=100)  # A: the whole node
        .job(at=10, gpus=1, duration=300)  # B
        .job(at=20, gpus=1, duration=50)  # C
        .job(at=30, gpus=1, duration=20)  # D
    )


def test_srtf_runs_the_shortest_stated_runtimes_first() -> None:
    node = ClusterSpec.uniform(1, 2)
    # A ends at 100: D (20 s) and C (50 s) start, D ends at 120 and B runs 120-420
    result = run(four_jobs(), node, one_queue("srtf"), options=EXACT_RUNTIMES)
    assert jcts(result) == {1: 100, 2: 410, 3: 130, 4: 90}
    # backfill by submission: B and C at 100, D when C ends at 150
    backfill = run(four_jobs(), node, one_queue("backfill"), options=EXACT_RUNTIMES)
    assert jcts(backfill) == {1: 100, 2: 390, 3: 130, 4: 140}


def test_srtf_without_stated_runtimes_is_submission_order() -> None:
    node = ClusterSpec.uniform(1, 2)
    result = run(four_jobs(), node, one_queue("srtf"), options=EXACT)
    assert jcts(result) == {1: 100, 2: 390, 3: 130, 4: 140}


def test_las_preempts_a_job_that_has_had_more_service() -> None:
    # levels: 0.01 GPU-hours = 36 GPU-seconds. A runs from 0; at 50 it has had 50 GPU-s (level
    # 1) and B arrives (level 0): A is preempted, leaves at 55 (5 s grace) with 50 s of work
    # left, B runs 55-85, A again 85-135.
    trace = TraceBuilder().job(at=0, gpus=1, duration=100).job(at=50, gpus=1, duration=30)
    node = ClusterSpec.uniform(1, 1)
    result = run(trace, node, one_queue("las", preemption=True, levels=[0.01]))
    assert jcts(result) == {1: 135, 2: 35}
    assert [r.preemptions for r in result.records] == [1, 0]
    # without preemption B waits for A
    assert jcts(run(trace, node, one_queue("las", levels=[0.01]))) == {1: 100, 2: 80}


def test_las_lets_a_new_job_pass_one_that_has_had_service() -> None:
    # one GPU. A (100 s) runs 0-100; B (200 s) arrives at 10; C (10 s) at 150, while B runs.
    # B is past the first level at 136 s of service: C goes first when B is preempted at 150.
    trace = (
        TraceBuilder()
        .job(at=0, gpus=1, duration=100)
        .job(at=10, gpus=1, duration=200)
        .job(at=150, gpus=1, duration=10)
    )
    node = ClusterSpec.uniform(1, 1)
    result = run(trace, node, one_queue("las", preemption=True, levels=[0.01]))
    # B runs 100-150 (50 s, level 1), stops at 155, C runs 155-165, B 165-315
    assert jcts(result) == {1: 100, 2: 305, 3: 15}


def test_promotion_keeps_a_long_job_from_starving_behind_short_ones() -> None:
    # one GPU; a 1000 s job at 0 and a 100 s job every 90 s: shortest-first alone would run
    # the long one only when the short ones stop coming
    trace = TraceBuilder().job(at=1, gpus=1, duration=1000)
    for i in range(60):
        trace.job(at=i * 90, gpus=1, duration=100)
    node = ClusterSpec.uniform(1, 1)
    never = one_queue("srtf", promote_after="never", promote_factor="never")
    starved = run(trace, node, never, options=EXACT_RUNTIMES)
    long_job = next(r for r in starved.records if r.job.duration == 1000)
    assert long_job.first_start is not None and long_job.first_start > 5000
    capped = one_queue("srtf", promote_after="10m", promote_factor="never")
    promoted = run(trace, node, capped, options=EXACT_RUNTIMES)
    long_job = next(r for r in promoted.records if r.job.duration == 1000)
    # it waits 10 min, then starts when the short job running then ends (100 s at most)
    assert long_job.first_start is not None and 600 <= long_job.first_start <= 1 + 600 + 100
    # promoted after four times its 1000 s, or 10 min if that comes first: the same here
    both = run(trace, node, one_queue("srtf", promote_after="10m"), options=EXACT_RUNTIMES)
    assert [r.first_start for r in both.records] == [r.first_start for r in promoted.records]
    # in proportion to its size alone: after 4 x 1000 s
    proportional = one_queue("srtf", promote_after="never", promote_factor=4)
    long_job = next(
        r
        for r in run(trace, node, proportional, options=EXACT_RUNTIMES).records
        if r.job.duration == 1000
    )
    assert long_job.first_start is not None and 4000 <= long_job.first_start <= 1 + 4000 + 100


def test_a_big_job_gets_its_reservation_in_the_replay() -> None:
    # two 4-GPU nodes and more 1-GPU jobs than they hold (one every 9 s, 75 s each); a 4-GPU
    # job at 200 s. Backfill lets the waiting small jobs take every GPU that frees, for as long
    # as they come; a reservation after 10 min bounds the big job's wait
    trace = TraceBuilder().job(at=200, gpus=4, duration=100)
    for i in range(400):
        trace.job(at=i * 9, gpus=1, duration=75)
    node = ClusterSpec.uniform(2, 4)
    never = run(trace, node, one_queue("backfill", reserve_after="never"))
    big = next(r for r in never.records if r.job.gpus == 4)
    assert big.first_start is not None and big.first_start > 3600
    kept = run(trace, node, one_queue("backfill", reserve_after="10m"))
    big = next(r for r in kept.records if r.job.gpus == 4)
    # reserved at 800 s: the node it holds empties within one 75 s job
    assert big.first_start is not None and 800 <= big.first_start <= 800 + 75


def test_options_refuse_an_estimate_below_the_duration() -> None:
    try:
        SimOptions(runtime_estimate=0.5)
    except ValueError as exc:
        assert "at least 1" in str(exc)
    else:
        raise AssertionError("accepted a max_runtime shorter than the job")


def minute_cycles() -> TraceBuilder:
    """One 4-GPU node, one user, decisions on the minute (the server's 60 s cycle)."""
    return (
        TraceBuilder()
        .job(at=0, gpus=4, duration=600)  # A: the whole node
        .job(at=10, gpus=2, duration=1500)  # B
        .job(at=20, gpus=4, duration=300)  # C: the whole node
        .job(at=70, gpus=2, duration=120)  # D
        .job(at=80, gpus=1, duration=60)  # E
    )


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # A runs 0-600. B and C arrive for the cycle at 60, D and E for the one at 120: the node
        # is full. At 600 (A ends) B starts (600-2100); C needs the whole node and, in a fifo
        # line, holds back D and E. C runs 2100-2400, then D 2400-2520 and E 2400-2460.
        # JCTs: A 600, B 2100-10, C 2400-20, D 2520-70, E 2460-80; mean 9900 / 5 = 1980
        ("fifo", {1: 600, 2: 2090, 3: 2380, 4: 2450, 5: 2380}),
        # at 600 B starts and D passes C (600-720); E starts at the cycle at 720 (720-780);
        # C starts when B ends, 2100-2400. Mean 6420 / 5 = 1284
        ("fifo-skip", {1: 600, 2: 2090, 3: 2380, 4: 650, 5: 700}),
        # every job states its duration. At 600 the line is E (60 s), D (120), C (300), B
        # (1500): E 600-660 and D 600-720 start, C and B do not fit in the GPU left. At 660 (E
        # ends) two GPUs are free: C does not fit, B does (660-2160); C runs 2160-2460.
        # Mean (600 + 2150 + 2440 + 650 + 580) / 5 = 1284
        ("srtf", {1: 600, 2: 2150, 3: 2440, 4: 650, 5: 580}),
    ],
)
def test_a_small_trace_on_minute_cycles_gives_the_jcts_worked_out_by_hand(
    policy: str, expected: dict[int, float]
) -> None:
    node = ClusterSpec.uniform(1, 4)
    options = SimOptions(cycle_s=60, runtime_estimate=1.0)
    result = run(minute_cycles(), node, policy=policy, options=options)
    assert jcts(result) == expected
    mean = sum(expected.values()) / len(expected)
    assert build_report(result)["overall"]["jct_s"]["mean"] == round(mean, 1)
