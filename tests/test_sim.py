"""The trace-driven simulator: replays through the real ``decide`` on a simulated clock.

Small hand-made traces whose completion times can be worked out by hand; the CLI through
``dlapp.cli.main``.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dlapp.cli import main as cli
from dlapp.scheduler import QueueTree, Resources, parse_tree
from dlapp.sim import (
    ClusterSpec,
    SimInputError,
    SimOptions,
    SimResult,
    Trace,
    TraceJob,
    build_report,
    jain,
    load_trace,
    percentile,
    policy_tree,
    simulate,
    split_gang,
    tree_from_vc,
)

EXACT = SimOptions(cycle_s=0)  # decide at each event's own time: JCTs are round numbers


class TraceBuilder:
    """``TraceBuilder().job(at=0, gpus=2, duration=100).job(...)``: rows in the order given."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def job(
        self, at: float, gpus: int, duration: float, queue: str = "default", user: str = "user"
    ) -> TraceBuilder:
        self.rows.append(
            {"submit": at, "duration": duration, "num_gpus": gpus, "queue": queue, "user": user}
        )
        return self

    def build(self) -> Trace:
        jobs = [
            TraceJob(i, r["submit"], r["duration"], r["num_gpus"], queue=r["queue"], user=r["user"])
            for i, r in enumerate(self.rows, 1)
        ]
        return Trace(tuple(sorted(jobs, key=lambda j: (j.submit, j.row))), "built")

    def write(self, path: Path) -> Path:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, ["submit", "duration", "num_gpus", "queue", "user"])
            writer.writeheader()
            writer.writerows(self.rows)
        return path


def two_queues(preemption: bool, grace_s: float = 5) -> QueueTree:
    return parse_tree(
        {
            "preemption": {"enabled": preemption, "grace_s": grace_s},
            "queues": {"a": {"guaranteed": "50%"}, "b": {"guaranteed": "50%"}},
        }
    )


def run(
    trace: TraceBuilder,
    cluster: ClusterSpec,
    tree: QueueTree | None = None,
    policy: str = "dlapp",
    options: SimOptions = EXACT,
) -> SimResult:
    base = tree or parse_tree({"queues": {"default": {"guaranteed": "100%"}}})
    return simulate(trace.build(), cluster, policy_tree(base, policy), options)


def jcts(result: SimResult) -> dict[int, float]:
    """JCT by trace row."""
    return {r.job.row: (r.end or 0.0) - r.job.submit for r in result.records}


def test_fifo_blocks_behind_its_head_and_fifo_skip_lets_small_jobs_pass() -> None:
    # one node of 4 GPUs: A takes 2; B needs all 4 and must wait for A; C needs 1
    trace = (
        TraceBuilder()
        .job(at=0, gpus=2, duration=100)  # A
        .job(at=0, gpus=4, duration=100)  # B
        .job(at=0, gpus=1, duration=50)  # C
    )
    node = ClusterSpec.uniform(1, 4)
    # fifo: C waits behind B, which waits for A: C runs 200-250
    assert jcts(run(trace, node, policy="fifo")) == {1: 100, 2: 200, 3: 250}
    # fifo with skipping: C runs at once beside A; B still starts when A ends
    assert jcts(run(trace, node, policy="fifo-skip")) == {1: 100, 2: 200, 3: 50}


def test_jobs_wait_for_the_next_scheduling_cycle() -> None:
    trace = TraceBuilder().job(at=0, gpus=1, duration=30).job(at=10, gpus=1, duration=30)
    result = run(trace, ClusterSpec.uniform(1, 4), options=SimOptions(cycle_s=60))
    # the first job arrives on a cycle; the second waits for the cycle at t=60
    assert [(r.first_start, r.end, r.queued_s) for r in result.records] == [
        (0, 30, 0),
        (60, 90, 50),
    ]


def test_a_job_larger_than_a_node_becomes_a_gang_of_whole_nodes() -> None:
    assert split_gang(TraceJob(1, 0, 1, gpus=64), 8) == (Resources(gpus=8), 8)
    assert split_gang(TraceJob(1, 0, 1, gpus=12, cpus=12, memory_mb=1001), 8) == (
        Resources(cpus=6, memory_mb=501, gpus=6),
        2,
    )
    assert split_gang(TraceJob(1, 0, 1, gpus=8), 8) == (Resources(gpus=8), 1)
    result = run(TraceBuilder().job(at=0, gpus=8, duration=100), ClusterSpec.uniform(2, 4))
    (rec,) = result.records
    assert (rec.containers, rec.head.request.gpus, rec.end) == (2, 4, 100)


