"""bench/server_cycle.py runs the server's real cycle on a small full cluster, quiet and busy,
with decide() alone on the same inputs beside it."""

from __future__ import annotations

from conftest import load_bench

bench = load_bench("server_cycle")


def test_it_times_the_cycle_and_decide_alone_quiet_and_busy() -> None:
    report = bench.measure(nodes=10, running=30, waiting=60, new=5, cycles=2)
    assert (report["nodes"], report["running"], report["waiting"]) == (10, 30, 60)
    for label in ("quiet", "busy"):
        r = report[label]
        assert r["cycle_p50_ms"] > 0 and r["decide_p50_ms"] > 0 and r["ratio"] > 0


def test_the_cluster_it_fills_is_full_and_every_app_is_held() -> None:
    cluster = bench.FullCluster(3)
    assert [n.total.gpus for n in cluster.nodes()] == [8, 8, 8]
    assert cluster._holds("any app")
