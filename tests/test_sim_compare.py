"""``dlapp simulate --compare``, finish-time fairness, and the queue options of the orderings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlapp.cli import main as cli
from dlapp.scheduler import QueueConfigError, parse_tree
from dlapp.sim import ClusterSpec, finish_time_fairness, policy_tree, simulate
from dlapp.sim.fairness import alone_cluster
from test_sim import EXACT, TraceBuilder, two_queues


def test_compare_replays_every_policy_on_every_cluster_with_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = TraceBuilder().job(0, 2, 100).job(0, 4, 100).job(0, 1, 50).write(tmp_path / "t.csv")
    argv = ["simulate", str(trace), "--nodes", "1", "--nodes", "2", "--gpus-per-node", "4"]
    argv += ["--cycle", "0", "--compare", "--policy", "fifo", "--policy", "srtf+preemption"]
    assert cli.main([*argv, "--runtime-estimate", "1", "--json"]) == 0
    captured = capsys.readouterr()
    reports = json.loads(captured.out)
    assert [(r["label"], r["cluster"]["nodes"]) for r in reports] == [
        ("fifo / 1 nodes", 1),
        ("fifo / 2 nodes", 2),
        ("srtf+preemption / 1 nodes", 1),
        ("srtf+preemption / 2 nodes", 2),
    ]
    assert reports[0]["overall"]["jct_s"]["mean"] == round((100 + 200 + 250) / 3, 1)
    assert reports[2]["preemption"] is True and reports[0]["preemption"] is False
    assert "[4/4] srtf+preemption / 2 nodes: done in" in captured.err  # progress, on stderr
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert "comparison" in table and "srtf+preemption / 2 nodes" in table


def test_compare_writes_each_report_and_one_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    trace = TraceBuilder().job(0, 2, 100).job(10, 1, 50).write(tmp_path / "t.csv")
    out = tmp_path / "out"
    argv = ["simulate", str(trace), "--nodes", "1", "--compare", "--policy", "las"]
    assert cli.main([*argv, "--policy", "fifo-skip", "--out", str(out)]) == 0
    assert json.loads((out / "las" / "report.json").read_text())["label"] == "las"
    assert (out / "fifo-skip" / "report.json").exists()
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_several_policies_need_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = TraceBuilder().job(0, 1, 10).write(tmp_path / "t.csv")
    argv = ["simulate", str(trace), "--nodes", "1", "--policy", "las", "--policy", "fifo"]
    assert cli.main(argv) == 2
    assert "add --compare" in capsys.readouterr().err
    assert cli.main(["simulate", str(trace), "--nodes", "1", "--policy", "nope+x"]) == 2


def test_finish_time_fairness_compares_each_queue_with_it_alone_on_its_guarantee() -> None:
    # two queues guaranteed 2 of 4 GPUs. b borrows all four for 1000 s; a's job (2 GPUs) waits
    # for it (no preemption): 1090 s shared, 100 s alone on its 2 GPUs: rho 10.9. b alone on
    # 2 GPUs runs its four jobs two by two: JCTs 1000, 1000, 2000, 2000 vs 1000 x 4 shared
    trace = TraceBuilder()
    for _ in range(4):
        trace.job(at=0, gpus=1, duration=1000, queue="b")
    trace.job(at=10, gpus=2, duration=100, queue="a")
    result = simulate(
        trace.build(), ClusterSpec.uniform(1, 4), policy_tree(two_queues(False), "dlapp"), EXACT
    )
    fairness = {f.queue: f for f in finish_time_fairness(result)}
    assert fairness["root.a"].rho == round(1090 / 100, 3)
    assert fairness["root.b"].rho == round(4000 / 6000, 3)
    assert fairness["root.b"].jobs == 4 and fairness["root.b"].left_out == 0


def test_a_queue_alone_gets_whole_nodes_and_the_rest() -> None:
    cluster = ClusterSpec.uniform(4, 8)
    alone = alone_cluster(cluster, 20)
    assert alone is not None
    assert [(g.count, g.gpus) for g in alone.groups] == [(2, 8), (1, 4)]
    assert alone_cluster(cluster, 0) is None


def test_the_orderings_options_are_checked() -> None:
    tree = parse_tree(
        {
            "queues": {
                "a": {
                    "ordering": "las",
                    "levels": [0.5, 4],
                    "promote_after": "2d",
                    "promote_factor": 3,
                    "reserve_after": "never",
                }
            }
        }
    )
    a = tree.by_path["root.a"]
    assert (a.levels_gpu_h, a.promote_after_s, a.promote_factor, a.reserve_after_s) == (
        (0.5, 4.0),
        172800.0,
        3.0,
        None,
    )
    with pytest.raises(QueueConfigError) as err:
        parse_tree(
            {
                "queues": {
                    "a": {"ordering": "sjf", "levels": [4, 1], "promote_after": "soon"},
                    "b": {"promote_factor": -1, "reserve_after": True},
                }
            }
        )
    msg = err.value.message
    assert "ordering must be one of backfill, fifo, las, srtf" in msg
    assert "levels must be increasing GPU-hour amounts" in msg
    assert "promote_after must be a duration" in msg
    assert "promote_factor must be a positive number" in msg
    assert "reserve_after must be a duration" in msg
