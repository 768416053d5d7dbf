"""bench/throughput.py's pure parts: percentiles, the report table, the history rows."""

from __future__ import annotations

import pytest

from dlapp.status import AppState, FinalStatus

from conftest import load_bench

bench = load_bench("throughput")


def test_latency_rate_and_ratio_against_the_baseline() -> None:
    slow = bench.Latency.of([0.2, 0.2, 0.2, 0.2])
    fast = bench.Latency.of([0.05, 0.05, 0.05, 0.05])
    assert slow.rate == pytest.approx(5.0)
    row = bench.Row("submit", "API submit", slow, "GET /api/v1/me", fast)
    assert row.ratio == pytest.approx(4.0)
    assert bench.Row("submit", "alone", slow).ratio is None


def test_table_shows_every_row_with_its_ratio() -> None:
    base = bench.Latency.of([0.001, 0.002])
    report = bench.Report("test machine", {"queued": 3})
    report.rows.append(
        bench.Row(
            "list/status", "API list --all", bench.Latency.of([0.01]), "raw SELECT", base, 1000
        )
    )
    report.notes["apps waiting"] = 3
    text = bench.format_table(report)
    assert "| list/status | API list --all | 10.0 / 10.0 | 100.0 | 1,000 | raw SELECT |" in text
    assert "6.67x" in text
    assert "apps waiting: 3" in text
    assert report.to_dict()["rows"][0]["ratio"] == pytest.approx(10 / 1.5)


def test_history_is_finished_apps_with_their_container_and_events() -> None:
    batches = list(bench.history(5, 12, 1700000000000, 1.8e9, {"name": "x"}, batch=5))
    assert [len(b.apps) for b in batches] == [5, 5, 2]
    apps = [a for b in batches for a in b.apps]
    assert [a["seq"] for a in apps] == list(range(5, 17))
    assert apps[0]["id"] == "application_1700000000000_0005"
    assert {a["state"] for a in apps} == {AppState.FINISHED.value}
    assert {a["final_status"] for a in apps} <= {s.value for s in FinalStatus}
    assert all(a["submit_time"] < a["start_time"] < a["finish_time"] <= 1.8e9 + 40000 for a in apps)
    events = [e for b in batches for e in b.events]
    assert len(events) == 3 * len(apps)
    assert len({c["app_id"] for b in batches for c in b.containers}) == len(apps)
    again = [a for b in bench.history(5, 12, 1700000000000, 1.8e9, {"name": "x"}) for a in b.apps]
    assert again == apps  # seeded: the same history every run
    with pytest.raises(ValueError, match="first_seq >= 1"):
        list(bench.history(0, 1, 1, 1.0, {}))


def test_indexes_compares_the_same_queries_on_both_schemas() -> None:
    report = bench.Report("test machine", {})
    bench.indexes(report, 1200, 1)
    names = [r.what for r in report.rows]
    assert len(names) == len(bench.store_queries()) and all("1,200 apps" in n for n in names)
    assert all(r.section == "store" and r.base is not None and r.ratio for r in report.rows)


def test_calls_at_once_are_shared_out_and_rated_over_the_wall_time() -> None:
    calls: list[int] = []
    each, wall = bench.timed_at_once([lambda: calls.append(1), lambda: calls.append(2)], 5)
    assert len(each) == 5 and sorted(calls) == [1, 1, 1, 2, 2]
    assert wall >= 0
    lat = bench.Latency.of([0.1] * 10, wall=0.5)  # 10 calls of 0.1 s each, over 0.5 s
    assert lat.rate == pytest.approx(20.0)  # not one after the other (10/s)
    assert bench.Latency.of([0.1] * 10).rate == pytest.approx(10.0)