def test_jobs_that_can_never_run_are_dropped_and_counted() -> None:
    trace = (
        TraceBuilder()
        .job(at=0, gpus=16, duration=10)  # 2 x 8 GPUs, on a cluster of one 8-GPU node
        .job(at=0, gpus=1, duration=10, queue="nowhere")
        .job(at=0, gpus=1, duration=10)
    )
    result = run(trace, ClusterSpec.uniform(1, 8))
    assert [d.job.row for d in result.dropped] == [1, 2]
    report = build_report(result)
    assert report["dropped"]["jobs"] == 2
    assert report["dropped"]["by_reason"]["no leaf queue 'nowhere'"] == 1
    assert any(r.startswith("never fits the cluster") for r in report["dropped"]["by_reason"])
    assert report["overall"]["finished"] == 1


def borrowed_cluster() -> TraceBuilder:
    """Queue b borrows all 4 GPUs with long jobs; then queue a, guaranteed half, wants 2."""
    trace = TraceBuilder()
    for _ in range(4):
        trace.job(at=0, gpus=1, duration=1000, queue="b")
    return trace.job(at=10, gpus=2, duration=100, queue="a")


def test_preemption_gives_a_queue_its_guarantee_back() -> None:
    result = run(borrowed_cluster(), ClusterSpec.uniform(1, 4), two_queues(True, grace_s=5))
    by_row = {r.job.row: r for r in result.records}
    # a's job waits only for the grace period of the two youngest b jobs, then runs 15-115
    assert (by_row[5].first_start, by_row[5].end, by_row[5].queued_s) == (15, 115, 5)
    assert result.preemptions == 2
    assert [by_row[i].preemptions for i in (1, 2, 3, 4)] == [0, 0, 1, 1]
    # the victims resume from their checkpoint at 115 with 990 s of work left
    assert [by_row[i].end for i in (1, 2, 3, 4)] == [1000, 1000, 1105, 1105]
    report = build_report(result)
    assert report["allocation"]["lost_gpu_h"] == round(2 * 5 / 3600, 1)
    assert report["overall"]["preempted_jobs"] == 2


def test_without_preemption_a_queue_waits_for_the_borrowers_to_finish() -> None:
    result = run(borrowed_cluster(), ClusterSpec.uniform(1, 4), two_queues(False))
    assert jcts(result)[5] == 1090
    assert result.preemptions == 0


def test_a_victim_that_would_finish_within_its_grace_just_finishes() -> None:
    trace = TraceBuilder()
    for _ in range(4):
        trace.job(at=0, gpus=1, duration=12, queue="b")
    trace.job(at=10, gpus=2, duration=100, queue="a")
    result = run(trace, ClusterSpec.uniform(1, 4), two_queues(True, grace_s=5))
    by_row = {r.job.row: r for r in result.records}
    assert [by_row[i].end for i in (1, 2, 3, 4)] == [12, 12, 12, 12]
    assert by_row[5].first_start == 12


@pytest.mark.parametrize("preemption", [False, True])
@pytest.mark.parametrize("policy", ["fifo", "fifo-skip", "las", "srtf"])
def test_the_incremental_replay_decides_as_the_full_one(policy: str, preemption: bool) -> None:
    rng = random.Random(5)
    trace = TraceBuilder()
    for _ in range(300):
        trace.job(
            at=rng.randrange(0, 20_000),
            gpus=rng.choice([1, 1, 2, 4, 8, 16]),
            duration=rng.randrange(1, 3000),
            queue=rng.choice(["a", "b"]),
            user=rng.choice(["u1", "u2", "u3"]),
        )
    cluster = ClusterSpec.uniform(3, 8)
    tree = two_queues(preemption, grace_s=30)
    runs = [
        run(trace, cluster, tree, policy, replace(EXACT, incremental=inc, runtime_estimate=1.5))
        for inc in (True, False)
    ]
    incremental, full = ([(r.first_start, r.end, r.preemptions) for r in x.records] for x in runs)
    assert incremental == full


def test_report_has_every_figure_overall_and_per_queue() -> None:
    result = run(borrowed_cluster(), ClusterSpec.uniform(1, 4), two_queues(True))
    report = build_report(result, {"policy": "dlapp"})
    assert report["policy"] == "dlapp"
    for key in ("jct_s", "queueing_s"):
        assert set(report["overall"][key]) == {"mean", "p50", "p95", "p99", "max"}
    assert {q["queue"] for q in report["queues"]} == {"root.a", "root.b"}
    assert {"gpu_time_share", "guaranteed_share", "starved_h", "normalised_delay"} <= set(
        report["queues"][0]
    )
    assert 0 < report["allocation"]["mean_share"] <= 1
    assert report["fairness"]["jain_normalised_delay"] is not None
    assert report["decide"]["calls"] > 0
    json.dumps(report)  # JSON-able as it is


def test_figures_percentiles_and_jain() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([10], 99) == 10
    assert jain([2, 2, 2]) == 1.0
    assert jain([1, 0, 0, 0]) == 0.25


