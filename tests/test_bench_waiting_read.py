"""bench/waiting_read.py runs on a small store and reports both reads, quiet and busy (each
kept read is checked inside against the apps stored: it fails when one is missed)."""

from __future__ import annotations

from conftest import load_bench

bench = load_bench("waiting_read")


def test_it_times_both_reads_quiet_and_beside_a_busy_thread() -> None:
    report = bench.measure(waiting=300, new=5, runs=3)
    assert (report["waiting"], report["new_per_cycle"], report["runs"]) == (300, 5, 3)
    for label in ("quiet", "busy"):
        r = report[label]
        assert r["whole_read_p50_ms"] > 0 and r["kept_read_p50_ms"] > 0 and r["ratio"] > 0
