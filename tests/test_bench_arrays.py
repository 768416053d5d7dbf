"""bench/arrays.py's pure parts: the rates, the ratio of the array's to the singles', the table."""

from __future__ import annotations

import pytest

from conftest import load_bench

bench = load_bench("arrays")


def test_rates_and_the_ratio_of_the_array_to_the_singles() -> None:
    r = bench.Report("test machine", {}, singles=100, singles_s=4.0, size=10_000, array_s=2.0)
    assert r.singles_rate == pytest.approx(25.0)
    assert r.array_rate == pytest.approx(5000.0)
    assert r.ratio == pytest.approx(200.0)
    assert r.singles_time_for_size == pytest.approx(400.0)
    assert r.to_dict()["ratio"] == pytest.approx(200.0)
    assert bench.Report("m", {}).ratio is None


def test_the_table_shows_each_figure() -> None:
    r = bench.Report("test machine", {}, singles=100, singles_s=4.0, size=10_000, array_s=2.0)
    r.kept_tarballs = 1
    text = bench.format_report(r)
    assert "| one array request | 10,000 members in 2.00 s: 5,000 members/s |" in text
    assert "| array / singles | 200.0x the singles' rate; 10,000 singles would take 400 s |" in text
    assert "| workspace tarballs kept for the array | 1 |" in text