def test_a_starved_queue_counts_its_hours_below_guarantee() -> None:
    result = run(borrowed_cluster(), ClusterSpec.uniform(1, 4), two_queues(False))
    queues = {q["queue"]: q for q in build_report(result)["queues"]}
    # a waits from 10 to 1000 holding nothing of its 2 guaranteed GPUs
    assert queues["root.a"]["starved_h"] == round(990 / 3600, 2)
    assert queues["root.b"]["starved_h"] == 0


def test_trace_reads_timestamps_and_philly_clusters(tmp_path: Path) -> None:
    path = tmp_path / "philly.csv"
    path.write_text(
        "timestamp,duration,num_gpus,gpu_time,cluster\n"
        "2017-10-09 07:01:55,66.0,1,66.0,vc1\n"
        "2017-10-09 07:00:00,10.0,8,80.0,vc2\n"
    )
    trace = load_trace(path)
    assert [(j.row, j.submit, j.gpus, j.queue) for j in trace.jobs] == [
        (2, 0.0, 8, "vc2"),
        (1, 115.0, 1, "vc1"),
    ]
    assert trace.origin == "2017-10-09 07:00:00+00:00"


def test_trace_without_required_columns_is_refused_naming_them(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("submit,gpus\n0,1\n")
    with pytest.raises(SimInputError, match=r"missing column.*duration"):
        load_trace(path)


def test_queues_from_virtual_clusters_guarantee_node_shares(tmp_path: Path) -> None:
    vc = tmp_path / "vc.csv"
    vc.write_text("vc,node_num\nbig,64\nsmall,8\n")
    tree = tree_from_vc(vc)
    limits = tree.resolve(ClusterSpec.uniform(72, 8).total)
    assert (limits["root.big"].guaranteed.gpus, limits["root.small"].guaranteed.gpus) == (512, 64)
    assert limits["root.small"].maximum.gpus == 576
    quota = tree_from_vc(vc, maximum="guaranteed").resolve(ClusterSpec.uniform(72, 8).total)
    assert quota["root.small"].maximum.gpus == 64


def test_cluster_file_is_validated_and_round_trips(tmp_path: Path) -> None:
    spec = ClusterSpec.from_dict([{"count": 2, "gpus": 8}, {"count": 1, "gpus": 0, "name": "c"}])
    assert ClusterSpec.from_dict(spec.to_dict()) == spec
    assert spec.total == Resources(cpus=2 * 64 + 8, memory_mb=2 * 512 * 1024 + 64 * 1024, gpus=16)
    with pytest.raises(SimInputError, match=r"unknown key.*'gpu'.*valid: count, gpus"):
        ClusterSpec.from_dict([{"count": 1, "gpu": 8}])


def test_cli_simulate_prints_the_report_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = TraceBuilder().job(0, 2, 100).job(0, 4, 100).job(0, 1, 50).write(tmp_path / "t.csv")
    argv = ["simulate", str(trace), "--nodes", "1", "--gpus-per-node", "4", "--cycle", "0"]
    assert cli.main([*argv, "--policy", "fifo", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["policy"] == "fifo"
    assert report["overall"]["jct_s"]["mean"] == round((100 + 200 + 250) / 3, 1)
    assert cli.main([*argv, "--policy", "fifo-skip"]) == 0
    table = capsys.readouterr().out
    assert "fifo-skip: 3 jobs finished, 0 dropped" in table
    assert "root.default" in table


def test_cli_refuses_bad_input_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("submit,duration,num_gpus\n0,ten,1\n")
    assert cli.main(["simulate", str(bad), "--nodes", "1"]) == 1
    assert "row 1: duration 'ten' is not a number" in capsys.readouterr().err
    assert cli.main(["simulate", str(bad)]) == 2  # no cluster: a usage error


def test_cli_writes_report_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    trace = borrowed_cluster().write(tmp_path / "t.csv")
    queues = tmp_path / "queues.yaml"
    queues.write_text(
        "preemption: {enabled: true, grace_s: 5}\n"
        "queues: {a: {guaranteed: 50%}, b: {guaranteed: 50%}}\n"
    )
    out = tmp_path / "out"
    argv = ["simulate", str(trace), "--nodes", "1", "--gpus-per-node", "4", "--queues"]
    assert cli.main([*argv, str(queues), "--bucket", "60", "--out", str(out)]) == 0
    assert f"wrote {out / 'allocation.png'}" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["overall"]["preemptions"] == 2
    # 60 s cycles: preempted at 60, a runs 120-220, the victims resume at 240 and end at 1180
    assert len(report["timeline"]["t_h"]) == len(report["timeline"]["gpus_held"]) == 20
    assert report["timeline"]["gpus_held"][:3] == [4.0, round((2 * 60 + 2 * 5) / 60, 3), 4.0]
    for name in ("allocation.png", "queues.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
